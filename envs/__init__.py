"""Contextual environments: context spaces, wrappers, registration, GPU (Warp) envs.

Importing the package registers its envs with gymnasium: ``gym.make("hyperrl/...")``.
"""

from envs.context import SPLITS, ContextFeature, ContextSpace, scaled_feature
from envs.registration import ENVS, SUITES, context_space, describe_envs, register_envs
from envs.wrappers import ContextualEnv

register_envs()

__all__ = [
    "ENVS",
    "SUITES",
    "SPLITS",
    "ContextFeature",
    "ContextSpace",
    "ContextualEnv",
    "context_space",
    "describe_envs",
    "register_envs",
    "scaled_feature",
]
