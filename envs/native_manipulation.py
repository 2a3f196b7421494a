"""Batched contextual Fetch tasks on CPU threads (MuJoCo's ``mujoco.rollout``): Reach, Push,
Slide and PickAndPlace at batched speed without a GPU.

:class:`NativeFetch` steps ``num_envs`` worlds of gymnasium-robotics' Fetch robot with
:class:`envs.native_backend.NativeWorlds`, the mocap target (and PickAndPlace's finger controls)
passed through the rollout's control spec, and computes inputs, observations, rewards and task
draws in torch through :class:`envs.batched_manipulation.BatchedFetch`, the code the MuJoCo Warp
envs use. It is the same engine in float64 as the CPU twin: the object's physics context is
written into each world's model by the twin's own :func:`envs.manipulation.scale_fetch_model`.

What ``mj_step`` leaves in ``MjData`` is recomputed per world after each step, where the twin
reads it: the blocked-gripper tasks (Reach, Push, Slide) set the fingers back to 0 and run
``mj_forward`` at the new state, as the twin's step callback does; PickAndPlace reads the
kinematics of the last substep's start with the new velocities (gymnasium-robotics multiplies
site Jacobians, which lag one substep, by the new ``qvel``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np
import torch

from envs.batched_manipulation import BatchedFetch
from envs.manipulation import (
    FETCH_FEATURES,
    REACH_FEATURES,
    ContextualFetch,
    ContextualFetchReach,
    scale_fetch_model,
)
from envs.native_backend import NativeWorlds, state_offset

#: what a step's input holds: the finger controls (PickAndPlace), the mocap's position and
#: orientation
CONTROL_SPEC = int(
    mujoco.mjtState.mjSTATE_CTRL
    | mujoco.mjtState.mjSTATE_MOCAP_POS
    | mujoco.mjtState.mjSTATE_MOCAP_QUAT
)
#: the gymnasium-robotics Fetch tasks this backend runs
FETCH_IDS = ("FetchReach-v4", "FetchPush-v4", "FetchSlide-v4", "FetchPickAndPlace-v4")


class NativeFetch(BatchedFetch):
    """``num_envs`` MuJoCo worlds of a Fetch task on CPU threads, one context per world.

    Shapes for ``N = num_envs``: observations ``{"observation": (N, 10), "context": (N, k)}``
    for Reach (its goal is the context) and ``{"observation": (N, 25), "achieved_goal": (N, 3),
    "desired_goal": (N, 3), "context": (N, k)}`` for the object tasks, float32; rewards ``(N,)``
    float32; ``terminated`` always false and ``truncated`` after 50 steps, ``(N,)`` bool;
    ``info["is_success"]`` ``(N,)``; all on ``device`` (computed on the CPU, then moved).
    :class:`~envs.batched.BatchedContextualEnv` documents ``reset``, ``step`` and auto-reset.

    :param env_id: one of :data:`FETCH_IDS`.
    :param num_envs: worlds stepped together.
    :param features: context features, names from :data:`envs.manipulation.REACH_FEATURES`
        (Reach) or :data:`envs.manipulation.FETCH_FEATURES`, in observation order; all of them
        when ``None``.
    :param split: the split contexts are drawn from at every (auto-)reset.
    :param device: torch device of what is returned (the physics runs on the CPU).
    :param seed: seeds context, object and goal draws.
    :param max_episode_steps: truncation horizon (the gymnasium spec's, 50, when ``None``).
    :param nthread: threads stepping the worlds (the cores of this process when ``None``).
    :param kwargs: passed to the CPU twin (``reward_type``...).
    :raises ValueError: for an unknown env id or feature.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        features: Sequence[str] | None = None,
        split: str = "train",
        device: str | torch.device = "cpu",
        seed: int | None = None,
        max_episode_steps: int | None = None,
        nthread: int | None = None,
        **kwargs: Any,
    ) -> None:
        if env_id not in FETCH_IDS:
            raise ValueError(f"unknown Fetch env {env_id!r}; choose one of {FETCH_IDS}")
        if env_id == "FetchReach-v4":
            cpu = ContextualFetchReach(tuple(features or REACH_FEATURES), **kwargs)
        else:
            cpu = ContextualFetch(env_id, tuple(features or FETCH_FEATURES), **kwargs)
        super().__init__(cpu, num_envs, split, device, seed, max_episode_steps, torch.float64)
        if self.has_object:
            self.parts, self.nominal = cpu.parts, cpu.nominal
        m = self.mj_model
        extras = ("xpos", "xquat", "site_xpos", "site_xmat", "cvel", "subtree_com")
        self.worlds = NativeWorlds(m, num_envs, self.n_substeps, nthread, extras, CONTROL_SPEC)
        self._scratch = mujoco.MjData(m)  # for mj_setConst
        pos = state_offset(m, mujoco.mjtState.mjSTATE_MOCAP_POS, CONTROL_SPEC)
        quat = state_offset(m, mujoco.mjtState.mjSTATE_MOCAP_QUAT, CONTROL_SPEC)
        self._mocap_pos = slice(pos + 3 * self._mocap, pos + 3 * self._mocap + 3)
        self._mocap_quat = slice(quat + 4 * self._mocap, quat + 4 * self._mocap + 4)
        self._input_buffer = np.zeros((num_envs, self.worlds.control.shape[-1]))
        cpu.close()

    @property
    def _state_device(self) -> torch.device:
        return torch.device("cpu")

    def close(self) -> None:
        """Stop the worlds' threads."""
        self.worlds.close()

    def _kinematics(self, name: str) -> torch.Tensor:
        w = self.worlds
        if name in ("qpos", "qvel"):
            return getattr(w, name)
        if name == "site_xmat":
            return w.extra[name].view(self.num_envs, -1, 3, 3)
        return w.extra[name]

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Set every world's joint state and run it forward, like the twin's ``data.qpos[:] =
        ...`` and ``mj_forward``: ``qpos`` ``(N, nq)``, ``qvel`` ``(N, nv)``; goals, contexts,
        the mocap and warm starts are kept."""
        w = self.worlds
        w.qpos.copy_(torch.as_tensor(qpos, dtype=torch.float64))
        w.qvel.copy_(torch.as_tensor(qvel, dtype=torch.float64))
        w.forward(w.state, post_constraint=False)

    # -- BatchedContextualEnv -------------------------------------------------------------------

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        worlds = mask.cpu().nonzero().flatten().numpy()
        w = self.worlds
        if self.has_object:
            names = self.context_names
            contexts = self.contexts[mask].cpu().double().numpy()
            for i, context in zip(worlds, contexts, strict=True):
                context = dict(zip(names, context, strict=True))
                scale_fetch_model(w.models[i], self._scratch, self.nominal, self.parts, context)
        # what the twin's reset does: mj_resetData, the initial state, the task's draws,
        # mj_forward
        qpos = self._init_qpos.repeat(len(worlds), 1)
        start = self._draw_task(mask)
        if start is not None:
            qpos[:, self._object_qpos : self._object_qpos + 2] = start
        w.set_state(worlds, qpos.numpy(), self._init_qvel.repeat(len(worlds), 1).numpy())
        home_pos, home_quat = self.mocap_home
        w.control[worlds, :, self._mocap_pos] = home_pos
        w.control[worlds, :, self._mocap_quat] = home_quat
        w.forward(w.state, worlds, post_constraint=False)

    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.worlds
        ctrl, pos, quat = self._inputs(actions.detach())
        inputs = self._input_buffer
        inputs[:, : ctrl.shape[1]] = ctrl.numpy()
        inputs[:, self._mocap_pos] = pos.numpy()
        inputs[:, self._mocap_quat] = quat.numpy()
        w.step(inputs)
        if self.block_gripper:  # the twin's step callback
            w.qpos[:, self._finger_qpos] = 0.0
            w.forward(w.state, post_constraint=False)
        else:
            w.forward(w.before_last_substep(), post_constraint=False, velocities=w.state)
        return self._finish_step()
