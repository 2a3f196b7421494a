"""Registration of the package's envs with gymnasium under the ``hyperrl/`` namespace."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from envs.classic.contextual import CARTPOLE_CONTEXT, PENDULUM_CONTEXT
from envs.context import SPLITS, ContextSpace
from envs.locomotion.contextual import LOCOMOTION, PHYSICS_FEATURES, TASK_FEATURES
from envs.manipulation.contextual import FETCH_FEATURES, FETCH_TASKS, REACH_FEATURES

NAMESPACE = "hyperrl"


@dataclass(frozen=True)
class EnvSpec:
    """What :func:`register_envs` registers: entry point, its keywords, the context space."""

    entry_point: str
    context_space: ContextSpace
    kwargs: dict[str, Any] = field(default_factory=dict)


def _locomotion(name: str, features: tuple[str, ...]) -> EnvSpec:
    return EnvSpec(
        "envs.locomotion:ContextualLocomotion",
        ContextSpace.choose(PHYSICS_FEATURES | TASK_FEATURES, features, "locomotion"),
        {"env_id": f"{name}-v5", "features": features},
    )


ENVS: dict[str, EnvSpec] = {
    f"{NAMESPACE}/ContextualPendulum-v0": EnvSpec(
        "envs.classic:ContextualPendulum", PENDULUM_CONTEXT
    ),
    f"{NAMESPACE}/ContextualCartPole-v0": EnvSpec(
        "envs.classic:ContextualCartPole", CARTPOLE_CONTEXT
    ),
    **{
        f"{NAMESPACE}/Contextual{name}-v0": _locomotion(name, tuple(PHYSICS_FEATURES))
        for name in LOCOMOTION
    },
    f"{NAMESPACE}/HalfCheetahVel-v0": _locomotion("HalfCheetah", ("target_velocity",)),
    f"{NAMESPACE}/AntDir-v0": _locomotion("Ant", ("direction",)),
    **{
        f"{NAMESPACE}/ContextualFetch{task}-v0": EnvSpec(
            "envs.manipulation:ContextualFetch",
            ContextSpace(list(FETCH_FEATURES.values())),
            {"env_id": f"Fetch{task}-v4"},
        )
        for task in FETCH_TASKS
    },
    f"{NAMESPACE}/ContextualFetchReach-v0": EnvSpec(
        "envs.manipulation:ContextualFetchReach", ContextSpace(list(REACH_FEATURES.values()))
    ),
}


#: FetchReach has no object: its goal (``desired_goal``) is its whole context
GOAL_ONLY = f"{NAMESPACE}/FetchReach-v0"

#: multi-task suites: the context is a task descriptor, not a ContextSpace
TASK_SUITES: dict[str, dict[str, Any]] = {
    f"{NAMESPACE}/FetchMultiTask-v0": {"descriptor": "onehot"},
    f"{NAMESPACE}/FetchMultiTaskText-v0": {"descriptor": "text"},
}


@dataclass(frozen=True)
class BatchedSpec:
    """A batched on-device env (:mod:`envs.batched`): its class, keywords, and the CPU env with
    the same spaces and contexts, on which its runs are evaluated and filmed."""

    entry_point: str
    cpu_twin: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        """``"warp"`` (MuJoCo Warp), ``"native"`` (MuJoCo threads) or ``"torch"``."""
        module = self.entry_point.split(":")[0].rsplit(".", 1)[-1]
        return module if module in ("warp", "native") else "torch"


#: CPU env class -> the class of its batched CPU twin (MuJoCo threads)
_NATIVE_CLASSES = {
    "envs.locomotion:ContextualLocomotion": "envs.locomotion.native:NativeLocomotion",
    "envs.manipulation:ContextualFetch": "envs.manipulation.native:NativeFetch",
    "envs.manipulation:ContextualFetchReach": "envs.manipulation.native:NativeFetch",
}

#: gymnasium id -> its batched CPU twin (MuJoCo threads: :mod:`envs.locomotion.native`,
#: :mod:`envs.manipulation.native`), which ``train_agent.py --batched`` trains on
NATIVE_TWINS: dict[str, str] = {
    env_id: env_id.replace("/Contextual", "/").replace("/", "/Batched", 1)
    for env_id in [*(i for i, s in ENVS.items() if s.entry_point in _NATIVE_CLASSES), *TASK_SUITES]
}


def _native_spec(cpu: str) -> BatchedSpec:
    if cpu in TASK_SUITES:
        return BatchedSpec("envs.manipulation.native:NativeFetchMultiTask", cpu, TASK_SUITES[cpu])
    spec = ENVS[cpu]
    kwargs = spec.kwargs or {"env_id": "FetchReach-v4"}  # ContextualFetchReach takes no id
    return BatchedSpec(_NATIVE_CLASSES[spec.entry_point], cpu, dict(kwargs))


#: batched envs for the on-device trainer (``train_agent.py --env <id>``); not gymnasium envs
BATCHED_ENVS: dict[str, BatchedSpec] = {
    f"{NAMESPACE}/TorchPendulum-v0": BatchedSpec(
        "envs.classic.batched:TorchPendulum", f"{NAMESPACE}/ContextualPendulum-v0"
    ),
    **{
        f"{NAMESPACE}/Warp{name}-v0": BatchedSpec(
            "envs.locomotion.warp:WarpLocomotion",
            f"{NAMESPACE}/Contextual{name}-v0",
            {"env_id": f"{name}-v5", "features": tuple(PHYSICS_FEATURES)},
        )
        for name in ("HalfCheetah", "Hopper", "Walker2d", "Ant")
    },
    **{batched: _native_spec(cpu) for cpu, batched in NATIVE_TWINS.items()},
    f"{NAMESPACE}/WarpFetchReach-v0": BatchedSpec(
        "envs.manipulation.warp:WarpFetchReach", f"{NAMESPACE}/ContextualFetchReach-v0"
    ),
    f"{NAMESPACE}/WarpFetchPush-v0": BatchedSpec(
        "envs.manipulation.warp:WarpFetchPush", f"{NAMESPACE}/ContextualFetchPush-v0"
    ),
}


def _class(entry_point: str) -> type:
    module, name = entry_point.split(":")
    return getattr(importlib.import_module(module), name)


def _train_on(env: Any, env_id: str, train_ranges: Mapping[str, Any] | None) -> None:
    """``train_ranges`` (feature -> ``[low, high]``): the env's train split draws those
    features from there (:meth:`~envs.context.ContextSpace.with_train_ranges`)."""
    if train_ranges is None:
        return
    if getattr(env, "context_space", None) is None:
        raise ValueError(f"{env_id} has no context features; drop train_ranges")
    env.context_space = env.context_space.with_train_ranges(train_ranges)


def make_contextual(
    entry_point: str, train_ranges: Mapping[str, Any] | None = None, **kwargs: Any
) -> gym.Env:
    """What ``gym.make`` calls for the envs of :data:`ENVS`: the class of ``entry_point`` with
    ``kwargs``; ``train_ranges={feature: [low, high]}`` makes its train split draw those features
    from there (a new task), the observation's scaling and held-out splits unchanged."""
    env = _class(entry_point)(**kwargs)
    _train_on(env, entry_point, train_ranges)
    return env


