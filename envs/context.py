"""Context spaces: named features, their ranges, the held-out splits, and samplers.

Each feature has a nominal value, a **train** interval with a held-out **interpolation** hole
inside it, and physical **bounds** beyond the train interval from which **extrapolation**
contexts come::

    bounds.low ... [train.low ...... (holdout) ...... train.high] ... bounds.high
                     train            interp.          train          extrapolation outside

A context is in the *train* split when every feature lies in its train interval outside its hole,
in *interpolation* when all lie in the train interval and at least one in its hole, and in
*extrapolation* when at least one lies outside the train interval (within bounds). Training
samplers therefore never draw a held-out context, unless the train split is moved to a new task
on purpose (:meth:`ContextSpace.with_train_ranges`, for fine-tuning and continual learning).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "interpolation", "extrapolation")


@dataclass(frozen=True)
class ContextFeature:
    """One named context feature.

    :param name: the name used in ``reset(options={"context": {name: value}})`` and ``info``.
    :param nominal: the env's default value.
    :param train: ``(low, high)`` training interval.
    :param holdout: ``(low, high)`` interpolation hole inside ``train`` (never trained on).
    :param bounds: ``(low, high)`` the values the env accepts at all; extrapolation lies in
        ``bounds`` outside ``train``.
    :param train_override: ``(low, high)`` within ``bounds`` that the train split draws from
        instead of its train values (a new task to fine-tune on, :meth:`ContextSpace.
        with_train_ranges`); ``train``, the observation's scaling and the held-out splits stay.
    """

    name: str
    nominal: float
    train: tuple[float, float]
    holdout: tuple[float, float]
    bounds: tuple[float, float]
    train_override: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        (b0, b1), (t0, t1), (h0, h1) = self.bounds, self.train, self.holdout
        if not (b0 <= t0 < h0 < h1 < t1 <= b1):
            raise ValueError(
                f"feature {self.name!r} needs bounds.low <= train.low < holdout.low < "
                f"holdout.high < train.high <= bounds.high, got bounds={self.bounds}, "
                f"train={self.train}, holdout={self.holdout}"
            )
        if not b0 <= self.nominal <= b1:
            raise ValueError(f"feature {self.name!r}: nominal {self.nominal} outside {self.bounds}")
        if self.train_override is not None:
            lo, hi = self.train_override
            if not b0 <= lo < hi <= b1:
                raise ValueError(
                    f"train range of {self.name!r} must be [low, high] with {b0} <= low < high "
                    f"<= {b1} (its bounds), got {list(self.train_override)}"
                )

    def split_of(self, value: float) -> str:
        if not self.train[0] <= value <= self.train[1]:
            return "extrapolation"
        return "interpolation" if self.holdout[0] <= value <= self.holdout[1] else "train"

    def pieces(self, split: str, task: bool = True) -> list[tuple[float, float]]:
        """The non-empty ``(low, high)`` intervals of this feature's values in ``split``; the
        train split's are ``train_override`` when it is set, unless ``task`` is false (what the
        held-out splits draw their other features from)."""
        if split == "train" and task and self.train_override is not None:
            return [self.train_override]
        (b0, b1), (t0, t1), (h0, h1) = self.bounds, self.train, self.holdout
        pieces = {
            "train": [(t0, h0), (h1, t1)],
            "interpolation": [(h0, h1)],
            "extrapolation": [(b0, t0), (t1, b1)],
        }[split]
        return [(lo, hi) for lo, hi in pieces if hi > lo]

    def sample(self, rng: np.random.Generator, split: str, task: bool = True) -> float:
        """A value of this feature alone in ``split``, uniformly over the split's length
        (``task``: as :meth:`pieces`)."""
        pieces = self.pieces(split, task)
        if not pieces:
            raise ValueError(f"feature {self.name!r} has no {split} values (bounds == train)")
        lengths = np.array([hi - lo for lo, hi in pieces])
        lo, hi = pieces[rng.choice(len(pieces), p=lengths / lengths.sum())]
        # open at the train/holdout edges, so a drawn value never sits on a boundary
        return float(rng.uniform(lo, hi))


class ContextSpace:
    """The context features of one environment.

    :param features: the features, in observation order.
    :raises ValueError: on duplicate names.
    """

    def __init__(self, features: Sequence[ContextFeature]) -> None:
        names = [f.name for f in features]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"context features need distinct names, got {names}")
        self.features = tuple(features)
        self.by_name = {f.name: f for f in features}

    @classmethod
    def choose(
        cls, catalogue: Mapping[str, ContextFeature], names: Sequence[str], family: str
    ) -> ContextSpace:
        """The space of the features ``names`` picked from ``catalogue`` (an env family's, e.g.
        ``family="locomotion"``), in that order.

        :raises ValueError: naming the unknown features and the family's."""
        unknown = [f for f in names if f not in catalogue]
        if unknown:
            raise ValueError(f"unknown {family} features {unknown}; choose from {list(catalogue)}")
        return cls([catalogue[f] for f in names])

    def with_train_ranges(self, ranges: Mapping[str, Sequence[float]]) -> ContextSpace:
        """This space with the train split drawing the features of ``ranges`` (name ->
        ``[low, high]``, within the feature's bounds) from those ranges: a new task, e.g. target
        velocities beyond those pretrained on, for ``--init-from``. The observation's scaling
        and the held-out splits stay this space's, so a pretrained policy reads the new task's
        contexts as it read the old ones.

        :raises ValueError: for an unknown feature or a range that is not ``[low, high]``
            within the feature's bounds."""
        if not isinstance(ranges, Mapping):
            raise ValueError(f"train_ranges takes {{feature: [low, high]}}, got {ranges!r}")
        unknown = [n for n in ranges if n not in self.by_name]
        if unknown:
            raise ValueError(
                f"train_ranges names unknown context features {unknown}; this env's are "
                f"{list(self.names)}"
            )
        features = []
        for f in self.features:
            if f.name in ranges:
                given = ranges[f.name]
                if not isinstance(given, Sequence) or isinstance(given, str) or len(given) != 2:
                    raise ValueError(
                        f"train range of {f.name!r} must be [low, high], got {given!r}"
                    )
                f = dataclasses.replace(f, train_override=(float(given[0]), float(given[1])))
            features.append(f)
        return ContextSpace(features)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    @property
    def nominal(self) -> dict[str, float]:
        return {f.name: f.nominal for f in self.features}

    def __len__(self) -> int:
        return len(self.features)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{f.name}: nominal {f.nominal}, train {f.train}, holdout {f.holdout}, "
            f"bounds {f.bounds}"
            + (f", train draws from {f.train_override}" if f.train_override else "")
            for f in self.features
        )
        return f"ContextSpace({parts})"

    def validate(self, values: Mapping[str, float]) -> dict[str, float]:
        """A complete context from ``values``: missing features take their nominal value.

        :raises ValueError: for an unknown name, a non-scalar value, or a value outside the
            feature's bounds -- naming the feature and the allowed range.
        """
        if not isinstance(values, Mapping):
            raise ValueError(
                f"a context is a mapping of feature names to values, e.g. {self.nominal}; "
                f"got {type(values).__name__}"
            )
        unknown = [k for k in values if k not in self.by_name]
        if unknown:
            raise ValueError(f"unknown context features {unknown}; this env has {list(self.names)}")
        out = self.nominal
        for name, value in values.items():
            feature = self.by_name[name]
            try:
                value = float(np.asarray(value, dtype=np.float64).item())
            except (TypeError, ValueError):
                raise ValueError(
                    f"context feature {name!r} must be a scalar, got {value!r}"
                ) from None
            lo, hi = feature.bounds
            if not (lo <= value <= hi):
                raise ValueError(
                    f"context feature {name!r}={value} is outside its allowed range [{lo}, {hi}]"
                )
            out[name] = value
        return out

    def split_of(self, context: Mapping[str, float]) -> str:
        """The split a complete context belongs to (see the module docstring)."""
        splits = {self.by_name[n].split_of(v) for n, v in context.items()}
        for split in ("extrapolation", "interpolation"):
            if split in splits:
                return split
        return "train"

    def sample(self, rng: np.random.Generator, split: str = "train") -> dict[str, float]:
        """One context drawn uniformly from ``split``. For the held-out splits one random feature
        is drawn from its held-out values and the others from their train values."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        context = {f.name: f.sample(rng, "train", task=split == "train") for f in self.features}
        if split != "train":
            candidates = [
                f for f in self.features if f.bounds != f.train or split != "extrapolation"
            ]
            if not candidates:
                raise ValueError(f"no feature of this space has {split} values")
            feature = candidates[rng.integers(len(candidates))]
            context[feature.name] = feature.sample(rng, split)
        return context

    def grid(self, points: int = 5, names: Iterable[str] | None = None) -> list[dict[str, float]]:
        """Contexts on an even grid over the bounds of ``names`` (all features by default), the
        other features nominal: for plots of return against context."""
        names = list(self.names if names is None else names)
        axes = [np.linspace(*self.by_name[n].bounds, points) for n in names]
        return [
            self.nominal | {n: float(v) for n, v in zip(names, combo, strict=True)}
            for combo in itertools.product(*axes)
        ]

    def to_array(self, context: Mapping[str, float]) -> np.ndarray:
        """``(len(self),)`` float32: each feature scaled so the train interval maps to [-1, 1]
        (extrapolation lands outside). This is what the observation carries."""
        center, half = self.train_scaling()
        values = np.array([context[f.name] for f in self.features], np.float64)
        return ((values - center) / half).astype(np.float32)

    def train_scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """``(center, half_width)`` of every feature's train interval, ``(len(self),)`` float64
        each: :meth:`to_array` is ``(value - center) / half_width``."""
        center = np.array([(f.train[0] + f.train[1]) / 2 for f in self.features])
        half = np.array([(f.train[1] - f.train[0]) / 2 for f in self.features])
        return center, half

    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` of :meth:`to_array` over the bounds."""
        low = self.to_array({f.name: f.bounds[0] for f in self.features})
        high = self.to_array({f.name: f.bounds[1] for f in self.features})
        return low, high


def scaled_feature(
    name: str,
    nominal: float,
    train: tuple[float, float] = (0.5, 1.5),
    holdout: tuple[float, float] = (0.9, 1.1),
    bounds: tuple[float, float] = (0.25, 2.5),
) -> ContextFeature:
    """A feature given as multiples of ``nominal`` (the usual way to vary a physical quantity)."""
    return ContextFeature(
        name,
        nominal,
        (train[0] * nominal, train[1] * nominal),
        (holdout[0] * nominal, holdout[1] * nominal),
        (bounds[0] * nominal, bounds[1] * nominal),
    )
