"""Batched contextual locomotion on CPU threads (MuJoCo's ``mujoco.rollout``): every gymnasium
v5 locomotion env, Humanoid included, at batched speed without a GPU.

:class:`NativeLocomotion` steps ``num_envs`` worlds with :class:`envs.batched.native.NativeWorlds`
(one ``MjModel`` per world, so each carries its own context) and computes observations, rewards
and terminations vectorised in torch from the state arrays, through the same
:class:`~envs.locomotion.batched.BatchedLocomotion` code as the MuJoCo Warp envs. It is the same
engine in float64 as the CPU twin :class:`envs.locomotion.ContextualLocomotion`, contexts are
written into each world's model by the same :class:`envs.physics.PhysicsTable` followed by
``mj_setConst``, so the two agree to the constraint solver's tolerance (see
``tests/envs/test_native_locomotion.py``). What differs: the initial-state noise has the same
distribution but comes from ``self.generator`` (torch), and the solver's warm start is estimated
(:mod:`envs.batched.native`).

Per step, the only Python loops over worlds are for worlds that reset (their contexts and
derived masses, ``mj_setConst``) and, for Ant and Humanoid, the forward pass that recomputes the
contact forces (and Humanoid's ``cinert``, ``cvel``, ``qfrc_actuator``) they observe and pay for;
both run few MuJoCo calls per world beside the physics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from envs.batched.native import NativeWorlds
from envs.locomotion.batched import BatchedLocomotion
from envs.locomotion.contextual import PHYSICS_FEATURES


class NativeLocomotion(BatchedLocomotion):
    """``num_envs`` MuJoCo worlds of a gymnasium v5 locomotion env on CPU threads, one context per
    world.

    Shapes for ``N = num_envs``: observations ``{"observation": (N, obs_dim), "context": (N,
    k)}`` float32, rewards ``(N,)`` float32, ``terminated`` / ``truncated`` ``(N,)`` bool, all on
    ``device`` (computed on the CPU, then moved); the base class
    :class:`~envs.batched.BatchedContextualEnv` documents ``reset``, ``step`` and auto-reset.

    :param env_id: one of :data:`envs.locomotion.batched.FAMILIES` (HalfCheetah, Hopper,
        Walker2d, Ant, Humanoid; ``"-v5"``).
    :param num_envs: worlds stepped together.
    :param features: context features, names from :data:`envs.locomotion.PHYSICS_FEATURES` and
        :data:`envs.locomotion.TASK_FEATURES`, in observation order (as the CPU env's).
    :param split: the split contexts are drawn from at every (auto-)reset.
    :param device: torch device of what is returned (the physics runs on the CPU).
    :param seed: seeds context and initial-state draws.
    :param max_episode_steps: truncation horizon (the gymnasium spec's, 1000, when ``None``).
    :param nthread: threads stepping the worlds (the cores of this process when ``None``).
    :param kwargs: passed to ``gym.make`` (``xml_file``, ``ctrl_cost_weight``...), as for the CPU
        env; the env's reward weights, ranges and observation options are read back from it.
    :raises ValueError: for an unknown env id or feature.
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
        nthread: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            env_id, num_envs, features, split, device, seed, max_episode_steps, **kwargs
        )
        family = self.family
        extras = []
        if family.contact is not None:
            extras.append("cfrc_ext")
        if family.com_observations:
            extras += ["cinert", "cvel", "qfrc_actuator"]
        if family.velocity != "qpos":
            extras.append("xpos" if family.velocity == "body" else "xipos")
        self.worlds = NativeWorlds(self.mj_model, num_envs, self.frame_skip, nthread, extras)
        #: the x/y position the next step's velocity is measured from (gymnasium's stale one)
        self._xy = torch.zeros(num_envs, 2, dtype=torch.float64)
        mass = torch.as_tensor(self.mj_model.body_mass, dtype=torch.float64)
        self._mass_share = mass / mass.sum()  # mass_center weights (a mass scale cancels out)

    def close(self) -> None:
        """Stop the worlds' threads."""
        self.worlds.close()

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Set every world's state like gymnasium's ``MujocoEnv.set_state`` (which runs
        ``mj_forward``): ``qpos`` ``(N, nq)``, ``qvel`` ``(N, nv)``; contexts and warm starts
        are kept."""
        w = self.worlds
        w.qpos.copy_(torch.as_tensor(qpos, dtype=torch.float64))
        w.qvel.copy_(torch.as_tensor(qvel, dtype=torch.float64))
        w.forward(w.state, post_constraint=False)
        self._xy[:] = self._position(w.qpos)

    # -- BatchedContextualEnv -------------------------------------------------------------------

    supports_state = True

    def _physics_state(self) -> dict[str, torch.Tensor]:
        w = self.worlds
        arrays = {
            "state": w.state,
            "trajectory": w.trajectory,
            "previous": w._previous,
            "control": w.control,
            "warmstart": w.warmstart,
        }
        return {
            **{k: torch.from_numpy(v.copy()) for k, v in arrays.items()},
            **{f"extra.{k}": v.clone() for k, v in w.extra.items()},
            "xy": self._xy.clone(),
        }

    def _load_physics_state(self, state: dict[str, torch.Tensor]) -> None:
        w = self.worlds
        for name, target in (("state", w.state), ("trajectory", w.trajectory),
                             ("previous", w._previous), ("control", w.control),
                             ("warmstart", w.warmstart)):  # fmt: skip
            target[...] = state[name].numpy()  # in place: qpos and qvel view w.state
        for k, v in w.extra.items():
            v.copy_(state[f"extra.{k}"])
        self._xy = state["xy"].clone()
        # each world's model from its context, as at its reset
        self._apply_contexts(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))

    supports_context_change = True

    def _apply_contexts(self, mask: torch.Tensor) -> None:
        """Each masked world's physical features into its model, and what ``mj_setConst``
        derives from them (task descriptors are read by the reward at every step)."""
        if not self.physics:
            return
        worlds = mask.cpu().nonzero().flatten().numpy()
        names, w = self.context_names, self.worlds
        contexts = self.contexts[mask].cpu().double().numpy()
        for i, context in zip(worlds, contexts, strict=True):
            self.physics_table.apply(w.models[i], dict(zip(names, context, strict=True)))
            w.set_const(i)

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        worlds = mask.cpu().nonzero().flatten().numpy()
        w = self.worlds
        self._apply_contexts(mask)
        qpos, qvel = self._initial_state(len(worlds))
        w.set_state(worlds, qpos.numpy(), qvel.numpy())
        w.forward(w.state, worlds, post_constraint=False)  # what set_state's mj_forward leaves
        self._xy[worlds] = self._position(w.qpos[worlds], worlds)

    def _position(self, qpos: torch.Tensor, worlds: np.ndarray | None = None) -> torch.Tensor:
        """``(n, 2)`` float64: the x/y position the env's velocity differentiates, from the
        worlds' ``qpos`` (x only) or from :attr:`NativeWorlds.extra` (the main body's ``xpos``,
        or the mass centre of ``xipos``) of the worlds of index array ``worlds`` (all when
        ``None``)."""
        velocity = self.family.velocity
        if velocity == "qpos":
            return torch.nn.functional.pad(qpos[:, :1], (0, 1))
        extra = self.worlds.extra
        if velocity == "body":
            xpos = extra["xpos"] if worlds is None else extra["xpos"][worlds]
            return xpos[:, self._main_body, :2]
        xipos = extra["xipos"] if worlds is None else extra["xipos"][worlds]
        return torch.einsum("b,nbj->nj", self._mass_share, xipos[..., :2])

    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.worlds
        actions = actions.detach().to("cpu", torch.float64)
        w.step(actions.numpy())
        w.forward(w.before_last_substep())  # contact forces, positions... where mj_step leaves them
        after = self._position(w.qpos)
        velocity = (after - self._xy) / self.dt
        self._xy = after.clone()  # after may view arrays the next step overwrites
        cfrc_ext = w.extra.get("cfrc_ext")
        reward, terminated = self._reward(velocity, actions, w.qpos, w.qvel, cfrc_ext)
        return reward.to(self.device, torch.float32), terminated.to(self.device)

    def _observe(self) -> torch.Tensor:
        w = self.worlds
        return self._observation(w.qpos, w.qvel, w.extra).to(self.device, torch.float32)
