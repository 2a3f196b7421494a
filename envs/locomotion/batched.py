"""What the batched locomotion envs share, whatever steps their worlds.

:class:`BatchedLocomotion` reads everything env-specific (XML, ``frame_skip``, reward weights,
healthy ranges, noise scale, observation options) from the gymnasium env that ``gym.make(env_id,
**kwargs)`` builds, so a batched env and its CPU twin cannot drift apart, and computes from
``(N, ...)`` state tensors what :class:`envs.locomotion.ContextualLocomotion` returns: forward and
task rewards, control and contact costs, health and termination, initial-state noise. Two
backends subclass it: :class:`envs.locomotion.warp.WarpLocomotion` (MuJoCo Warp, GPU) and
:class:`envs.locomotion.native.NativeLocomotion` (MuJoCo's own threaded ``mujoco.rollout``, CPU).

``mj_step`` leaves position-dependent quantities (``xpos``, ``xipos``, ``cfrc_ext`` after
``mj_rnePostConstraint``...) one substep behind ``qpos``: gymnasium reads them there, so the
backends do too (see :attr:`_Family.velocity`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

from envs.batched import BatchedContextualEnv
from envs.context import ContextSpace
from envs.locomotion.contextual import PHYSICS_FEATURES, TASK_FEATURES
from envs.physics import LOCOMOTION_FIELDS, PhysicsTable


@dataclass(frozen=True)
class _Family:
    """How one gymnasium v5 locomotion env turns MuJoCo state into obs, reward and termination."""

    skipped_qpos: int  # leading qpos entries (x, y) left out of the observation by default
    qvel_clip: float | None  # observation clips qvel to [-c, c]
    normal_qvel_noise: bool  # initial qvel noise N(0, s^2) rather than U(-s, s)
    health: str | None  # which healthy check terminates episodes
    #: where the x/y velocity comes from: ``"qpos"`` (qpos[0] before and after the step),
    #: ``"body"`` (the main body's ``xpos``) or ``"mass_center"`` (mass-weighted ``xipos``)
    velocity: str
    #: contact cost on ``cfrc_ext``: ``"ant"`` (forces clipped, then squared and summed),
    #: ``"humanoid"`` (squared, summed, weighted, then the cost clipped), or ``None``
    contact: str | None
    #: the observation also holds ``cinert``, ``cvel`` and ``qfrc_actuator`` (Humanoid)
    com_observations: bool = False


FAMILIES: dict[str, _Family] = {
    "HalfCheetah-v5": _Family(1, None, True, None, "qpos", None),
    "Hopper-v5": _Family(1, 10.0, False, "hopper", "qpos", None),
    "Walker2d-v5": _Family(1, 10.0, False, "walker", "qpos", None),
    "Ant-v5": _Family(2, None, True, "ant", "body", "ant"),
    "Humanoid-v5": _Family(2, None, False, "humanoid", "mass_center", "humanoid", True),
}


class BatchedLocomotion(BatchedContextualEnv):
    """Base of the batched gymnasium v5 locomotion envs: spaces, settings, contexts, rewards.

    :param env_id: a key of ``families``.
    :param num_envs: worlds stepped together.
    :param features: context features, names from :data:`envs.locomotion.PHYSICS_FEATURES` and
        :data:`envs.locomotion.TASK_FEATURES`, in observation order (as the CPU env's).
    :param split: the split contexts are drawn from at every (auto-)reset.
    :param device: torch device of everything returned.
    :param seed: seeds context and initial-state draws.
    :param max_episode_steps: truncation horizon (the gymnasium spec's, 1000, when ``None``).
    :param families: the env ids this backend supports (a subset of :data:`FAMILIES`).
    :param unsupported: why an env id of :data:`FAMILIES` outside ``families`` is not supported.
    :param kwargs: passed to ``gym.make`` (``xml_file``, ``ctrl_cost_weight``...), as for the CPU
        env; the env's reward weights, ranges and observation options are read back from it.
    :raises ValueError: for an unsupported env id or an unknown feature.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        features: Sequence[str] = tuple(PHYSICS_FEATURES),
        split: str = "train",
        device: str | torch.device = "cpu",
        seed: int | None = None,
        max_episode_steps: int | None = None,
        families: Sequence[str] = tuple(FAMILIES),
        unsupported: str = "",
        **kwargs: Any,
    ) -> None:
        if env_id not in families:
            why = f" ({unsupported})" if env_id in FAMILIES and unsupported else ""
            raise ValueError(
                f"{type(self).__name__} supports {list(families)}, not {env_id!r}{why}"
            )
        space = ContextSpace.choose(PHYSICS_FEATURES | TASK_FEATURES, features, "locomotion")
        family = FAMILIES[env_id]
        if "direction" in features and family.velocity == "qpos":
            raise ValueError(f"'direction' needs an env that reports y_velocity, not {env_id}")
        env = gym.make(env_id, **kwargs)
        if max_episode_steps is None:
            max_episode_steps = env.spec.max_episode_steps
        super().__init__(num_envs, space, split, max_episode_steps, device, seed)
        self.env_id, self.family = env_id, family
        self.observation_space = gym.spaces.Dict(
            {"observation": env.observation_space, "context": self._context_box()}
        )
        self.action_space = env.action_space
        self._read_params(env.unwrapped)
        self.mj_model: mujoco.MjModel = env.unwrapped.model  #: the nominal model (host)
        env.close()
        self._column = {name: i for i, name in enumerate(features)}
        #: the physics features among ``features``, in :data:`~envs.physics.LOCOMOTION_FIELDS`
        #: order, and what writes them into models
        self.physics = [f for f in LOCOMOTION_FIELDS if f in self._column]
        self.physics_table = PhysicsTable(self.mj_model, LOCOMOTION_FIELDS, PHYSICS_FEATURES)

    def _read_params(self, env: gym.Env) -> None:
        """The gymnasium env's settings (its constructor's defaults unless overridden)."""
        self.frame_skip, self.dt = int(env.frame_skip), float(env.dt)
        self._forward_weight = float(env._forward_reward_weight)
        self._ctrl_weight = float(env._ctrl_cost_weight)
        self._noise_scale = float(env._reset_noise_scale)
        self._init_qpos = torch.tensor(env.init_qpos, dtype=torch.float64)
        self._init_qvel = torch.tensor(env.init_qvel, dtype=torch.float64)
        skip = self.family.skipped_qpos
        self._skip = skip if env._exclude_current_positions_from_observation else 0
        self._healthy_reward = float(getattr(env, "_healthy_reward", 0.0))
        self._terminate = bool(getattr(env, "_terminate_when_unhealthy", False))
        self._z_range = getattr(env, "_healthy_z_range", None)
        self._angle_range = getattr(env, "_healthy_angle_range", None)
        self._state_range = getattr(env, "_healthy_state_range", None)
        self._contact_weight = float(getattr(env, "_contact_cost_weight", 0.0))
        self._force_range = getattr(env, "_contact_force_range", (-np.inf, np.inf))
        self._cost_range = getattr(env, "_contact_cost_range", (-np.inf, np.inf))
        self._cfrc_in_obs = bool(getattr(env, "_include_cfrc_ext_in_observation", False))
        self._com_in_obs = {
            name: bool(getattr(env, f"_include_{name}_in_observation", False))
            for name in ("cinert", "cvel", "qfrc_actuator")
        }
        main = getattr(env, "_main_body", 1)
        self._main_body = main if isinstance(main, int) else env.model.body(main).id

    def _initial_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, nq)`` and ``(n, nv)`` float64 initial states drawn (from ``self.generator``)
        as the gymnasium env's ``reset_model`` draws them."""
        s = self._noise_scale
        qpos = self._init_qpos + s * self._uniform(n, len(self._init_qpos))
        nv = len(self._init_qvel)
        if self.family.normal_qvel_noise:
            noise = torch.randn(n, nv, generator=self.generator, dtype=torch.float64)
            return qpos, self._init_qvel + s * noise
        return qpos, self._init_qvel + s * self._uniform(n, nv)

    def _uniform(self, n: int, dim: int) -> torch.Tensor:
        """``(n, dim)`` float64 U(-1, 1) from ``self.generator`` (on the host, like the contexts:
        the generator is a CPU one)."""
        return torch.rand(n, dim, generator=self.generator, dtype=torch.float64) * 2 - 1

    def _observation(
        self, qpos: torch.Tensor, qvel: torch.Tensor, extra: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """``(N, obs_dim)``: gymnasium's ``_get_obs`` from the state and what ``mj_step`` left
        beside it (``extra``: ``cfrc_ext`` for envs that observe it, and for Humanoid ``cinert``,
        ``cvel``, ``qfrc_actuator``), in the backend's dtype."""
        clip = self.family.qvel_clip
        parts = [qpos[:, self._skip :], qvel if clip is None else qvel.clamp(-clip, clip)]
        if self.family.com_observations:
            for name, first in (("cinert", 1), ("cvel", 1), ("qfrc_actuator", 6)):
                if self._com_in_obs[name]:
                    parts.append(extra[name][:, first:].flatten(1))
        if self._cfrc_in_obs:
            forces = extra["cfrc_ext"][:, 1:]
            if self.family.contact == "ant":
                forces = forces.clamp(*self._force_range)
            parts.append(forces.flatten(1))
        return torch.cat(parts, -1)

    def _reward(
        self,
        velocity: torch.Tensor,
        actions: torch.Tensor,
        qpos: torch.Tensor,
        qvel: torch.Tensor,
        cfrc_ext: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``reward (N,)`` and ``terminated (N,)`` bool from the step's x/y ``velocity`` ``(N,
        2)``, the clipped ``actions``, the new state and (for envs with a contact cost) the
        step's ``cfrc_ext`` ``(N, nbody, 6)``."""
        reward = self._forward_reward(velocity) - self._ctrl_weight * actions.square().sum(-1)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=reward.device)
        if self.family.health is not None:
            healthy = self._healthy(qpos, qvel)
            reward = reward + self._healthy_reward * healthy
            if self._terminate:
                terminated = ~healthy
        if self.family.contact == "ant":
            forces = cfrc_ext.clamp(*self._force_range)
            reward = reward - self._contact_weight * forces.square().sum((1, 2))
        elif self.family.contact == "humanoid":
            cost = self._contact_weight * cfrc_ext.square().sum((1, 2))
            reward = reward - cost.clamp(*self._cost_range)
        return reward, terminated

    def _forward_reward(self, velocity: torch.Tensor) -> torch.Tensor:
        """``(N,)``: the env's forward reward, or the task reward that replaces it."""
        vx = velocity[:, 0]
        if "target_velocity" in self._column:
            target = self.contexts[:, self._column["target_velocity"]].to(vx)
            return -self._forward_weight * (vx - target).abs()
        if "direction" in self._column:
            a = self.contexts[:, self._column["direction"]].to(vx)
            return self._forward_weight * (vx * torch.cos(a) + velocity[:, 1] * torch.sin(a))
        return self._forward_weight * vx

    def _healthy(self, qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: gymnasium's ``is_healthy`` of each world."""
        health = self.family.health
        if health == "ant":
            finite = torch.isfinite(qpos).all(-1) & torch.isfinite(qvel).all(-1)
            lo, hi = self._z_range
            return finite & (qpos[:, 2] >= lo) & (qpos[:, 2] <= hi)
        if health == "humanoid":
            lo, hi = self._z_range
            return (qpos[:, 2] > lo) & (qpos[:, 2] < hi)
        (zlo, zhi), (alo, ahi) = self._z_range, self._angle_range
        z, angle = qpos[:, 1], qpos[:, 2]
        healthy = (z > zlo) & (z < zhi) & (angle > alo) & (angle < ahi)
        if health == "hopper":
            lo, hi = self._state_range
            state = torch.cat([qpos[:, 2:], qvel], -1)
            healthy &= ((state > lo) & (state < hi)).all(-1)
        return healthy
