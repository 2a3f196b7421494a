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
(:data:`envs.batched.warp.DERIVED_FIELDS`) is recomputed on the device by MuJoCo Warp's
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
from typing import Any

import torch

from envs.batched.warp import WarpWorlds
from envs.locomotion.batched import BatchedLocomotion
from envs.locomotion.contextual import PHYSICS_FEATURES

#: the env ids MuJoCo Warp runs
WARP_FAMILIES = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5")


class WarpLocomotion(BatchedLocomotion):
    """``num_envs`` MuJoCo Warp worlds of a gymnasium v5 locomotion env, one context per world.

    Shapes for ``N = num_envs``: observations ``{"observation": (N, obs_dim), "context": (N,
    k)}`` float32, rewards ``(N,)`` float32, ``terminated`` / ``truncated`` ``(N,)`` bool, all on
    ``device``; the base class :class:`~envs.batched.BatchedContextualEnv` documents ``reset``,
    ``step`` and auto-reset.

    :param env_id: one of :data:`WARP_FAMILIES` (``"HalfCheetah-v5"``, ``"Hopper-v5"``,
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
    :raises ValueError: for an env id not in :data:`WARP_FAMILIES` or an unknown feature.
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
        super().__init__(
            env_id,
            num_envs,
            features,
            split,
            device,
            seed,
            max_episode_steps,
            families=WARP_FAMILIES,
            unsupported="Humanoid-v5 uses MuJoCo's PGS solver, which MuJoCo Warp does not "
            "implement; its batched CPU twin hyperrl/BatchedHumanoid-v0 runs it",
            **kwargs,
        )
        fields = self.physics_table.fields(self.physics)
        self._derived = "mass_scale" in self.physics or "actuator_scale" in self.physics
        self.worlds = WarpWorlds(
            self.mj_model,
            num_envs,
            self.device,
            batched=fields,
            derived=self._derived,
            substeps=self.frame_skip,
            rne_postconstraint=self.family.contact is not None,
            nconmax=nconmax,
            njmax=njmax,
        )
        self._nominal = {
            name: torch.tensor(self.physics_table.nominal[name], device=self.device)
            for name in fields
        }
        self._main_xy = torch.zeros(num_envs, 2, device=self.device)

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
        w = self.worlds
        qpos, qvel = self._initial_state(int(mask.sum()))
        w.qpos[mask] = qpos.to(self.device, torch.float32)
        w.qvel[mask] = qvel.to(self.device, torch.float32)
        # what mj_resetData clears that the next step reads
        w.qacc_warmstart[mask] = 0.0
        w.ctrl[mask] = 0.0
        w.time[mask] = 0.0
        w.cfrc_ext[mask] = 0.0
        if self.family.velocity == "body":
            w.kinematics()
            self._main_xy[mask] = w.xpos[mask, self._main_body, :2]

    def _apply_physics(self, mask: torch.Tensor) -> None:
        """Write the contexts of the worlds in ``mask`` into their model fields, scaling the
        nominal values as :meth:`ContextualLocomotion.apply_context` does."""
        values = self.context_values(mask, self.physics)
        for field, scaled in self.physics_table.batched(self._nominal, values).items():
            view = self.worlds.field(field)
            view[mask] = scaled.to(view.dtype)
        if self._derived:
            self.worlds.update_derived()

    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, actions = self.worlds, actions.float()
        w.ctrl.copy_(actions)
        if self.family.velocity == "body":
            # gymnasium reads data.xpos, which mj_step leaves one substep stale: so does mjw.step
            before = self._main_xy.clone()
            w.step()
            self._main_xy.copy_(w.xpos[:, self._main_body, :2])
            velocity = (self._main_xy - before) / self.dt
        else:
            before = w.qpos[:, :1].clone()
            w.step()
            velocity = (w.qpos[:, :1] - before) / self.dt
        cfrc_ext = w.cfrc_ext if self.family.contact is not None else None
        return self._reward(velocity, actions, w.qpos, w.qvel, cfrc_ext)

    def _observe(self) -> torch.Tensor:
        w = self.worlds
        return self._observation(w.qpos, w.qvel, {"cfrc_ext": w.cfrc_ext})
