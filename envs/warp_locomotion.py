"""Batched MuJoCo Warp versions of the contextual locomotion envs (the GPU path).

:class:`WarpLocomotion` steps ``num_envs`` worlds of one gymnasium v5 model (HalfCheetah, Hopper,
Walker2d, Ant) with MuJoCo Warp, each world with its own context, and computes what
:class:`envs.locomotion.ContextualLocomotion` returns -- observation, reward, termination,
initial-state noise -- in torch on the device. Everything env-specific (XML, ``frame_skip``,
reward weights, healthy ranges, noise scale, observation options) is read from the gymnasium env
that ``gym.make(env_id, **kwargs)`` builds, so the two cannot drift apart.

Contexts use the CPU env's features and semantics: physics features scale the nominal model
values exactly as :meth:`ContextualLocomotion.apply_context` does, but per world, in model fields
given a leading world dimension; task features replace the forward reward the same way. What
``mj_setConst`` derives from masses and gears and MuJoCo Warp reads while stepping
(:data:`envs.warp_backend.DERIVED_FIELDS`) is recomputed on the device by MuJoCo Warp's
``set_const`` whenever worlds reset, for every world at once (a world whose context did not
change gets its old values back). That keeps the derived masses on the device (no MjModel per
world on the host); its cost is a fixed number of kernel launches per reset step (dozens of
small solves, independent of the number of worlds), paid only when ``mass_scale`` or
``actuator_scale`` is a feature.

Known, deliberate differences from the CPU env: the simulation is float32 (MuJoCo's is float64)
and MuJoCo Warp's solver tolerance is at least 1e-6 (1e-8 in MuJoCo); the initial-state noise has
the same distribution but comes from ``self.generator`` (torch), not the env's numpy generator;
the first step after a reset warm-starts the constraint solver from zero (MuJoCo from the forward
pass in ``set_state``); the control cost uses the action after clipping to the action space.
Observation tensors are float32, while the ``observation`` Box keeps gymnasium's float64 dtype so
the spaces equal the CPU env's.

Ant does not match MuJoCo with its default pyramidal friction cone: for a capsule touching the
floor more steeply than 60 degrees from horizontal (Ant's shins), MuJoCo Warp 4.0 builds the
contact frame from a fixed tangent where MuJoCo follows the capsule's axis, and a pyramid's
friction depends on that frame, so such contact steps differ (by up to ~1 in joint velocities).
With an elliptic cone (isotropic friction) the two agree like the other envs. The planar models
are unaffected: both frames span the same pyramid there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

from envs.batched import BatchedContextualEnv, Obs
from envs.context import ContextSpace
from envs.locomotion import PHYSICS_FEATURES, TASK_FEATURES
from envs.warp_backend import WarpWorlds


@dataclass(frozen=True)
class _Family:
    """How one gymnasium v5 locomotion env turns MuJoCo state into obs, reward and termination."""

    skipped_qpos: int  # leading qpos entries (x, y) left out of the observation by default
    qvel_clip: float | None  # observation clips qvel to [-c, c]
    normal_qvel_noise: bool  # initial qvel noise N(0, s^2) rather than U(-s, s)
    health: str | None  # which healthy check terminates episodes
    velocity_from_body: bool  # x/y velocity from the main body's xpos rather than qpos[0]
    contact_cost: bool  # reward pays for clipped external contact forces (cfrc_ext)


FAMILIES: dict[str, _Family] = {
    "HalfCheetah-v5": _Family(1, None, True, None, False, False),
    "Hopper-v5": _Family(1, 10.0, False, "hopper", False, False),
    "Walker2d-v5": _Family(1, 10.0, False, "walker", False, False),
    "Ant-v5": _Family(2, None, True, "ant", True, True),
}

#: physics feature -> the model fields it scales and which column (``None``: all)
_PHYSICS_FIELDS: dict[str, tuple[tuple[str, int | None], ...]] = {
    "gravity": (("gravity", None),),
    "mass_scale": (("body_mass", None), ("body_inertia", None)),
    "friction_scale": (("geom_friction", 0),),
    "damping_scale": (("dof_damping", None),),
    "actuator_scale": (("actuator_gear", 0),),
}


class WarpLocomotion(BatchedContextualEnv):
    """``num_envs`` MuJoCo Warp worlds of a gymnasium v5 locomotion env, one context per world.

    Shapes for ``N = num_envs``: observations ``{"observation": (N, obs_dim), "context": (N,
    k)}`` float32, rewards ``(N,)`` float32, ``terminated`` / ``truncated`` ``(N,)`` bool, all on
    ``device``; the base class :class:`~envs.batched.BatchedContextualEnv` documents ``reset``,
    ``step`` and auto-reset.

    :param env_id: one of :data:`FAMILIES` (``"HalfCheetah-v5"``, ``"Hopper-v5"``,
        ``"Walker2d-v5"``, ``"Ant-v5"``).
    :param num_envs: worlds stepped together.
    :param features: context features, names from :data:`envs.locomotion.PHYSICS_FEATURES` and
        :data:`envs.locomotion.TASK_FEATURES`, in observation order (as the CPU env's).
    :param split: the split contexts are drawn from at every (auto-)reset.
    :param device: torch device; MuJoCo Warp runs on the matching Warp device (``"cpu"`` works,
        slowly, after a long first kernel compile).
    :param seed: seeds context and initial-state draws.
    :param max_episode_steps: truncation horizon (the gymnasium spec's, 1000, when ``None``).
    :param nconmax: contacts per world for MuJoCo Warp (its heuristic when ``None``).
    :param njmax: constraint rows per world for MuJoCo Warp (its heuristic when ``None``).
    :param kwargs: passed to ``gym.make`` (``xml_file``, ``ctrl_cost_weight``...), as for the CPU
        env; the env's reward weights, ranges and observation options are read back from it.
    :raises ValueError: for an env id not in :data:`FAMILIES` or an unknown feature.
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
        nconmax: int | None = None,
        njmax: int | None = None,
        **kwargs: Any,
    ) -> None:
        if env_id not in FAMILIES:
            why = (
                " (Humanoid-v5 uses MuJoCo's PGS solver, which MuJoCo Warp does not implement)"
                if env_id.startswith("Humanoid")
                else ""
            )
            raise ValueError(f"WarpLocomotion supports {list(FAMILIES)}, not {env_id!r}{why}")
        catalogue = PHYSICS_FEATURES | TASK_FEATURES
        unknown = [f for f in features if f not in catalogue]
        if unknown:
            raise ValueError(
                f"unknown locomotion features {unknown}; choose from {list(catalogue)}"
            )
        family = FAMILIES[env_id]
        if "direction" in features and not family.velocity_from_body:
            raise ValueError(f"'direction' needs an env that reports y_velocity, not {env_id}")
        env = gym.make(env_id, **kwargs)
        if max_episode_steps is None:
            max_episode_steps = env.spec.max_episode_steps
        space = ContextSpace([catalogue[f] for f in features])
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
        physics = [f for f in features if f in _PHYSICS_FIELDS]
        fields = [field for f in physics for field, _ in _PHYSICS_FIELDS[f]]
        self._derived = "mass_scale" in physics or "actuator_scale" in physics
        self.worlds = WarpWorlds(
            self.mj_model,
            num_envs,
            self.device,
            batched=fields,
            derived=self._derived,
            substeps=self.frame_skip,
            rne_postconstraint=family.contact_cost,
            nconmax=nconmax,
            njmax=njmax,
        )
        m = self.mj_model
        nominal = {
            "gravity": m.opt.gravity,
            "body_mass": m.body_mass,
            "body_inertia": m.body_inertia,
            "geom_friction": m.geom_friction,
            "dof_damping": m.dof_damping,
            "actuator_gear": m.actuator_gear,
        }
        self._nominal = {
            f: torch.tensor(nominal[f], dtype=torch.float64, device=self.device) for f in fields
        }
        self._main_xy = torch.zeros(num_envs, 2, device=self.device)

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
        self._cfrc_in_obs = bool(getattr(env, "_include_cfrc_ext_in_observation", False))
        main = getattr(env, "_main_body", 1)
        self._main_body = main if isinstance(main, int) else env.model.body(main).id

    def reset(self, seed: int | None = None, contexts: torch.Tensor | None = None) -> Obs:
        """Reset every world; ``contexts`` ``(N, k)`` raw values pins them (else drawn).

        :raises ValueError: a pinned value outside its feature's bounds (naming both).
        """
        if contexts is not None:
            self._check_bounds(torch.as_tensor(contexts))
        return super().reset(seed, contexts)

    def _check_bounds(self, contexts: torch.Tensor) -> None:
        if contexts.ndim != 2 or contexts.shape[1] != len(self.context_space):
            return  # the base class explains the expected shape
        for i, f in enumerate(self.context_space.features):
            lo, hi = (torch.tensor(b, dtype=contexts.dtype) for b in f.bounds)
            column = contexts[:, i].cpu()
            bad = (column < lo) | (column > hi)
            if bool(bad.any()):
                value = float(column[bad][0])
                raise ValueError(
                    f"context feature {f.name!r}={value} is outside its allowed range "
                    f"[{f.bounds[0]}, {f.bounds[1]}]"
                )

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Set every world's state, like gymnasium's ``MujocoEnv.set_state`` (which runs
        ``mj_forward``): ``qpos`` ``(N, nq)``, ``qvel`` ``(N, nv)``. Contexts are kept. Unlike
        ``mj_forward``, MuJoCo Warp's forward also refreshes Ant's contact forces ``cfrc_ext``."""
        w = self.worlds
        w.qpos.copy_(torch.as_tensor(qpos, device=self.device))
        w.qvel.copy_(torch.as_tensor(qvel, device=self.device))
        w.forward()
        self._main_xy.copy_(w.xpos[:, self._main_body, :2])

    # -- BatchedContextualEnv -------------------------------------------------------------------

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        self._apply_physics(mask)
        w, n, s = self.worlds, int(mask.sum()), self._noise_scale
        qpos = self._init_qpos + s * self._uniform(n, w.qpos.shape[1])
        if self.family.normal_qvel_noise:
            noise = torch.randn(n, w.qvel.shape[1], generator=self.generator, dtype=torch.float64)
            qvel = self._init_qvel + s * noise
        else:
            qvel = self._init_qvel + s * self._uniform(n, w.qvel.shape[1])
        w.qpos[mask] = qpos.to(self.device, torch.float32)
        w.qvel[mask] = qvel.to(self.device, torch.float32)
        # what mj_resetData clears that the next step reads
        w.qacc_warmstart[mask] = 0.0
        w.ctrl[mask] = 0.0
        w.time[mask] = 0.0
        w.cfrc_ext[mask] = 0.0
        if self.family.velocity_from_body:
            w.kinematics()
            self._main_xy[mask] = w.xpos[mask, self._main_body, :2]

    def _uniform(self, n: int, dim: int) -> torch.Tensor:
        """``(n, dim)`` float64 U(-1, 1) from ``self.generator`` (on the host, like the contexts:
        the generator is a CPU one)."""
        return torch.rand(n, dim, generator=self.generator, dtype=torch.float64) * 2 - 1

    def _apply_physics(self, mask: torch.Tensor) -> None:
        """Write the contexts of the worlds in ``mask`` into their model fields, scaling the
        nominal values as :meth:`ContextualLocomotion.apply_context` does."""
        if not self._nominal:
            return
        for feature, targets in _PHYSICS_FIELDS.items():
            if feature not in self._column:
                continue
            values = self.contexts[mask, self._column[feature]].double()
            factor = values / PHYSICS_FEATURES[feature].nominal
            for field, column in targets:
                nominal = self._nominal[field]
                scaled = nominal.expand(len(factor), *nominal.shape).clone()
                if column is None:
                    scaled *= factor.view(-1, *[1] * nominal.dim())
                else:
                    scaled[..., column] *= factor.view(-1, *[1] * (nominal.dim() - 1))
                view = self.worlds.field(field)
                view[mask] = scaled.to(view.dtype)
        if self._derived:
            self.worlds.update_derived()

    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, actions = self.worlds, actions.float()
        w.ctrl.copy_(actions)
        if self.family.velocity_from_body:
            # gymnasium reads data.xpos, which mj_step leaves one substep stale: so does mjw.step
            before = self._main_xy.clone()
            w.step()
            self._main_xy.copy_(w.xpos[:, self._main_body, :2])
            velocity = (self._main_xy - before) / self.dt
        else:
            before = w.qpos[:, :1].clone()
            w.step()
            velocity = (w.qpos[:, :1] - before) / self.dt
        reward = self._forward_reward(velocity) - self._ctrl_weight * actions.square().sum(-1)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        if self.family.health is not None:
            healthy = self._healthy()
            reward = reward + self._healthy_reward * healthy
            if self._terminate:
                terminated = ~healthy
        if self.family.contact_cost:
            forces = w.cfrc_ext.clamp(*self._force_range)
            reward = reward - self._contact_weight * forces.square().sum((1, 2))
        return reward, terminated

    def _forward_reward(self, velocity: torch.Tensor) -> torch.Tensor:
        """``(N,)``: the env's forward reward, or the task reward that replaces it."""
        vx = velocity[:, 0]
        if "target_velocity" in self._column:
            target = self.contexts[:, self._column["target_velocity"]]
            return -self._forward_weight * (vx - target).abs()
        if "direction" in self._column:
            a = self.contexts[:, self._column["direction"]]
            return self._forward_weight * (vx * torch.cos(a) + velocity[:, 1] * torch.sin(a))
        return self._forward_weight * vx

    def _healthy(self) -> torch.Tensor:
        """``(N,)`` bool: gymnasium's ``is_healthy`` of each world."""
        qpos, qvel = self.worlds.qpos, self.worlds.qvel
        health = self.family.health
        if health == "ant":
            finite = torch.isfinite(qpos).all(-1) & torch.isfinite(qvel).all(-1)
            lo, hi = self._z_range
            return finite & (qpos[:, 2] >= lo) & (qpos[:, 2] <= hi)
        (zlo, zhi), (alo, ahi) = self._z_range, self._angle_range
        z, angle = qpos[:, 1], qpos[:, 2]
        healthy = (z > zlo) & (z < zhi) & (angle > alo) & (angle < ahi)
        if health == "hopper":
            lo, hi = self._state_range
            state = torch.cat([qpos[:, 2:], qvel], -1)
            healthy &= ((state > lo) & (state < hi)).all(-1)
        return healthy

    def _observe(self) -> torch.Tensor:
        w = self.worlds
        clip = self.family.qvel_clip
        qvel = w.qvel if clip is None else w.qvel.clamp(-clip, clip)
        parts = [w.qpos[:, self._skip :], qvel]
        if self._cfrc_in_obs:
            parts.append(w.cfrc_ext[:, 1:].clamp(*self._force_range).flatten(1))
        return torch.cat(parts, -1)
