"""The context convention as a wrapper: Dict observations, one context per episode, pinning."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from envs.context import SPLITS, ContextSpace


class ContextualEnv(gym.Wrapper):
    """Base wrapper: draws a context per episode, writes it into the env, and shows it.

    - observation: ``Dict(observation=<the env's>, context=Box(len(space)))``, the context scaled
      so the train interval is [-1, 1] (:meth:`ContextSpace.to_array`); an env whose observation
      is already a Dict (goal-conditioned robotics) keeps its keys and gains ``context``; with
      ``hidden_context=True`` no ``context`` key (for agents that must infer the context);
    - ``reset(options={"context": {name: value}})`` pins a context (missing names nominal);
      otherwise the sampler draws one from ``split`` (``"train"`` by default);
    - ``reset(options={"context_change": {"at": t, "context": {...}}})`` changes the context
      after ``t`` steps of that episode, the state untouched (the new one pinned, or drawn like
      the first when ``context`` is left out): a load or floor that changes while the robot
      runs. Step ``t`` still runs and is rewarded in the old context (its ``info["context"]``),
      the observation it returns shows the new one;
    - ``info["context"]`` always holds the named values.

    Subclasses define :meth:`apply_context`, which writes a validated context into ``self.env``.

    :param env: the env to wrap.
    :param space: its context space.
    :param split: which split the per-episode sampler draws from.
    :param hidden_context: leave the context out of the observation.
    :param contexts: a fixed list of contexts (name -> value) to draw from uniformly instead of
        sampling ``split``; each is validated (missing names nominal).
    """

    #: whether ``reset(options={"context_change": ...})`` works: :meth:`apply_context` keeps the
    #: state of a running episode
    supports_context_change: bool = True

    def __init__(
        self,
        env: gym.Env,
        space: ContextSpace,
        split: str = "train",
        hidden_context: bool = False,
        contexts: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        super().__init__(env)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        self.context_space, self.split, self.hidden_context = space, split, hidden_context
        self.contexts = None if contexts is None else [space.validate(c) for c in contexts]
        if self.contexts == []:
            raise ValueError("contexts is empty; pass None to sample the split instead")
        self._dict_obs = isinstance(env.observation_space, gym.spaces.Dict)
        spaces = (
            dict(env.observation_space)
            if self._dict_obs
            else {"observation": env.observation_space}
        )
        if not hidden_context:
            low, high = space.observation_bounds()
            spaces["context"] = gym.spaces.Box(low, high, dtype=np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self._context_rng = np.random.default_rng()
        self._change: tuple[int, dict[str, float] | None] | None = None
        self._elapsed = 0
        self._set_context(space.nominal)

    def _set_context(self, context: dict[str, float]) -> None:
        self.context = context
        self._context_array = self.context_space.to_array(context)  # once, not every step

    @abstractmethod
    def apply_context(self, context: Mapping[str, float]) -> None:
        """Write ``context`` (complete, validated) into the wrapped env before its reset."""

    def _observe(self, obs: Any) -> dict[str, Any]:
        out = dict(obs) if self._dict_obs else {"observation": obs}
        if not self.hidden_context:
            out["context"] = self._context_array.copy()
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if seed is not None:
            self._context_rng = np.random.default_rng(seed)
        options = dict(options or {})
        pinned = options.pop("context", None)
        self._change, self._elapsed = None, 0
        self._change = self._parse_change(options.pop("context_change", None))
        context = self.context_space.validate(pinned) if pinned is not None else self._draw()
        self._set_context(context)
        self.apply_context(context)
        obs, info = self.env.reset(seed=seed, options=options or None)
        return self._observe(obs), info | {"context": dict(self.context)}

    def _parse_change(self, change: Any) -> tuple[int, dict[str, float] | None] | None:
        """``{"at": t, "context": {...}}`` -> ``(t, validated context or None)``."""
        if change is None:
            return None
        if not self.supports_context_change:
            raise ValueError(f"{type(self).__name__} cannot change its context mid-episode")
        if not isinstance(change, Mapping) or set(change) - {"at", "context"} or "at" not in change:
            raise ValueError(
                f"context_change takes {{'at': steps, 'context': {{name: value}}}} (context "
                f"optional), got {change!r}"
            )
        at = change["at"]
        if isinstance(at, bool) or not isinstance(at, int) or at < 1:
            raise ValueError(f"context_change 'at' must be a positive step count, got {at!r}")
        context = change.get("context")
        return at, None if context is None else self.context_space.validate(context)

    def _draw(self) -> dict[str, float]:
        if self.contexts is not None:
            return dict(self.contexts[self._context_rng.integers(len(self.contexts))])
        return self.context_space.sample(self._context_rng, self.split)

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = info | {"context": dict(self.context)}  # the context that produced this step
        self._elapsed += 1
        if self._change is not None and self._elapsed == self._change[0]:
            # from here on: the observation shows it, the next step runs in it
            context = self._change[1] or self._draw()
            self._set_context(context)
            self.apply_context(context)
        return self._observe(obs), float(reward), bool(terminated), bool(truncated), info