def make_batched(
    env_id: str,
    num_envs: int,
    split: str = "train",
    device: str = "cpu",
    seed: int | None = None,
    **kwargs: Any,
):
    """Build a batched env of :data:`BATCHED_ENVS` with ``num_envs`` worlds on ``device``;
    ``history=k`` shows the last ``k`` transitions in place of the context
    (:class:`~envs.batched.history.HistoryObservation`); ``train_ranges={feature: [low, high]}``
    makes the train split draw those features from there (as :func:`make_contextual`)."""
    if env_id not in BATCHED_ENVS:
        raise ValueError(f"{env_id!r} is not a batched env; choose one of {sorted(BATCHED_ENVS)}")
    history = kwargs.pop("history", None)
    train_ranges = kwargs.pop("train_ranges", None)
    spec = BATCHED_ENVS[env_id]
    cls = _class(spec.entry_point)
    env = cls(num_envs=num_envs, split=split, device=device, seed=seed, **(spec.kwargs | kwargs))
    _train_on(env, env_id, train_ranges)
    if history is None:
        return env
    from envs.batched.history import HistoryObservation

    return HistoryObservation(env, history)


#: keywords of batched envs that their CPU twins do not take (MuJoCo Warp buffer sizes, threads,
#: history observations)
DEVICE_ONLY_KWARGS = ("nconmax", "njmax", "nthread", "history")


