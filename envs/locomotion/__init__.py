"""MuJoCo locomotion with physics and task contexts: the gymnasium envs
(:mod:`~envs.locomotion.contextual`), the batched task shared by the backends
(:mod:`~envs.locomotion.batched`), on MuJoCo threads (:mod:`~envs.locomotion.native`) and on
MuJoCo Warp (:mod:`~envs.locomotion.warp`)."""

from envs.locomotion.contextual import (
    LOCOMOTION,
    PHYSICS_FEATURES,
    TASK_FEATURES,
    ContextualLocomotion,
)

__all__ = ["LOCOMOTION", "PHYSICS_FEATURES", "TASK_FEATURES", "ContextualLocomotion"]
