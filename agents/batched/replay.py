"""Replay buffers whose rows are device tensors, for :class:`agents.batched.sac.DeviceSAC`.

:class:`DeviceReplay` is a plain circular buffer; :class:`HerReplay` adds hindsight goal
relabelling for goal-reaching batched envs (the Fetch tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import gymnasium as gym
import torch

from envs.batched import Obs


class ReplaySample(NamedTuple):
    """A batch of ``B`` transitions: ``observations``/``next_observations`` dicts of ``(B, ...)``,
    ``actions (B, act_dim)`` in [-1, 1], ``rewards (B, 1)``, ``dones (B, 1)`` (1.0 where the
    episode terminated; truncations bootstrap)."""

    observations: Obs
    actions: torch.Tensor
    next_observations: Obs
    dones: torch.Tensor
    rewards: torch.Tensor


class DeviceReplay:
    """A circular buffer of ``capacity`` transitions, every field a device tensor.

    :param capacity: rows kept; the oldest are overwritten first.
    :param observation_space: the single-world ``Dict`` space (one ``(capacity, *shape)`` tensor
        per key, for observations and next observations).
    :param action_dim: width of the stored (squashed) actions.
    :param device: where the rows live.
    """

    def __init__(
        self,
        capacity: int,
        observation_space: gym.spaces.Dict,
        action_dim: int,
        device: torch.device,
    ) -> None:
        self.capacity, self.device = capacity, torch.device(device)
        shapes = {k: space.shape for k, space in observation_space.spaces.items()}
        self.obs = {k: torch.zeros(capacity, *s, device=self.device) for k, s in shapes.items()}
        self.next_obs = {k: torch.zeros_like(v) for k, v in self.obs.items()}
        self.actions = torch.zeros(capacity, action_dim, device=self.device)
        self.rewards = torch.zeros(capacity, device=self.device)
        self.dones = torch.zeros(capacity, device=self.device)
        self.pos = 0  # next row to write
        self.size = 0  # rows filled

    def add(
        self,
        obs: Obs,
        next_obs: Obs,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        terminated: torch.Tensor,
    ) -> None:
        """Append ``N`` transitions: ``obs``/``next_obs`` dicts of ``(N, ...)`` (``next_obs``
        taken before any auto-reset, i.e. ``info["final_observation"]``), ``actions (N, act_dim)``
        in [-1, 1], ``rewards (N,)``, ``terminated (N,)`` bool. Past ``capacity`` it wraps."""
        n = actions.shape[0]
        if n > self.capacity:  # only the newest rows would survive; skip the rest
            obs = {k: v[-self.capacity :] for k, v in obs.items()}
            next_obs = {k: v[-self.capacity :] for k, v in next_obs.items()}
            actions, rewards = actions[-self.capacity :], rewards[-self.capacity :]
            terminated, n = terminated[-self.capacity :], self.capacity
        rows = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        for k in self.obs:
            self.obs[k][rows] = obs[k].to(self.obs[k].dtype)
            self.next_obs[k][rows] = next_obs[k].to(self.next_obs[k].dtype)
        self.actions[rows] = actions
        self.rewards[rows] = rewards.to(self.rewards.dtype)
        self.dones[rows] = terminated.to(self.dones.dtype)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ReplaySample:
        """``batch_size`` rows drawn uniformly (with replacement) from the filled ones; the
        generator must live on the buffer's device."""
        return self.rows(self.indices(batch_size, generator))

    def indices(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch_size,)`` row indices drawn uniformly (with replacement) from the filled
        rows."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty; collect before sampling")
        return torch.randint(self.size, (batch_size,), device=self.device, generator=generator)

    def rows(self, idx: torch.Tensor) -> ReplaySample:
        """The transitions at row indices ``idx`` ``(B,)``."""
        return ReplaySample(
            {k: v[idx] for k, v in self.obs.items()},
            self.actions[idx],
            {k: v[idx] for k, v in self.next_obs.items()},
            self.dones[idx, None],
            self.rewards[idx, None],
        )


#: :attr:`HerReplay.episode_end` of rows whose episode is still running
RUNNING = 2**62


