"""What the batched Fetch tasks share, whatever steps their worlds.

:class:`BatchedFetch` reads the robot, its initial state (the env's after its settling steps),
``n_substeps``, the horizon, the sampling ranges and the reward settings from the gymnasium-robotics
env inside the CPU twin (:class:`envs.manipulation.ContextualFetchReach` or
:class:`envs.manipulation.ContextualFetch`), so a batched env and its twin cannot drift apart, and
computes from ``(N, ...)`` tensors of the worlds' kinematics what the twin's ``step`` does:

1. the inputs: ``mocap_pos`` = the gripper link's position + 0.05 * ``action[:3]``,
   ``mocap_quat`` = its orientation + (1, 0, 1, 0) (the fixed downward grip); the
   finger actuators (PickAndPlace) get their joint's position + ``action[3]``; a blocked gripper
   (Reach, Push, Slide) ignores ``action[3]``;
2. (the backend: ``n_substeps`` MuJoCo steps; a blocked gripper's finger joints set back to 0 and
   the model run forward);
3. the observation, velocities times the env's ``dt``: the grip site's position, then for the
   object tasks the object's position, its position relative to the grip, the finger positions,
   the object's Euler angles, its linear velocity relative to the grip's, its angular velocity;
   then the grip site's linear velocity and the finger velocities. Site velocities come from
   MuJoCo's com-based body velocity ``cvel`` shifted to the site, which is what
   gymnasium-robotics computes with the site Jacobians;
4. the reward (sparse or dense) and ``is_success`` from the distance to the goal.

Reach's goal is its context (``goal_x``, ``goal_y``, ``goal_z``: the offset from the gripper's
start). The object tasks draw the object's start and the goal per episode as gymnasium-robotics
does (from ``self.generator``), and their context is the object's physics, which the backends
write into their worlds' models. Two backends subclass it: :class:`envs.manipulation.warp.WarpFetch`
(MuJoCo Warp) and :class:`envs.manipulation.native.NativeFetch` (MuJoCo's threaded
``mujoco.rollout``).
"""

from __future__ import annotations

from abc import abstractmethod

import mujoco
import numpy as np
import torch

from envs.batched import BatchedContextualEnv, Obs
from envs.wrappers import ContextualEnv

#: the Fetch envs' fixed end-effector orientation, added to the gripper link's each step
GRIP_ROTATION = (1.0, 0.0, 1.0, 0.0)
#: the Fetch envs' largest gripper displacement per step (m)
MAX_DISPLACEMENT = 0.05
#: kinematic quantities a backend exposes per world (:meth:`BatchedFetch._kinematics`)
KINEMATICS = ("qpos", "qvel", "xpos", "xquat", "site_xpos", "site_xmat", "cvel", "subtree_com")


