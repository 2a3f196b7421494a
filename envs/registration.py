"""Registration of the package's envs with gymnasium under the ``hyperrl/`` namespace."""

from __future__ import annotations

import gymnasium as gym

from envs.context import ContextSpace

NAMESPACE = "hyperrl"

#: env id -> (entry point, context space)
ENVS: dict[str, tuple[str, str]] = {
    f"{NAMESPACE}/ContextualPendulum-v0": ("envs.classic:ContextualPendulum", "PENDULUM_CONTEXT"),
    f"{NAMESPACE}/ContextualCartPole-v0": ("envs.classic:ContextualCartPole", "CARTPOLE_CONTEXT"),
}


def register_envs() -> None:
    """Register every env of :data:`ENVS` (idempotent)."""
    for env_id, (entry_point, _) in ENVS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point)


def context_space(env_id: str) -> ContextSpace:
    """The context space of a registered env id."""
    import importlib

    if env_id not in ENVS:
        raise ValueError(f"{env_id!r} is not one of this package's envs: {sorted(ENVS)}")
    module = importlib.import_module(ENVS[env_id][0].split(":")[0])
    return getattr(module, ENVS[env_id][1])


def describe_envs() -> str:
    """A listing of the envs and their context features (nominal, train, holdout, bounds)."""
    lines = []
    for env_id in ENVS:
        lines.append(env_id)
        for f in context_space(env_id).features:
            lines.append(
                f"    {f.name:<12} nominal {f.nominal:<6g} train {f.train}  "
                f"holdout {f.holdout}  bounds {f.bounds}"
            )
    return "\n".join(lines)
