"""Batched contextual Fetch tasks on CPU threads (MuJoCo's ``mujoco.rollout``): Reach, Push,
Slide and PickAndPlace at batched speed without a GPU, and the multi-task suite over the object
tasks (:class:`NativeFetchMultiTask`).

:class:`NativeFetch` steps ``num_envs`` worlds of gymnasium-robotics' Fetch robot with
:class:`envs.batched.native.NativeWorlds`, the mocap target (and PickAndPlace's finger controls)
passed through the rollout's control spec, and computes inputs, observations, rewards and task
draws in torch through :class:`envs.manipulation.batched.BatchedFetch`, the code the MuJoCo Warp
envs use. It is the same engine in float64 as the CPU twin: the object's physics context is
written into each world's model by the twin's own
:func:`envs.manipulation.contextual.scale_fetch_model`.

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

from envs.batched import BatchedContextualEnv, Obs
from envs.batched.native import NativeWorlds, state_offset
from envs.manipulation.batched import BatchedFetch
from envs.manipulation.contextual import (
    FETCH_FEATURES,
    REACH_FEATURES,
    ContextualFetch,
    ContextualFetchReach,
    scale_fetch_model,
)
from envs.manipulation.multitask import FetchMultiTask

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
            names = REACH_FEATURES if features is None else features
            cpu = ContextualFetchReach(tuple(names), **kwargs)
        else:
            names = FETCH_FEATURES if features is None else features
            cpu = ContextualFetch(env_id, tuple(names), **kwargs)
        super().__init__(cpu, num_envs, split, device, seed, max_episode_steps, torch.float64)
        if self.has_object:
            #: what writes a context into a world's model, and the mocap weld as built
            self.physics_table, self.eq_data = cpu.physics, cpu.eq_data
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
                scale_fetch_model(
                    w.models[i], self._scratch, self.physics_table, self.eq_data, context
                )
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


class NativeFetchMultiTask(BatchedContextualEnv):
    """The batched twin of :class:`envs.manipulation.multitask.FetchMultiTask`: Push, Slide and
    PickAndPlace worlds side by side, each observing its task's descriptor as its context.

    The CPU suite draws a task per episode; here each world keeps one task, the split's tasks
    taking turns over the worlds (world ``i`` runs ``pool[i % len(pool)]``, ``pool`` the train or
    the held-out tasks), so every vector step holds the tasks in equal shares. The worlds of a task
    are a :class:`NativeFetch` of it with nominal physics; its reward, goals and draws are that
    task's.

    Shapes for ``N = num_envs``: observations ``{"observation": (N, 25), "achieved_goal": (N, 3),
    "desired_goal": (N, 3), "context": (N, d)}`` float32 (``d``: the descriptor's width), rewards
    ``(N,)``, ``terminated`` (never) and ``truncated`` ``(N,)``, ``info["is_success"]`` ``(N,)``,
    ``info["task"]``: ``(N,)`` the index of each world's task in :attr:`all_tasks`.

    :param num_envs: worlds stepped together (at least one per task of the split).
    :param tasks: the train tasks; ``held_out``: the tasks of split ``"held_out"``.
    :param descriptor: ``"onehot"`` or ``"text"``, as the CPU suite's.
    :param split: ``"train"`` or ``"held_out"``.
    :param device: torch device of what is returned.
    :param seed: seeds the goal and object draws.
    :param max_episode_steps: truncation horizon (50 when ``None``).
    :param nthread: threads stepping each task's worlds.
    """

    def __init__(
        self,
        num_envs: int,
        tasks: Sequence[str] = ("Push", "PickAndPlace"),
        held_out: Sequence[str] = ("Slide",),
        descriptor: str = "onehot",
        split: str = "train",
        device: str | torch.device = "cpu",
        seed: int | None = None,
        max_episode_steps: int | None = None,
        nthread: int | None = None,
    ) -> None:
        suite = FetchMultiTask(tasks, held_out, descriptor, split)
        pool = suite.tasks if split == "train" else suite.held_out
        if num_envs < len(pool):
            raise ValueError(f"num_envs ({num_envs}) must give each task of {pool} a world")
        parts = []
        for i, task in enumerate(pool):
            part = NativeFetch(
                f"Fetch{task}-v4",
                len(range(i, num_envs, len(pool))),
                seed=None if seed is None else seed + 1000 * i,
                max_episode_steps=max_episode_steps,
                nthread=nthread,
            )
            # nominal physics in every world (the suite's CPU envs have no physics context)
            nominal = part.context_space.nominal
            part.contexts[:] = torch.tensor([nominal[n] for n in part.context_names])
            parts.append(part)
        horizon = parts[0].max_episode_steps
        # no context space: the context is the task's descriptor, and the split the task pool
        super().__init__(num_envs, None, split, horizon, device, seed)
        self.tasks, self.held_out = suite.tasks, suite.held_out
        self.all_tasks = suite.all_tasks
        self.observation_space, self.action_space = suite.observation_space, suite.action_space
        self.parts = parts
        #: ``(N,)`` world i's place in the order of :attr:`parts`' worlds
        order = torch.cat([torch.arange(i, num_envs, len(pool)) for i in range(len(pool))])
        self._order = order.to(self.device)
        self._inverse = torch.argsort(order).to(self.device)
        task_index = torch.tensor([self.all_tasks.index(t) for t in pool])
        #: ``(N,)`` each world's task, an index into :attr:`all_tasks`
        self.task = task_index[torch.arange(num_envs) % len(pool)].to(self.device)
        table = torch.as_tensor(np.stack([suite.descriptors[t] for t in self.all_tasks]))
        self.descriptors = table[self.task.cpu()].to(self.device)  #: ``(N, d)``
        self.distance_threshold = parts[0].distance_threshold
        self._sizes = [part.num_envs for part in parts]
        suite.close()

    def close(self) -> None:
        """Stop every task's threads."""
        for part in self.parts:
            part.close()

    def compute_reward(
        self, achieved_goal: torch.Tensor, desired_goal: torch.Tensor
    ) -> torch.Tensor:
        """``(B,)`` what every task of the suite rewards (sparse: -1 beyond 5 cm of the goal)."""
        return self.parts[0].compute_reward(achieved_goal, desired_goal)

    def _split(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``values`` ``(N, ...)`` in world order -> one chunk per task, in its worlds' order."""
        return torch.split(values[self._order], self._sizes)

    def _join(self, chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([c.to(self.device) for c in chunks])[self._inverse]

    @property
    def goals(self) -> torch.Tensor:
        """``(N, 3)`` every world's goal."""
        return self._join([part.goals for part in self.parts])

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        for part, worlds in zip(self.parts, self._split(mask), strict=True):
            if bool(worlds.any()):
                part._reset_worlds(worlds.to(part.device))

    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        results = [
            part._step_worlds(chunk)
            for part, chunk in zip(self.parts, self._split(actions), strict=True)
        ]
        reward = self._join([r for r, _ in results])
        return reward, self._join([t for _, t in results])

    def _step_info(self) -> dict[str, torch.Tensor]:
        success = self._join([part._step_info()["is_success"] for part in self.parts])
        return {"is_success": success, "task": self.task}

    def _observe(self) -> torch.Tensor:
        return self._join([part._observe() for part in self.parts])

    def _obs(self) -> Obs:
        return {
            "observation": self._observe(),
            "achieved_goal": self._join([part._achieved().float() for part in self.parts]),
            "desired_goal": self.goals.float(),
            "context": self.descriptors.clone(),
        }
