"""Batched MuJoCo Warp versions of the contextual Fetch tasks (the GPU path's manipulation).

:class:`WarpFetchReach` and :class:`WarpFetchPush` step ``num_envs`` worlds of gymnasium-robotics'
Fetch robot with MuJoCo Warp; what they compute from the worlds (inputs, observations, rewards,
task draws) is :class:`envs.manipulation.batched.BatchedFetch`'s, shared with the CPU-thread
backend. Push's context, the object's physics (``object_mass_scale``,
``object_friction_scale``, ``table_friction_scale``), is written per world into batched model
fields as :func:`envs.manipulation.contextual.scale_fetch_model` writes it, with the derived masses
recomputed on the device.

Known differences from the CPU envs: float32 simulation and MuJoCo Warp's looser solver tolerance
(as for :mod:`envs.locomotion.warp`); Push's object start and goal come from ``self.generator``
(torch), with FetchPush's distributions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from envs.batched.warp import WarpWorlds
from envs.manipulation.batched import BatchedFetch
from envs.manipulation.contextual import (
    FETCH_FEATURES,
    REACH_FEATURES,
    ContextualFetch,
    ContextualFetchReach,
)
from envs.wrappers import ContextualEnv


class WarpFetch(BatchedFetch):
    """The Fetch robot in MuJoCo Warp: the worlds, their resets and steps; the task is
    :class:`~envs.manipulation.batched.BatchedFetch`'s.

    :param cpu: the CPU twin (built by the subclass), read for the model, initial state and
        settings, then closed.
    :param num_envs: worlds stepped together.
    :param split: the split contexts are drawn from at every (auto-)reset.
    :param device: torch device; MuJoCo Warp runs on the matching Warp device.
    :param seed: seeds context (and for Push object and goal) draws.
    :param max_episode_steps: truncation horizon (the gymnasium spec's, 50, when ``None``).
    :param nconmax: contacts per world for MuJoCo Warp (its heuristic when ``None``).
    :param njmax: constraint rows per world for MuJoCo Warp.
    """

    def __init__(
        self,
        cpu: ContextualEnv,
        num_envs: int,
        split: str,
        device: str | torch.device,
        seed: int | None,
        max_episode_steps: int | None,
        nconmax: int | None,
        njmax: int | None,
    ) -> None:
        super().__init__(cpu, num_envs, split, device, seed, max_episode_steps, torch.float32)
        if not self.block_gripper:
            raise ValueError("WarpFetch runs the blocked-gripper tasks (Reach, Push)")
        #: what writes the contexts into the worlds' fields (object tasks)
        self.physics_table = cpu.physics if self.has_object else None
        batched = self.physics_table.fields() if self.physics_table is not None else []
        self.worlds = WarpWorlds(
            self.mj_model,
            num_envs,
            self.device,
            batched=batched,
            derived=bool(batched),
            substeps=self.n_substeps,
            nconmax=nconmax,
            njmax=njmax,
        )
        self._mocap_home = (self.worlds.mocap_pos[:1].clone(), self.worlds.mocap_quat[:1].clone())
        self._nominal = {
            f: torch.tensor(self.physics_table.nominal[f], device=self.device) for f in batched
        }
        cpu.close()

    def _kinematics(self, name: str) -> torch.Tensor:
        return getattr(self.worlds, name)

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Set every world's joint state and run it forward: ``qpos`` ``(N, nq)``, ``qvel``
        ``(N, nv)``. Goals and contexts are kept."""
        w = self.worlds
        w.qpos.copy_(torch.as_tensor(qpos, device=self.device))
        w.qvel.copy_(torch.as_tensor(qvel, device=self.device))
        w.forward()

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        w = self.worlds
        # what the Fetch envs' reset does: mj_resetData, the initial state, the task's draws,
        # mj_forward
        w.qpos[mask] = self._init_qpos
        w.qvel[mask] = self._init_qvel
        w.qacc_warmstart[mask] = 0.0
        w.time[mask] = self._init_time
        w.mocap_pos[mask], w.mocap_quat[mask] = self._mocap_home
        if self.has_object:
            self._write_physics(mask)
        start = self._draw_task(mask)
        if start is not None:
            qpos = w.qpos[mask]
            qpos[:, self._object_qpos : self._object_qpos + 2] = start
            w.qpos[mask] = qpos
        w.forward()

    def _write_physics(self, mask: torch.Tensor) -> None:
        """The contexts of the worlds in ``mask`` into their model fields, as
        :func:`envs.manipulation.contextual.scale_fetch_model` writes them, and the derived
        masses."""
        values = self.context_values(mask, self.context_names)
        for field, scaled in self.physics_table.batched(self._nominal, values).items():
            view = self.worlds.field(field)
            view[mask] = scaled.to(view.dtype)
        self.worlds.update_derived()

    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.worlds
        _, pos, quat = self._inputs(actions)
        w.mocap_pos[:, self._mocap] = pos
        # MuJoCo normalises a mocap's quaternion when it places the body; MuJoCo Warp does not
        w.mocap_quat[:, self._mocap] = quat / torch.linalg.vector_norm(quat, dim=-1, keepdim=True)
        w.step()
        w.qpos[:, self._finger_qpos] = 0.0  # the blocked gripper
        w.forward()
        return self._finish_step()


class WarpFetchReach(WarpFetch):
    """``num_envs`` MuJoCo Warp worlds of FetchReach, one goal (context) per world.

    Shapes for ``N = num_envs``: observations ``{"observation": (N, 10), "context": (N, k)}``
    float32, rewards ``(N,)`` float32 (``-distance`` in metres when dense), ``terminated`` always
    false and ``truncated`` after 50 steps, ``(N,)`` bool, all on ``device``;
    :class:`~envs.batched.BatchedContextualEnv` documents ``reset``, ``step`` and auto-reset.

    :param num_envs: worlds stepped together.
    :param features: names from :data:`envs.manipulation.REACH_FEATURES`, in observation order.
    :param split: the split goals are drawn from at every (auto-)reset.
    :param device: torch device; MuJoCo Warp runs on the matching Warp device.
    :param seed: seeds the goal draws.
    :param max_episode_steps: truncation horizon (FetchReach's, 50, when ``None``).
    :param reward_type: ``"dense"`` or ``"sparse"``, as for the CPU env.
    :param nconmax: contacts per world for MuJoCo Warp (its heuristic when ``None``).
    :param njmax: constraint rows per world for MuJoCo Warp. MuJoCo Warp's heuristic (64)
        overflows once the arm presses on the table: with saturated random actions MuJoCo used up
        to 72 rows and MuJoCo Warp up to 88, hence 160.
    """

    def __init__(
        self,
        num_envs: int,
        features: Sequence[str] = tuple(REACH_FEATURES),
        split: str = "train",
        device: str | torch.device = "cpu",
        seed: int | None = None,
        max_episode_steps: int | None = None,
        reward_type: str = "dense",
        nconmax: int | None = None,
        njmax: int | None = 160,
    ) -> None:
        cpu = ContextualFetchReach(features, reward_type=reward_type)
        super().__init__(cpu, num_envs, split, device, seed, max_episode_steps, nconmax, njmax)


class WarpFetchPush(WarpFetch):
    """``num_envs`` MuJoCo Warp worlds of FetchPush, one object physics context per world.

    Shapes for ``N = num_envs``: observations ``{"observation": (N, 25), "achieved_goal": (N, 3),
    "desired_goal": (N, 3), "context": (N, k)}`` float32, rewards ``(N,)`` float32 (sparse by
    default: -1 until the object is within 5 cm of the goal, then 0), ``terminated`` always
    false and ``truncated`` after 50 steps, ``(N,)`` bool, all on ``device``.

    :param num_envs: worlds stepped together.
    :param features: names from :data:`envs.manipulation.FETCH_FEATURES`, in observation order.
    :param split: the split contexts are drawn from at every (auto-)reset.
    :param device: torch device; MuJoCo Warp runs on the matching Warp device.
    :param seed: seeds context, object and goal draws.
    :param max_episode_steps: truncation horizon (FetchPush's, 50, when ``None``).
    :param reward_type: ``"sparse"`` or ``"dense"`` (minus the object's distance to the goal).
    :param nconmax: contacts per world for MuJoCo Warp (its heuristic when ``None``).
    :param njmax: constraint rows per world for MuJoCo Warp (the object's contacts add rows to
        Reach's; 256).
    """

    def __init__(
        self,
        num_envs: int,
        features: Sequence[str] = tuple(FETCH_FEATURES),
        split: str = "train",
        device: str | torch.device = "cpu",
        seed: int | None = None,
        max_episode_steps: int | None = None,
        reward_type: str = "sparse",
        nconmax: int | None = None,
        njmax: int | None = 256,
    ) -> None:
        cpu = ContextualFetch("FetchPush-v4", features, reward_type=reward_type)
        super().__init__(cpu, num_envs, split, device, seed, max_episode_steps, nconmax, njmax)
