"""Tiny contextual envs for policy tests: the best action is a function of the context, which
the observation alone does not reveal."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from envs.batched import BatchedContextualEnv


class ContextualTarget(gym.Env):
    """Reach the context: reward ``-(a - c)^2`` with ``c ~ U(-0.8, 0.8)`` drawn per episode.

    Continuous (``Box(1)``) actions, or with ``discrete=True`` two actions rewarded 1 when they
    match the sign of ``c``. The observation part is a noisy constant; the context rides in the
    ``"context"`` key and in ``info["context"]``.
    """

    def __init__(self, episode_length: int = 4, discrete: bool = False):
        self.episode_length, self.discrete = episode_length, discrete
        box = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Dict(
            {"observation": spaces.Box(-1, 1, (2,), np.float32), "context": box}
        )
        self.action_space = spaces.Discrete(2) if discrete else box
        self.c = np.zeros(1, np.float32)

    def _obs(self) -> dict:
        noise = self.np_random.normal(0, 0.1, 2).astype(np.float32).clip(-1, 1)
        return {"observation": noise, "context": self.c.copy()}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "context" in options:
            self.c = np.array([options["context"]], np.float32)
        else:
            self.c = self.np_random.uniform(-0.8, 0.8, 1).astype(np.float32)
        self.t = 0
        return self._obs(), {"context": {"c": float(self.c[0])}}

    def step(self, action):
        self.t += 1
        if self.discrete:
            reward = float(int(action) == int(self.c[0] > 0))
        else:
            reward = -float((np.clip(action, -1, 1)[0] - self.c[0]) ** 2)
        truncated = self.t >= self.episode_length
        return self._obs(), reward, False, truncated, {"context": {"c": float(self.c[0])}}


def obs_with_context(c: float, n: int = 1) -> dict:
    """A batch of ``n`` observations with context ``c`` (zero noise)."""
    return {
        "observation": np.zeros((n, 2), np.float32),
        "context": np.full((n, 1), c, np.float32),
    }


class GoalTarget(gym.Env):
    """A 1-D goal-conditioned task for HER: move a point to ``desired_goal`` (sparse reward
    ``-1`` until within 0.1). Keys follow gymnasium-robotics: ``observation``,
    ``achieved_goal``, ``desired_goal``."""

    def __init__(self, episode_length: int = 10):
        self.episode_length = episode_length
        box = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Dict(
            {"observation": box, "achieved_goal": box, "desired_goal": box}
        )
        self.action_space = box

    def _obs(self) -> dict:
        return {
            "observation": self.pos.copy(),
            "achieved_goal": self.pos.copy(),
            "desired_goal": self.goal.copy(),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = np.zeros(1, np.float32)
        self.goal = self.np_random.uniform(-0.9, 0.9, 1).astype(np.float32)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.pos = np.clip(self.pos + 0.25 * np.clip(action, -1, 1), -1, 1).astype(np.float32)
        reward = float(self.compute_reward(self.pos, self.goal, {}))
        success = reward == 0.0
        return self._obs(), reward, False, self.t >= self.episode_length, {"is_success": success}

    def compute_reward(self, achieved_goal, desired_goal, info):
        distance = np.abs(np.asarray(achieved_goal) - np.asarray(desired_goal)).sum(-1)
        return -(distance > 0.1).astype(np.float32)


class BatchedGoalPoint(BatchedContextualEnv):
    """A batched 2-D goal task for HER: move a point from the origin to a goal drawn in
    ``[-1, 1]^2`` per episode, ``0.1 * action`` per step, ``episode_length`` steps; sparse reward
    ``-1`` until within ``threshold``, then 0. Random actions almost never reach the goal, so
    without relabelling a learner sees no reward at all."""

    def __init__(self, num_envs: int, episode_length: int = 20, threshold: float = 0.1, seed=0):
        super().__init__(num_envs, None, "train", episode_length, "cpu", seed)
        box = spaces.Box(-1.5, 1.5, (2,), np.float32)
        self.observation_space = spaces.Dict(
            {"observation": box, "achieved_goal": box, "desired_goal": box}
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.threshold = threshold
        self.pos, self.goal = torch.zeros(num_envs, 2), torch.zeros(num_envs, 2)

    def compute_reward(self, achieved_goal, desired_goal):
        distance = torch.linalg.vector_norm(achieved_goal - desired_goal, dim=-1)
        return -(distance > self.threshold).float()

    def _reset_worlds(self, mask):
        n = int(mask.sum())
        self.pos[mask] = 0.0
        self.goal[mask] = torch.rand(n, 2, generator=self.generator) * 2 - 1

    def _step_worlds(self, actions):
        self.pos = (self.pos + 0.1 * actions).clamp(-1.5, 1.5)
        reward = self.compute_reward(self.pos, self.goal)
        self._success = (reward == 0).float()
        return reward, torch.zeros(self.num_envs, dtype=torch.bool)

    def _step_info(self):
        return {"is_success": self._success}

    def _observe(self):
        return self.pos.clone()

    def _obs(self):
        return {
            "observation": self.pos.clone(),
            "achieved_goal": self.pos.clone(),
            "desired_goal": self.goal.clone(),
        }


class BatchedDrift(BatchedContextualEnv):
    """A batched 1-D system whose context is a hidden gain: ``x' = x + 0.1 * gain * action``,
    ``episode_length`` steps from ``x = 0``, reward ``-|x|``. The gain shows in any transition
    with a non-zero action (``(x' - x) / (0.1 a)``) and nowhere else: what an adaptation module
    must learn to read."""

    def __init__(self, num_envs: int, episode_length: int = 20, seed=0):
        from envs.context import ContextSpace, scaled_feature

        space = ContextSpace([scaled_feature("gain", 1.0)])
        super().__init__(num_envs, space, "train", episode_length, "cpu", seed)
        self.observation_space = spaces.Dict(
            {
                "observation": spaces.Box(-np.inf, np.inf, (1,), np.float32),
                "context": self._context_box(),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x = torch.zeros(num_envs, 1)

    def _reset_worlds(self, mask):
        self.x[mask] = 0.0

    def _step_worlds(self, actions):
        self.x = self.x + 0.1 * self.contexts[:, :1] * actions
        return -self.x.abs()[:, 0], torch.zeros(self.num_envs, dtype=torch.bool)

    def _observe(self):
        return self.x.clone()


class BatchedCue(BatchedContextualEnv):
    """A batched memory task: a cue of ±1 drawn per episode shows in the first observation only
    (later ones show 0), and every step pays ``-|action - cue|``. A feed-forward policy can match
    the cue on the first step alone (about ``-(episode_length - 1)`` per episode at best); a
    policy with memory can match it on every step (0)."""

    def __init__(self, num_envs: int, episode_length: int = 8, seed=0):
        super().__init__(num_envs, None, "train", episode_length, "cpu", seed)
        self.observation_space = spaces.Dict(
            {"observation": spaces.Box(-1.0, 1.0, (2,), np.float32)}
        )
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.cue, self.first = torch.zeros(num_envs, 1), torch.ones(num_envs, 1)

    def _reset_worlds(self, mask):
        n = int(mask.sum())
        self.cue[mask] = torch.randint(0, 2, (n, 1), generator=self.generator).float() * 2 - 1
        self.first[mask] = 1.0

    def _step_worlds(self, actions):
        reward = -(actions.clamp(-1, 1) - self.cue).abs()[:, 0]
        self.first = torch.zeros_like(self.first)
        return reward, torch.zeros(self.num_envs, dtype=torch.bool)

    def _observe(self):
        return torch.cat([self.cue * self.first, self.first], dim=-1)

    def _obs(self):
        return {"observation": self._observe()}
