"""Batched MuJoCo Warp versions of the contextual Fetch tasks (the GPU path's manipulation).

:class:`WarpFetchReach` and :class:`WarpFetchPush` step ``num_envs`` worlds of gymnasium-robotics'
Fetch robot with MuJoCo Warp and compute in torch on the device what their CPU twins,
:class:`envs.manipulation.ContextualFetchReach` and :class:`envs.manipulation.ContextualFetch`
(``FetchPush-v4``), return. The Fetch envs drive the gripper through a mocap body welded to it;
:class:`WarpFetch` does what their ``step`` does, per world:

1. ``mocap_pos`` = the gripper link's position + 0.05 * ``action[:3]``, ``mocap_quat`` = its
   orientation + (1, 0, 1, 0), normalised (the fixed downward grip); ``action[3]`` (the fingers)
   is ignored, as Reach and Push block the gripper;
2. ``n_substeps`` (20) MuJoCo steps;
3. the finger joints are set back to 0 and the model is run forward (``mj_forward``);
4. the observation, velocities times the env's ``dt``: the grip site's position, then for Push
   the object's position, its position relative to the grip, the finger positions, the object's
   Euler angles, its linear velocity relative to the grip's, its angular velocity; then the grip
   site's linear velocity and the finger velocities.

The robot, its initial state (the env's after its settling steps), ``n_substeps``, the horizon, the
sampling ranges and the reward settings are read from the gymnasium env, so the two cannot drift
apart. Site velocities come from MuJoCo's com-based body velocity ``cvel`` shifted to the site,
which is what gymnasium-robotics computes with the site Jacobians.

Reach's goal is its context (``goal_x``, ``goal_y``, ``goal_z``: the offset from the gripper's
start). Push draws the object's start and the goal per episode as FetchPush does, and its context
is the object's physics (``object_mass_scale``, ``object_friction_scale``,
``table_friction_scale``), written per world into batched model fields as
:meth:`ContextualFetch.apply_context` writes them, with the derived masses recomputed on the
device.

Known differences from the CPU envs: float32 simulation and MuJoCo Warp's looser solver tolerance
(as for :mod:`envs.warp_locomotion`); Push's object start and goal come from ``self.generator``
(torch), with FetchPush's distributions.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np
import torch

from envs.batched import BatchedContextualEnv, Obs
from envs.manipulation import (
    FETCH_FEATURES,
    REACH_FEATURES,
    ContextualFetch,
    ContextualFetchReach,
)
from envs.warp_backend import WarpWorlds
from envs.wrappers import ContextualEnv

#: the Fetch envs' fixed end-effector orientation, added to the gripper link's each step
_GRIP_ROTATION = (1.0, 0.0, 1.0, 0.0)
#: the Fetch envs' largest gripper displacement per step (m)
_MAX_DISPLACEMENT = 0.05


class WarpFetch(BatchedContextualEnv):
    """The Fetch robot in MuJoCo Warp: mocap control, the blocked gripper, the grip observations.
    Subclasses add the task: what a reset draws (:meth:`_reset_task`), what must reach the goal
    (:meth:`_achieved`) and the observation (:meth:`_observe`).

    :param cpu: the CPU twin (built by the subclass), read for the model, initial state and
        settings, then closed.
    :param num_envs: worlds stepped together.
    :param split: the split contexts are drawn from at every (auto-)reset.
    :param device: torch device; MuJoCo Warp runs on the matching Warp device.
    :param seed: seeds context (and for Push object and goal) draws.
    :param max_episode_steps: truncation horizon (the gymnasium spec's, 50, when ``None``).
    :param nconmax: contacts per world for MuJoCo Warp (its heuristic when ``None``).
    :param njmax: constraint rows per world for MuJoCo Warp.
    :param batched: model fields with a per-world copy (for physics contexts).
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
        batched: Sequence[str] = (),
    ) -> None:
        env = cpu.unwrapped
        if max_episode_steps is None:
            max_episode_steps = cpu.env.spec.max_episode_steps
        super().__init__(num_envs, cpu.context_space, split, max_episode_steps, device, seed)
        self.observation_space, self.action_space = cpu.observation_space, cpu.action_space
        self.mj_model: mujoco.MjModel = env.model  #: the robot after the env's set-up (host)
        self.dt, self.reward_type = float(env.dt), env.reward_type
        self.distance_threshold = float(env.distance_threshold)
        self._read_ids()
        self._init_qpos = self._tensor(env.initial_qpos)
        self._init_qvel = self._tensor(env.initial_qvel)
        self._init_time = float(env.initial_time)
        self._start = self._tensor(env.initial_gripper_xpos[:3])
        self._rotation = self._tensor(_GRIP_ROTATION)
        self.goals = self._start.repeat(num_envs, 1)  #: ``(N, 3)`` targets (world frame, m)
        self.worlds = WarpWorlds(
            self.mj_model,
            num_envs,
            self.device,
            batched=batched,
            derived=bool(batched),
            substeps=int(env.n_substeps),
            nconmax=nconmax,
            njmax=njmax,
        )
        self._mocap_home = (self.worlds.mocap_pos[:1].clone(), self.worlds.mocap_quat[:1].clone())
        cpu.close()

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def _read_ids(self) -> None:
        """Indices of the welded gripper link, the grip site and the finger joints."""
        m = self.mj_model
        weld = [i for i in range(m.neq) if m.eq_type[i] == mujoco.mjtEq.mjEQ_WELD]
        a, b = int(m.eq_obj1id[weld[0]]), int(m.eq_obj2id[weld[0]])
        self._hand, mocap_body = (b, a) if m.body_mocapid[a] >= 0 else (a, b)
        self._mocap = int(m.body_mocapid[mocap_body])
        self._grip = m.site("robot0:grip").id
        fingers = [m.joint(f"robot0:{side}_gripper_finger_joint") for side in "rl"]
        self._finger_qpos = [int(j.qposadr[0]) for j in fingers]
        self._finger_qvel = [int(j.dofadr[0]) for j in fingers]

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Set every world's joint state and run it forward: ``qpos`` ``(N, nq)``, ``qvel``
        ``(N, nv)``. Goals and contexts are kept."""
        w = self.worlds
        w.qpos.copy_(torch.as_tensor(qpos, device=self.device))
        w.qvel.copy_(torch.as_tensor(qvel, device=self.device))
        w.forward()

    # -- BatchedContextualEnv -------------------------------------------------------------------

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        w = self.worlds
        # what the Fetch envs' reset does: mj_resetData, the initial state, (the task's draws),
        # mj_forward
        w.qpos[mask] = self._init_qpos
        w.qvel[mask] = self._init_qvel
        w.qacc_warmstart[mask] = 0.0
        w.time[mask] = self._init_time
        w.mocap_pos[mask], w.mocap_quat[mask] = self._mocap_home
        self._reset_task(mask)
        w.forward()

    def _reset_task(self, mask: torch.Tensor) -> None:
        """Draw the task of the worlds in ``mask`` (goals, object, physics) before the forward."""

    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.worlds
        move = _MAX_DISPLACEMENT * actions[:, :3].float()
        w.mocap_pos[:, self._mocap] = w.xpos[:, self._hand] + move
        quat = w.xquat[:, self._hand] + self._rotation
        w.mocap_quat[:, self._mocap] = quat / torch.linalg.vector_norm(quat, dim=-1, keepdim=True)
        w.step()
        w.qpos[:, self._finger_qpos] = 0.0  # the blocked gripper
        w.forward()
        distance = torch.linalg.vector_norm(self._achieved() - self.goals, dim=-1)
        self._success = (distance < self.distance_threshold).float()
        if self.reward_type == "dense":
            reward = -distance
        else:
            reward = -(distance > self.distance_threshold).float()
        return reward, torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def _step_info(self) -> dict[str, torch.Tensor]:
        """``is_success`` ``(N,)``: 1.0 where the step ended within the distance threshold."""
        return {"is_success": self._success}

    def _achieved(self) -> torch.Tensor:
        """``(N, 3)`` what must reach the goal."""
        return self._site_pos(self._grip)

    def _site_pos(self, site: int) -> torch.Tensor:
        return self.worlds.site_xpos[:, site]

    def _site_velocity(self, site: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3)`` linear and ``(N, 3)`` angular velocity of a site: ``cvel`` is its body's
        com-based spatial velocity (rotation, then translation at the centre of mass of the
        body's root subtree), shifted to the site."""
        m, w = self.mj_model, self.worlds
        body = int(m.site_bodyid[site])
        rotation, translation = w.cvel[:, body, :3], w.cvel[:, body, 3:]
        offset = self._site_pos(site) - w.subtree_com[:, int(m.body_rootid[body])]
        return translation + torch.linalg.cross(rotation, offset), rotation

    def _grip_observation(self) -> tuple[torch.Tensor, ...]:
        """The grip's position, finger positions, velocity and finger velocities (``dt``
        scaled)."""
        w = self.worlds
        return (
            self._site_pos(self._grip),
            w.qpos[:, self._finger_qpos],
            self._site_velocity(self._grip)[0] * self.dt,
            w.qvel[:, self._finger_qvel] * self.dt,
        )


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
        self._axes = [("xyz".index(f[-1]), i) for i, f in enumerate(self.context_names)]

    def _reset_task(self, mask: torch.Tensor) -> None:
        goals = self._start.repeat(int(mask.sum()), 1)
        for axis, column in self._axes:
            goals[:, axis] += self.contexts[mask, column]
        self.goals[mask] = goals

    def _observe(self) -> torch.Tensor:
        return torch.cat(self._grip_observation(), -1)


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
        env = cpu.unwrapped
        self._object_body = cpu._object_body
        self._object_geoms = [int(g) for g in cpu._object_geoms]
        self._table_geoms = [int(g) for g in cpu._table_geoms]
        self._obj_range, self._target_range = float(env.obj_range), float(env.target_range)
        self._height = float(env.height_offset)
        fields = ("body_mass", "body_inertia", "geom_friction")
        super().__init__(
            cpu, num_envs, split, device, seed, max_episode_steps, nconmax, njmax, fields
        )
        self._target_offset = self._tensor(np.broadcast_to(env.target_offset, (3,)).copy())
        m = self.mj_model
        self._object_site = m.site("object0").id
        self._object_qpos = int(m.joint("object0:joint").qposadr[0])
        self._nominal = {f: self.worlds.field(f)[0].clone() for f in fields}
        self._column = {name: i for i, name in enumerate(self.context_names)}

    def _obs(self) -> Obs:
        obs = super()._obs()
        obs["achieved_goal"] = self._achieved().clone()
        obs["desired_goal"] = self.goals.clone()
        return obs

    def _achieved(self) -> torch.Tensor:
        return self._site_pos(self._object_site)

    def _scale(self, mask: torch.Tensor, name: str) -> torch.Tensor:
        """``(n, 1)`` the factor of feature ``name`` for the worlds in ``mask`` (1 without it):
        the raw value, as :meth:`ContextualFetch.apply_context` multiplies by it."""
        if name not in self._column:
            return torch.ones(int(mask.sum()), 1, device=self.device)
        return self.contexts[mask, self._column[name]].unsqueeze(-1)

    def _reset_task(self, mask: torch.Tensor) -> None:
        n, w = int(mask.sum()), self.worlds
        # physics, as ContextualFetch.apply_context
        mass = self._scale(mask, "object_mass_scale")
        body_mass = self._nominal["body_mass"].repeat(n, 1)
        body_mass[:, self._object_body] *= mass[:, 0]
        body_inertia = self._nominal["body_inertia"].repeat(n, 1, 1)
        body_inertia[:, self._object_body] *= mass
        friction = self._nominal["geom_friction"].repeat(n, 1, 1)
        friction[:, self._object_geoms, 0] *= self._scale(mask, "object_friction_scale")
        friction[:, self._table_geoms, 0] *= self._scale(mask, "table_friction_scale")
        w.field("body_mass")[mask] = body_mass
        w.field("body_inertia")[mask] = body_inertia
        w.field("geom_friction")[mask] = friction
        w.update_derived()
        # FetchPush's draws: the object at least 10 cm from the gripper, the goal on the table
        offset = self._object_offsets(n).to(self.device)
        start = w.qpos[mask]
        start[:, self._object_qpos : self._object_qpos + 2] = self._start[:2] + offset
        w.qpos[mask] = start
        goals = self._start + self._uniform(n, 3, self._target_range) + self._target_offset
        goals[:, 2] = self._height
        self.goals[mask] = goals

    def _uniform(self, n: int, dim: int, half: float) -> torch.Tensor:
        """``(n, dim)`` U(-half, half) from ``self.generator``, on the device."""
        u = torch.rand(n, dim, generator=self.generator, dtype=torch.float64) * 2 - 1
        return (half * u).to(self.device, torch.float32)

    def _object_offsets(self, n: int) -> torch.Tensor:
        """``(n, 2)`` object offsets from the gripper, uniform in the square, redrawn while
        within 10 cm (FetchPush's rejection loop, for every row at once)."""
        out = torch.zeros(n, 2, dtype=torch.float64)
        todo = torch.ones(n, dtype=torch.bool)
        while bool(todo.any()):
            k = int(todo.sum())
            u = torch.rand(k, 2, generator=self.generator, dtype=torch.float64) * 2 - 1
            out[todo] = self._obj_range * u
            todo = torch.linalg.vector_norm(out, dim=-1) < 0.1
        return out.float()

    def _observe(self) -> torch.Tensor:
        grip, fingers, grip_velocity, finger_velocity = self._grip_observation()
        obj = self._site_pos(self._object_site)
        velocity, angular = self._site_velocity(self._object_site)
        rotation = _mat2euler(self.worlds.site_xmat[:, self._object_site])
        return torch.cat(
            [
                grip,
                obj,
                obj - grip,
                fingers,
                rotation,
                velocity * self.dt - grip_velocity,
                angular * self.dt,
                grip_velocity,
                finger_velocity,
            ],
            -1,
        )


def _mat2euler(mat: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` rotation matrices -> ``(..., 3)`` Euler angles, as gymnasium-robotics'
    ``rotations.mat2euler``."""
    cy = torch.sqrt(mat[..., 2, 2] ** 2 + mat[..., 1, 2] ** 2)
    regular = cy > torch.finfo(mat.dtype).eps * 4.0  # gymnasium-robotics' _EPS4, per dtype
    z = torch.where(
        regular,
        -torch.atan2(mat[..., 0, 1], mat[..., 0, 0]),
        -torch.atan2(-mat[..., 1, 0], mat[..., 1, 1]),
    )
    y = -torch.atan2(-mat[..., 0, 2], cy)
    x = torch.where(regular, -torch.atan2(mat[..., 1, 2], mat[..., 2, 2]), 0.0)
    return torch.stack([x, y, z], -1)
