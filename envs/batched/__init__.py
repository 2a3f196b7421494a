"""Batched contextual envs: the contract (:mod:`~envs.batched.contract`) and the MuJoCo backends
that step many worlds at once, MuJoCo threads on the CPU (:mod:`~envs.batched.native`) and
MuJoCo Warp on the GPU (:mod:`~envs.batched.warp`). The envs themselves sit with their task
family (:mod:`envs.classic.batched`, :mod:`envs.locomotion.native`, :mod:`envs.locomotion.warp`,
:mod:`envs.manipulation.native`, :mod:`envs.manipulation.warp`)."""

from envs.batched.contract import BatchedContextualEnv, Obs, sample_contexts, scale_contexts

__all__ = ["BatchedContextualEnv", "Obs", "sample_contexts", "scale_contexts"]
