"""Fetch manipulation with object and table physics or a goal as the context: the gymnasium envs
(:mod:`~envs.manipulation.contextual`), the multi-task suite (:mod:`~envs.manipulation.multitask`),
the batched task shared by the backends (:mod:`~envs.manipulation.batched`), on MuJoCo threads
(:mod:`~envs.manipulation.native`) and on MuJoCo Warp (:mod:`~envs.manipulation.warp`)."""

from envs.manipulation.contextual import (
    FETCH_FEATURES,
    FETCH_TASKS,
    REACH_FEATURES,
    ContextualFetch,
    ContextualFetchReach,
    fetch_reach,
    make_robotics_env,
)

__all__ = [
    "FETCH_FEATURES",
    "FETCH_TASKS",
    "REACH_FEATURES",
    "ContextualFetch",
    "ContextualFetchReach",
    "fetch_reach",
    "make_robotics_env",
]
