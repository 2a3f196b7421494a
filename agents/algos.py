"""Algorithms and policies by name, as ``train_agent.py --algo/--policy`` spell them."""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
from stable_baselines3 import A2C, PPO, SAC, TD3, HerReplayBuffer
from stable_baselines3.common.base_class import BaseAlgorithm

from hyperrl import HyperActorCriticPolicy, HyperSACPolicy, HyperTD3Policy
from hyperrl.policies.architecture import ArchitectureActorCriticPolicy
from hyperrl.policies.recurrent import RecurrentActorCriticPolicy

#: algo name -> (SB3 class, keyword defaults the name implies)
ALGOS: dict[str, tuple[type[BaseAlgorithm], dict[str, Any]]] = {
    "ppo": (PPO, {}),
    "a2c": (A2C, {}),
    "sac": (SAC, {}),
    "td3": (TD3, {}),
    "her": (SAC, {"replay_buffer_class": HerReplayBuffer}),
}

#: --policy name -> conditioning of the hyper policy classes (``mlp``: SB3's own policy)
POLICIES = {
    "hyper": "hyper",
    "lowrank_hyper": "lowrank_hyper",
    "film": "film",
    "concat": "concat",
    "none": "none",
    "mlp": None,
    #: a GRU memory and no context (the baseline for unknown contexts; batched PPO only)
    "recurrent": "recurrent",
    #: one generator for a family of actor sizes (architecture generation; PPO only)
    "architecture": "architecture",
}

#: --policy names that train on the batched PPO only (SB3's PPO cannot drive them)
BATCHED_ONLY = ("recurrent",)
#: --policy names for PPO only (the batched PPO, or SB3's)
PPO_ONLY = ("recurrent", "architecture")

_HYPER_CLASSES = {
    PPO: HyperActorCriticPolicy,
    A2C: HyperActorCriticPolicy,
    SAC: HyperSACPolicy,
    TD3: HyperTD3Policy,
}
GOAL_KEYS = {"observation", "achieved_goal", "desired_goal"}


def close_matches(word: str, options: list[str]) -> str:
    """`` (did you mean 'x'?)`` or nothing."""
    match = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def algo_class(name: str) -> tuple[type[BaseAlgorithm], dict[str, Any]]:
    try:
        return ALGOS[name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}{close_matches(name, list(ALGOS))}; choose one of "
            f"{list(ALGOS)}"
        ) from None


def default_context_keys(observation_space: gym.Space) -> tuple[str, ...]:
    """What the package's policies condition on: ``context`` and, on goal envs, the goal."""
    if not isinstance(observation_space, gym.spaces.Dict):
        return ()
    keys = set(observation_space.spaces)
    return tuple(
        k
        for k in ("context", "desired_goal")
        if k in keys and (k != "desired_goal" or keys >= GOAL_KEYS)
    )


def policy_for(
    algo: type[BaseAlgorithm], policy: str, env: gym.Env | Any, env_id: str
) -> tuple[Any, dict[str, Any]]:
    """``(policy class or SB3 alias, policy_kwargs)`` for ``--policy`` on this env.

    :raises ValueError: for an unknown name, or a conditioned policy on an env without context.
    """
    if policy not in POLICIES:
        raise ValueError(
            f"unknown policy {policy!r}{close_matches(policy, list(POLICIES))}; choose one of "
            f"{list(POLICIES)}"
        )
    space = env.observation_space
    if POLICIES[policy] is None:
        return ("MultiInputPolicy" if isinstance(space, gym.spaces.Dict) else "MlpPolicy"), {}
    if algo not in _HYPER_CLASSES or (policy in PPO_ONLY and algo is not PPO):
        raise ValueError(f"--policy {policy} is not available for {algo.__name__}")
    keys = default_context_keys(space)
    if policy == "recurrent":  # it reads everything but the context (a goal included)
        hidden = ("context",) if "context" in keys else ()
        return RecurrentActorCriticPolicy, {"context_keys": hidden}
    if policy == "architecture":
        return ArchitectureActorCriticPolicy, {"context_keys": keys}
    if not keys and policy != "none":
        raise ValueError(
            f"--policy {policy} conditions on a context, but {env_id} has no 'context' (or goal) "
            f"in its observation ({type(space).__name__}); use one of the package's envs "
            "(python -c 'import envs; print(envs.describe_envs())') or --policy mlp"
        )
    return _HYPER_CLASSES[algo], {"conditioning": POLICIES[policy], "context_keys": keys}
