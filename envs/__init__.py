"""Contextual environments: context spaces, wrappers, registration, physics contexts, and per
task family (classic, locomotion, manipulation) the gymnasium envs and their batched versions.

Importing the package registers its envs with gymnasium: ``gym.make("hyperrl/...")``.
"""

from envs.context import SPLITS, ContextFeature, ContextSpace, scaled_feature
from envs.registration import (
    BATCHED_ENVS,
    ENVS,
    NATIVE_TWINS,
    TASK_SUITES,
    batched_twin,
    context_space,
    cpu_twin,
    describe_envs,
    make_batched,
    register_envs,
    splits_of,
    twin_kwargs,
)
from envs.wrappers import ContextualEnv

register_envs()

__all__ = [
    "BATCHED_ENVS",
    "ENVS",
    "NATIVE_TWINS",
    "TASK_SUITES",
    "SPLITS",
    "ContextFeature",
    "ContextSpace",
    "ContextualEnv",
    "batched_twin",
    "context_space",
    "cpu_twin",
    "describe_envs",
    "make_batched",
    "register_envs",
    "scaled_feature",
    "splits_of",
    "twin_kwargs",
]
