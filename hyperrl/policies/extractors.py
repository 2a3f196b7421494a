"""Split a Dict observation into the observation part and the context part.

Every key named in ``context_keys`` is context; every other key is observation (the context
convention of the package). SB3 wants a features extractor to return one tensor, so this one
returns ``[observation features, context features]`` concatenated, and the policy's networks split
it again at ``obs_dim``.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import torch
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor


def check_context_keys(context_keys: Sequence[str]) -> tuple[str, ...]:
    """``context_keys`` as a tuple.

    :raises ValueError: for a single string (its letters are not keys).
    """
    if isinstance(context_keys, str):
        raise ValueError(
            f"context_keys must be a sequence of key names such as ({context_keys!r},), not the "
            f"string {context_keys!r}"
        )
    return tuple(context_keys)


def split_keys(
    observation_space: gym.Space, context_keys: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``(observation keys, context keys)`` of a Dict space, in the space's (sorted) key order.

    :raises ValueError: when the space is not a Dict but context keys are asked for, when a
        context key is missing, or when no observation key is left.
    """
    context_keys = list(check_context_keys(context_keys))
    if not isinstance(observation_space, gym.spaces.Dict):
        if context_keys:
            raise ValueError(
                f"the policy reads context from the observation keys {context_keys}, but the "
                f"observation space is {type(observation_space).__name__}, not a Dict; use an env "
                "that follows the context convention (Dict with 'observation' and 'context'), or "
                "pass context_keys=() for a policy without context"
            )
        return [], []
    keys = list(observation_space.spaces)
    missing = [k for k in context_keys if k not in keys]
    if missing:
        raise ValueError(
            f"context_keys {missing} not in the observation space, whose keys are {keys}; "
            "pass context_keys=(...) naming the descriptor (e.g. ('desired_goal',) for goal envs)"
        )
    obs_keys = [k for k in keys if k not in context_keys]
    if not obs_keys:
        raise ValueError(f"every observation key {keys} is a context key; none is left to observe")
    return obs_keys, [k for k in keys if k in context_keys]


class ContextFeaturesExtractor(BaseFeaturesExtractor):
    """``obs -> (B, obs_dim + context_dim)``: flattened observation keys, then context keys.

    Works on a Dict space (keys split by ``context_keys``) or, with ``context_keys=()``, on any
    flat space.

    :param observation_space: the env's observation space.
    :param context_keys: keys of the Dict observation that hold the context.
    """

    def __init__(self, observation_space: gym.Space, context_keys: Sequence[str] = ("context",)):
        obs_keys, ctx_keys = split_keys(observation_space, context_keys)
        if obs_keys:
            obs_dim = sum(get_flattened_obs_dim(observation_space[k]) for k in obs_keys)
            ctx_dim = sum(get_flattened_obs_dim(observation_space[k]) for k in ctx_keys)
        else:
            obs_dim, ctx_dim = get_flattened_obs_dim(observation_space), 0
        super().__init__(observation_space, obs_dim + ctx_dim)
        self.obs_keys, self.context_keys = obs_keys, ctx_keys
        self.obs_dim, self.context_dim = obs_dim, ctx_dim

    def forward(self, observations: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.obs_keys:
            return observations.flatten(1)
        keys = self.obs_keys + self.context_keys
        try:
            return torch.cat([observations[k].flatten(1) for k in keys], dim=1)
        except (KeyError, RuntimeError):  # diagnosed here, off the policy's hot path
            self._explain(observations, keys)
            raise

    @staticmethod
    def _explain(observations: dict[str, torch.Tensor], keys: list[str]) -> None:
        """:raises ValueError: naming a missing key or keys of different batch sizes."""
        missing = [k for k in keys if k not in observations]
        if missing:
            raise ValueError(
                f"the observation lacks {missing}; this policy reads {keys} (a hidden-context env "
                "needs a policy trained without context, or the context passed in)"
            )
        sizes = {k: observations[k].shape[0] for k in keys}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the observation's keys have different batch sizes: {sizes}")


def norm_obs_keys(
    observation_space: gym.Space, context_keys: Sequence[str] = ("context",)
) -> list[str]:
    """The keys ``VecNormalize(norm_obs_keys=...)`` should normalise: every observation key but
    the context ones, so contexts reach the generator raw (and identical contexts stay identical,
    which is what lets a policy generate once per distinct context)."""
    return split_keys(observation_space, context_keys)[0]