class BatchedFetch(BatchedContextualEnv):
    """Base of the batched Fetch tasks: settings, task draws, inputs, observation and reward.

    Backends implement :meth:`_kinematics`, ``_reset_worlds`` (with :meth:`_draw_task`) and
    ``_step_worlds`` (with :meth:`_inputs` and :meth:`_finish_step`).

    :param cpu: the CPU twin, read for the model, initial state and settings (closed by the
        backend once it has built its worlds).
    :param num_envs: worlds stepped together.
    :param split: the split contexts are drawn from at every (auto-)reset.
    :param device: torch device of everything returned.
    :param seed: seeds context, object and goal draws.
    :param max_episode_steps: truncation horizon (the gymnasium spec's, 50, when ``None``).
    :param dtype: the float type of the backend's state (goals and inputs are kept in it).
    """

    def __init__(
        self,
        cpu: ContextualEnv,
        num_envs: int,
        split: str,
        device: str | torch.device,
        seed: int | None,
        max_episode_steps: int | None,
        dtype: torch.dtype,
    ) -> None:
        env = cpu.unwrapped
        if max_episode_steps is None:
            max_episode_steps = cpu.env.spec.max_episode_steps
        super().__init__(num_envs, cpu.context_space, split, max_episode_steps, device, seed)
        self.observation_space, self.action_space = cpu.observation_space, cpu.action_space
        self.mj_model: mujoco.MjModel = env.model  #: the robot after the env's set-up (host)
        self.dt, self.reward_type = float(env.dt), env.reward_type
        self.distance_threshold = float(env.distance_threshold)
        self.n_substeps = int(env.n_substeps)
        self.block_gripper, self.has_object = bool(env.block_gripper), bool(env.has_object)
        self._dtype = dtype
        self._read_ids()
        self._init_qpos = self._tensor(env.initial_qpos)
        self._init_qvel = self._tensor(env.initial_qvel)
        self._init_time = float(env.initial_time)
        self._start = self._tensor(env.initial_gripper_xpos[:3])
        self._rotation = self._tensor(GRIP_ROTATION)
        self.goals = self._start.repeat(num_envs, 1)  #: ``(N, 3)`` targets (world frame, m)
        self._success = torch.zeros(num_envs, device=self.device)
        self._column = {name: i for i, name in enumerate(self.context_names)}
        if self.has_object:
            self._obj_range, self._target_range = float(env.obj_range), float(env.target_range)
            self._height = float(env.height_offset)
            self._in_the_air = bool(env.target_in_the_air)
            self._target_offset = self._tensor(np.broadcast_to(env.target_offset, (3,)).copy())

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(np.asarray(values), dtype=self._dtype, device=self._state_device)

    @property
    def _state_device(self) -> torch.device:
        """Where the backend's state tensors live (the CPU for MuJoCo's threads)."""
        return self.device

    def _read_ids(self) -> None:
        """Indices of the welded gripper link, the mocap, the grip site, the finger joints and
        actuators, and the object."""
        m = self.mj_model
        weld = [i for i in range(m.neq) if m.eq_type[i] == mujoco.mjtEq.mjEQ_WELD]
        a, b = int(m.eq_obj1id[weld[0]]), int(m.eq_obj2id[weld[0]])
        self._hand, mocap_body = (b, a) if m.body_mocapid[a] >= 0 else (a, b)
        self._mocap = int(m.body_mocapid[mocap_body])
        #: where ``mj_resetData`` puts the mocap: ``(3,)`` position and ``(4,)`` orientation
        self.mocap_home = (m.body_pos[mocap_body].copy(), m.body_quat[mocap_body].copy())
        self._grip = m.site("robot0:grip").id
        fingers = [m.joint(f"robot0:{side}_gripper_finger_joint") for side in "rl"]
        self._finger_qpos = [int(j.qposadr[0]) for j in fingers]
        self._finger_qvel = [int(j.dofadr[0]) for j in fingers]
        # gymnasium-robotics' ctrl_set_action: position actuators aim at their joint + action
        self._position_actuators = [i for i in range(m.nu) if int(m.actuator_biastype[i]) != 0]
        self._position_joints = [
            int(m.jnt_qposadr[m.actuator_trnid[i, 0]]) for i in self._position_actuators
        ]
        if self.has_object:
            self._object_site = m.site("object0").id
            self._object_qpos = int(m.joint("object0:joint").qposadr[0])

    # -- what a backend provides -----------------------------------------------------------------

    @abstractmethod
    def _kinematics(self, name: str) -> torch.Tensor:
        """The worlds' ``name`` of :data:`KINEMATICS` as after the twin's ``step``: ``qpos``
        ``(N, nq)``, ``qvel`` ``(N, nv)``, ``xpos`` ``(N, nbody, 3)``, ``xquat`` ``(N, nbody,
        4)``, ``site_xpos`` ``(N, nsite, 3)``, ``site_xmat`` ``(N, nsite, 3, 3)``, ``cvel``
        ``(N, nbody, 6)``, ``subtree_com`` ``(N, nbody, 3)``."""

    # -- the task -------------------------------------------------------------------------------

    def _draw_task(self, mask: torch.Tensor) -> torch.Tensor | None:
        """Set the goals of the worlds in ``mask`` and return ``(n, 2)`` the x/y where their
        objects start (``None`` without an object): Reach's goal is the context; the object
        tasks draw both as gymnasium-robotics does."""
        n, here = int(mask.sum()), mask.to(self._state_device)
        if not self.has_object:
            goals = self._start.repeat(n, 1)
            for name in self.context_names:
                axis = "xyz".index(name[-1])
                goals[:, axis] += self.contexts[mask, self._column[name]].to(goals)
            self.goals[here] = goals
            return None
        goals = self._start + self._uniform(n, 3, self._target_range) + self._target_offset
        goals[:, 2] = self._height
        if self._in_the_air:  # half of the goals lifted by up to 45 cm
            lift = self._uniform(n, 1, 0.225)[:, 0] + 0.225
            up = torch.rand(n, generator=self.generator) < 0.5
            goals[:, 2] += torch.where(up.to(lift.device), lift, 0.0)
        self.goals[here] = goals
        return self._start[:2] + self._object_offsets(n).to(self._start)

    def _uniform(self, n: int, dim: int, half: float) -> torch.Tensor:
        """``(n, dim)`` U(-half, half) from ``self.generator``, in the state's dtype and place."""
        u = torch.rand(n, dim, generator=self.generator, dtype=torch.float64) * 2 - 1
        return (half * u).to(self._state_device, self._dtype)

    def _object_offsets(self, n: int) -> torch.Tensor:
        """``(n, 2)`` float64 object offsets from the gripper, uniform in the square, redrawn
        while within 10 cm (gymnasium-robotics' rejection loop, for every row at once)."""
        out = torch.zeros(n, 2, dtype=torch.float64)
        todo = torch.ones(n, dtype=torch.bool)
        while bool(todo.any()):
            k = int(todo.sum())
            u = torch.rand(k, 2, generator=self.generator, dtype=torch.float64) * 2 - 1
            out[todo] = self._obj_range * u
            todo = torch.linalg.vector_norm(out, dim=-1) < 0.1
        return out

    def _inputs(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the twin's ``_set_action`` writes, from ``actions`` ``(N, 4)``: ``ctrl`` ``(N,
        nu)``, ``mocap_pos`` ``(N, 3)`` and ``mocap_quat`` ``(N, 4)`` (not normalised, as the
        twin's)."""
        # gymnasium-robotics scales the float32 action in float32: a contact can turn the
        # rounding difference (1e-9 m) into millimetres one step later
        move = (MAX_DISPLACEMENT * actions[:, :3].float()).to(self._state_device, self._dtype)
        actions = actions.to(self._state_device, self._dtype)
        pos = self._kinematics("xpos")[:, self._hand] + move
        quat = self._kinematics("xquat")[:, self._hand] + self._rotation  # MuJoCo normalises
        grip = actions[:, 3:4] * (0.0 if self.block_gripper else 1.0)
        ctrl = grip.expand(-1, self.mj_model.nu).clone()
        if self._position_actuators:
            qpos = self._kinematics("qpos")[:, self._position_joints]
            ctrl[:, self._position_actuators] += qpos
        return ctrl, pos, quat

    def _finish_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Reward ``(N,)`` and ``terminated`` ``(N,)`` (never) after the worlds stepped; keeps
        the success flags for :meth:`_step_info`."""
        achieved = self._achieved()
        distance = torch.linalg.vector_norm(achieved - self.goals, dim=-1)
        self._success = (distance < self.distance_threshold).to(self.device, torch.float32)
        reward = self.compute_reward(achieved, self.goals)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return reward.to(self.device, torch.float32), terminated

    def compute_reward(
        self, achieved_goal: torch.Tensor, desired_goal: torch.Tensor
    ) -> torch.Tensor:
        """``(B,)`` the reward for reaching ``desired_goal`` ``(B, 3)`` at ``achieved_goal``
        ``(B, 3)``, as the twin's ``compute_reward`` (what HER relabels with): minus the
        distance (dense), or -1 beyond the distance threshold and 0 within it (sparse)."""
        distance = torch.linalg.vector_norm(achieved_goal - desired_goal, dim=-1)
        if self.reward_type == "dense":
            return -distance
        return -(distance > self.distance_threshold).to(distance.dtype)

    def _step_info(self) -> dict[str, torch.Tensor]:
        """``is_success`` ``(N,)``: 1.0 where the step ended within the distance threshold."""
        return {"is_success": self._success}

    def _achieved(self) -> torch.Tensor:
        """``(N, 3)`` what must reach the goal: the object, or the grip without one."""
        return self._site_pos(self._object_site if self.has_object else self._grip)

    # -- observations -----------------------------------------------------------------------------

    def _obs(self) -> Obs:
        obs = super()._obs()
        if self.has_object:
            obs["achieved_goal"] = self._achieved().to(self.device, torch.float32)
            obs["desired_goal"] = self.goals.to(self.device, torch.float32)
        return obs

    def _site_pos(self, site: int) -> torch.Tensor:
        return self._kinematics("site_xpos")[:, site]

    def _site_velocity(self, site: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3)`` linear and ``(N, 3)`` angular velocity of a site: ``cvel`` is its body's
        com-based spatial velocity (rotation, then translation at the centre of mass of the
        body's root subtree), shifted to the site."""
        m = self.mj_model
        body = int(m.site_bodyid[site])
        cvel = self._kinematics("cvel")[:, body]
        rotation, translation = cvel[:, :3], cvel[:, 3:]
        root = self._kinematics("subtree_com")[:, int(m.body_rootid[body])]
        offset = self._site_pos(site) - root
        return translation + torch.linalg.cross(rotation, offset), rotation

    def _observe(self) -> torch.Tensor:
        qpos, qvel = self._kinematics("qpos"), self._kinematics("qvel")
        grip = self._site_pos(self._grip)
        fingers = qpos[:, self._finger_qpos]
        grip_velocity = self._site_velocity(self._grip)[0] * self.dt
        finger_velocity = qvel[:, self._finger_qvel] * self.dt
        if not self.has_object:
            parts = [grip, fingers, grip_velocity, finger_velocity]
        else:
            obj = self._site_pos(self._object_site)
            velocity, angular = self._site_velocity(self._object_site)
            rotation = mat2euler(self._kinematics("site_xmat")[:, self._object_site])
            parts = [
                grip,
                obj,
                obj - grip,
                fingers,
                rotation,
                velocity * self.dt - grip_velocity,
                angular * self.dt,
                grip_velocity,
                finger_velocity,
            ]
        return torch.cat(parts, -1).to(self.device, torch.float32)


def mat2euler(mat: torch.Tensor) -> torch.Tensor:
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