def batched_twin(env_id: str) -> str:
    """The batched CPU twin of a gymnasium id (a batched id: itself): MuJoCo threads for
    locomotion and Fetch, plain torch for Pendulum.

    :raises ValueError: for an id without one, naming those that have one."""
    if env_id in BATCHED_ENVS:
        return env_id
    twins = NATIVE_TWINS | {
        spec.cpu_twin: batched for batched, spec in BATCHED_ENVS.items() if spec.backend == "torch"
    }
    if env_id not in twins:
        raise ValueError(
            f"{env_id!r} has no batched CPU backend; --batched works for {', '.join(twins)}"
        )
    return twins[env_id]


def twin_kwargs(env_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``env_kwargs`` of a run, less what only its batched env takes (any other id: as given)."""
    if env_id not in BATCHED_ENVS:
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k not in DEVICE_ONLY_KWARGS}


def cpu_twin(env_id: str) -> str:
    """The gymnasium env a batched env id is evaluated on (any other id: itself)."""
    return BATCHED_ENVS[env_id].cpu_twin if env_id in BATCHED_ENVS else env_id


def splits_of(env_id: str) -> tuple[str, ...]:
    """The context splits an env id (or its batched twin's) can be made with
    (``gym.make(env_id, split=...)``): :data:`~envs.context.SPLITS` for a contextual env, train
    and held-out tasks for a task suite, only ``train`` for any other gymnasium id."""
    env_id = cpu_twin(env_id)
    if env_id in ENVS:
        return SPLITS
    if env_id in TASK_SUITES:
        return ("train", "held_out")
    return ("train",)


def register_envs() -> None:
    """Register every env of :data:`ENVS` and :data:`TASK_SUITES` (idempotent)."""
    for env_id, spec in ENVS.items():
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point=make_contextual,
                kwargs={"entry_point": spec.entry_point, **spec.kwargs},
            )
    for env_id, kwargs in TASK_SUITES.items():
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point="envs.manipulation.multitask:FetchMultiTask",
                kwargs=dict(kwargs),
            )
    if GOAL_ONLY not in gym.registry:
        gym.register(GOAL_ONLY, entry_point="envs.manipulation:fetch_reach")


def context_space(env_id: str) -> ContextSpace:
    """The context space of one of this package's env ids."""
    env_id = cpu_twin(env_id)
    if env_id not in ENVS:
        raise ValueError(f"{env_id!r} is not one of this package's envs: {sorted(ENVS)}")
    return ENVS[env_id].context_space


def describe_envs() -> str:
    """A listing of the envs and their context features (nominal, train, holdout, bounds)."""
    lines = []
    for env_id, spec in ENVS.items():
        lines.append(env_id)
        for f in spec.context_space.features:
            lines.append(
                f"    {f.name:<16} nominal {f.nominal:<6.4g} train {_fmt(f.train)}  "
                f"holdout {_fmt(f.holdout)}  bounds {_fmt(f.bounds)}"
            )
    for env_id, spec in BATCHED_ENVS.items():
        backend = "CPU threads" if env_id in NATIVE_TWINS.values() else "on-device"
        lines.append(f"{env_id}\n    batched {backend} twin of {spec.cpu_twin} (device PPO, SAC)")
    lines.append(f"{GOAL_ONLY}\n    goal only (desired_goal); FetchReach-v4 fixed for MuJoCo 4")
    for env_id, kwargs in TASK_SUITES.items():
        lines.append(
            f"{env_id}\n    task descriptor ({kwargs['descriptor']}): train tasks Push, "
            "PickAndPlace; held-out task Slide (split='held_out')"
        )
    return "\n".join(lines)


def _fmt(interval: tuple[float, float]) -> str:
    return f"[{interval[0]:.4g}, {interval[1]:.4g}]"
