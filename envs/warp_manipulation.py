"""Batched MuJoCo Warp version of the contextual FetchReach (the GPU path's manipulation task).

:class:`WarpFetchReach` steps ``num_envs`` worlds of gymnasium-robotics' Fetch robot with MuJoCo
Warp and computes in torch on the device what :class:`envs.manipulation.ContextualFetchReach`
returns. The Fetch envs drive the gripper through a mocap body welded to it, and this does what
their ``step`` does, per world:

1. ``mocap_pos`` = the gripper link's position + 0.05 * ``action[:3]``, ``mocap_quat`` = its
   orientation + (1, 0, 1, 0), normalised (the fixed downward grip); ``action[3]`` (the fingers)
   is ignored, as FetchReach blocks the gripper;
2. ``n_substeps`` (20) MuJoCo steps;
3. the finger joints are set back to 0 and the model is run forward (``mj_forward``);
4. the observation: the grip site's position, the finger positions, the grip site's linear
   velocity and the finger velocities, velocities times the env's ``dt``.

The robot, its initial state (the env's after its settling steps), ``n_substeps``, the horizon and
the reward settings are read from the gymnasium env, so the two cannot drift apart. The goal of a
world is the gripper's initial position plus its context (``goal_x``, ``goal_y``, ``goal_z``).
The site velocity comes from MuJoCo's com-based body velocity ``cvel`` shifted to the site, which
is what gymnasium-robotics computes with the site Jacobian.

Known differences from the CPU env: float32 simulation and MuJoCo Warp's looser solver tolerance
(as for :mod:`envs.warp_locomotion`); every world resets to the same initial state, as the CPU
env does, so only the goals differ between episodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import torch

from envs.batched import BatchedContextualEnv
from envs.manipulation import REACH_FEATURES, ContextualFetchReach
from envs.warp_backend import WarpWorlds

#: the Fetch envs' fixed end-effector orientation, added to the gripper link's each step
_GRIP_ROTATION = (1.0, 0.0, 1.0, 0.0)
#: the Fetch envs' largest gripper displacement per step (m)
_MAX_DISPLACEMENT = 0.05


class WarpFetchReach(BatchedContextualEnv):
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
        env = cpu.unwrapped
        if max_episode_steps is None:
            max_episode_steps = cpu.env.spec.max_episode_steps
        super().__init__(num_envs, cpu.context_space, split, max_episode_steps, device, seed)
        self.observation_space, self.action_space = cpu.observation_space, cpu.action_space
        self.mj_model: mujoco.MjModel = env.model  #: the robot after the env's set-up (host)
        self.dt, self.reward_type = float(env.dt), reward_type
        self.distance_threshold = float(env.distance_threshold)
        self._read_ids()
        self._init_qpos = self._tensor(env.initial_qpos)
        self._init_qvel = self._tensor(env.initial_qvel)
        self._init_time = float(env.initial_time)
        self._start = self._tensor(env.initial_gripper_xpos[:3])
        self._rotation = self._tensor(_GRIP_ROTATION)
        self._axes = [("xyz".index(f[-1]), i) for i, f in enumerate(self.context_names)]
        self.worlds = WarpWorlds(
            self.mj_model,
            num_envs,
            self.device,
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
        if len(weld) != 1 or m.nmocap != 1:
            raise ValueError("expected the Fetch robot: one mocap body welded to the gripper")
        a, b = int(m.eq_obj1id[weld[0]]), int(m.eq_obj2id[weld[0]])
        self._hand = b if m.body_mocapid[a] >= 0 else a
        self._grip = m.site("robot0:grip").id
        self._grip_body = int(m.site_bodyid[self._grip])
        self._grip_root = int(m.body_rootid[self._grip_body])
        fingers = [m.joint(f"robot0:{side}_gripper_finger_joint") for side in "rl"]
        self._finger_qpos = [int(j.qposadr[0]) for j in fingers]
        self._finger_qvel = [int(j.dofadr[0]) for j in fingers]

    @property
    def goals(self) -> torch.Tensor:
        """``(N, 3)`` every world's target position (world frame, m)."""
        goals = self._start.expand(self.num_envs, 3).clone()
        for axis, column in self._axes:
            goals[:, axis] += self.contexts[:, column]
        return goals

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Set every world's joint state and run it forward: ``qpos`` ``(N, nq)``, ``qvel``
        ``(N, nv)``. Goals are kept."""
        w = self.worlds
        w.qpos.copy_(torch.as_tensor(qpos, device=self.device))
        w.qvel.copy_(torch.as_tensor(qvel, device=self.device))
        w.forward()

    # -- BatchedContextualEnv -------------------------------------------------------------------

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        w = self.worlds
        # what FetchReach's reset does: mj_resetData, the initial state, mj_forward
        w.qpos[mask] = self._init_qpos
        w.qvel[mask] = self._init_qvel
        w.qacc_warmstart[mask] = 0.0
        w.time[mask] = self._init_time
        w.mocap_pos[mask], w.mocap_quat[mask] = self._mocap_home
        w.forward()

    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.worlds
        w.mocap_pos[:, 0] = w.xpos[:, self._hand] + _MAX_DISPLACEMENT * actions[:, :3].float()
        quat = w.xquat[:, self._hand] + self._rotation
        w.mocap_quat[:, 0] = quat / torch.linalg.vector_norm(quat, dim=-1, keepdim=True)
        w.step()
        w.qpos[:, self._finger_qpos] = 0.0  # the blocked gripper
        w.forward()
        distance = torch.linalg.vector_norm(self._grip_pos() - self.goals, dim=-1)
        if self.reward_type == "dense":
            reward = -distance
        else:
            reward = -(distance > self.distance_threshold).float()
        return reward, torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def _grip_pos(self) -> torch.Tensor:
        return self.worlds.site_xpos[:, self._grip]

    def _grip_velocity(self) -> torch.Tensor:
        """``(N, 3)`` linear velocity of the grip site: ``cvel`` is the root's com-based spatial
        velocity (rotation, translation at the subtree's centre of mass), shifted to the site."""
        w = self.worlds
        rotation, translation = w.cvel[:, self._grip_body, :3], w.cvel[:, self._grip_body, 3:]
        offset = self._grip_pos() - w.subtree_com[:, self._grip_root]
        return translation + torch.linalg.cross(rotation, offset)

    def _observe(self) -> torch.Tensor:
        w = self.worlds
        return torch.cat(
            [
                self._grip_pos(),
                w.qpos[:, self._finger_qpos],
                self._grip_velocity() * self.dt,
                w.qvel[:, self._finger_qvel] * self.dt,
            ],
            -1,
        )