class HerReplay(DeviceReplay):
    """A :class:`DeviceReplay` that relabels goals as it samples: hindsight experience replay
    (Andrychowicz et al., 2017) with the ``future`` strategy, as SB3's ``HerReplayBuffer``. In
    every batch a share ``n_sampled_goal / (n_sampled_goal + 1)`` of the transitions gets as its
    goal what was achieved at a random step of the same episode from this one on (its next
    observation's ``achieved_goal``), in ``observations`` and ``next_observations`` alike, and
    the reward the env's ``compute_reward`` gives for it; the rest keep their own.

    Every :meth:`add` writes one row per world, so world ``n``'s rows are those congruent to
    ``n`` modulo ``num_envs`` (the capacity is rounded down to a multiple of it) and an episode
    is a run of them. Each row keeps the vector step it was written at and, once its episode has
    ended, the step of the episode's last row; from an episode still running the future goals
    come from the rows stored so far. (SB3 samples finished episodes only.)

    :param capacity: rows kept (rounded down to a multiple of ``num_envs``).
    :param observation_space: the single-world ``Dict`` space, with ``achieved_goal`` and
        ``desired_goal``.
    :param action_dim: width of the stored actions.
    :param device: where the rows live.
    :param num_envs: the worlds whose transitions each :meth:`add` brings.
    :param compute_reward: ``(achieved (B, g), desired (B, g)) -> rewards (B,)``, the env's.
    :param n_sampled_goal: relabelled transitions per real one (SB3's name and default, 4).
    :raises ValueError: without goal keys, or for a capacity below ``num_envs``.
    """

    def __init__(
        self,
        capacity: int,
        observation_space: gym.spaces.Dict,
        action_dim: int,
        device: torch.device,
        num_envs: int,
        compute_reward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        n_sampled_goal: int = 4,
    ) -> None:
        missing = sorted({"achieved_goal", "desired_goal"} - set(observation_space.spaces))
        if missing:
            raise ValueError(
                f"HER relabels goals, so observations need 'achieved_goal' and 'desired_goal'; "
                f"this env has no {missing} (use a goal env such as BatchedFetchPush, or drop "
                "n_sampled_goal)"
            )
        if capacity < num_envs:
            raise ValueError(f"buffer_size ({capacity}) must hold one step of {num_envs} worlds")
        super().__init__(capacity // num_envs * num_envs, observation_space, action_dim, device)
        self.num_envs, self.blocks = num_envs, capacity // num_envs
        self.compute_reward = compute_reward
        self.her_ratio = n_sampled_goal / (n_sampled_goal + 1)
        long = {"dtype": torch.long, "device": self.device}
        self.written_at = torch.zeros(self.capacity, **long)  #: vector step of each row
        #: vector step of the last row of each row's episode (:data:`RUNNING` until it ends)
        self.episode_end = torch.full((self.capacity,), RUNNING, **long)
        self.episode_start = torch.zeros(num_envs, **long)  #: where each world's episode began
        self.steps = 0  #: vector steps added

    def add(
        self,
        obs: Obs,
        next_obs: Obs,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        terminated: torch.Tensor,
        ended: torch.Tensor | None = None,
    ) -> None:
        """Append one vector step, one row per world, as :meth:`DeviceReplay.add`; ``ended``
        ``(num_envs,)`` bool marks the worlds whose episode ended with it (terminated or
        truncated)."""
        if actions.shape[0] != self.num_envs or ended is None:
            raise ValueError(
                f"HerReplay.add takes one step of all {self.num_envs} worlds and where their "
                "episodes ended"
            )
        rows = self.pos + torch.arange(self.num_envs, device=self.device)
        super().add(obs, next_obs, actions, rewards, terminated)
        now = self.steps
        self.written_at[rows] = now
        self.episode_end[rows] = RUNNING
        if bool(ended.any()):
            worlds = ended.nonzero().flatten()
            # the episode's rows still stored (older ones were overwritten by newer steps)
            first = self.episode_start[worlds].clamp(min=now - self.blocks + 1)
            steps = first[:, None] + torch.arange(int((now - first).max()) + 1, device=self.device)
            stored = steps <= now
            episode_rows = (steps % self.blocks) * self.num_envs + worlds[:, None]
            self.episode_end[episode_rows[stored]] = now
            self.episode_start[worlds] = now + 1
        self.steps += 1

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ReplaySample:
        """``batch_size`` rows drawn uniformly, a share of them with hindsight goals (drawn from
        ``generator`` too)."""
        idx = self.indices(batch_size, generator)
        return self.relabel(self.rows(idx), idx, generator)

    def relabel(
        self, batch: ReplaySample, idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> ReplaySample:
        """``batch``, the rows at ``idx`` ``(B,)``, with hindsight goals for a share of them."""
        n = idx.shape[0]
        relabel = torch.rand(n, device=self.device, generator=generator) < self.her_ratio
        start = self.written_at[idx]
        end = self.episode_end[idx].clamp(max=self.steps - 1)
        span = (end - start + 1).to(torch.float32)
        ahead = (torch.rand(n, device=self.device, generator=generator) * span).long()
        future = start + torch.minimum(ahead, end - start)
        future_rows = (future % self.blocks) * self.num_envs + idx % self.num_envs
        goals = self.next_obs["achieved_goal"][future_rows]
        desired = torch.where(relabel[:, None], goals, batch.observations["desired_goal"])
        batch.observations["desired_goal"] = desired
        batch.next_observations["desired_goal"] = desired
        earned = self.compute_reward(batch.next_observations["achieved_goal"], desired)
        earned = earned.to(batch.rewards).view(-1, 1)
        return batch._replace(rewards=torch.where(relabel[:, None], earned, batch.rewards))
