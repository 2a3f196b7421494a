"""A batched env seen through its recent past instead of its context: the memory baseline for
agents that must act without knowing the context.

:class:`HistoryObservation` wraps a :class:`~envs.batched.BatchedContextualEnv`, drops the
``context`` key and appends the episode's last ``length`` transitions ``(o, a, r, o')`` (zeros
before the episode has that many) and a flag per slot to the observation. A plain policy on it
(``--policy none``) reads history where a context-conditioned policy reads the context:
``envs.make_batched(id, ..., history=16)`` or ``env_kwargs: {history: 16}`` in a run's config.
The contexts are still drawn, applied and reported in ``info["context"]``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.batched.contract import BatchedContextualEnv, Obs


class HistoryObservation:
    """``env`` with ``observation = [o_t, last length transitions, their flags]`` and no
    context key; the rest of the contract (``step``, ``reset``, ``final_observation``, spaces
    of one world, ``num_envs``, ``device``...) as ``env``'s.

    :param env: the batched env (Box ``observation`` key).
    :param length: transitions kept per world.
    """

    supports_state = False
    supports_context_change = False

    def __init__(self, env: BatchedContextualEnv, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"history must be a positive number of transitions, got {length!r}")
        spaces = env.observation_space.spaces
        extra = sorted(set(spaces) - {"observation", "context"})
        if extra:
            raise ValueError(f"history observations take envs without {extra} keys")
        self.env, self.length = env, length
        obs_dim = int(np.prod(spaces["observation"].shape))
        act_dim = int(np.prod(env.action_space.shape))
        self.transition_dim = 2 * obs_dim + act_dim + 1
        width = obs_dim + length * (self.transition_dim + 1)
        box = gym.spaces.Box(-np.inf, np.inf, (width,), np.float32)
        self.observation_space = gym.spaces.Dict({"observation": box})
        self.action_space = env.action_space
        n, device = env.num_envs, env.device
        self.transitions = torch.zeros(n, length, self.transition_dim, device=device)
        self.valid = torch.zeros(n, length, device=device)
        self._last: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:  # num_envs, device, contexts, split...
        return getattr(self.env, name)

    def change_contexts(self, mask: torch.Tensor, contexts: torch.Tensor | None = None) -> Obs:
        raise NotImplementedError("history observations cannot change contexts mid-episode")

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError("history observations cannot capture their state")

    def _with_history(self, observation: torch.Tensor) -> Obs:
        flat = torch.cat([self.transitions, self.valid.unsqueeze(-1)], dim=-1).flatten(1)
        return {"observation": torch.cat([observation.float(), flat], dim=-1)}

    def reset(self, seed: int | None = None, contexts: torch.Tensor | None = None) -> Obs:
        obs = self.env.reset(seed=seed, contexts=contexts)
        self.transitions.zero_()
        self.valid.zero_()
        self._last = obs["observation"].float()
        return self._with_history(self._last)

    def stagger_episodes(self, granularity: int = 1) -> None:
        self.env.stagger_episodes(granularity)

    def step(
        self, actions: torch.Tensor
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        if self._last is None:
            raise RuntimeError("reset the env before stepping it")
        low, high = self.env.action_bounds
        applied = torch.maximum(torch.minimum(actions.to(self.env.device), high), low)
        obs, reward, terminated, truncated, info = self.env.step(applied)
        final = info["final_observation"]["observation"].float()
        step = torch.cat([self._last, applied, reward.unsqueeze(-1), final], dim=-1)
        self.transitions = torch.cat([self.transitions[:, 1:], step.unsqueeze(1)], dim=1)
        self.valid = torch.cat([self.valid[:, 1:], torch.ones_like(self.valid[:, :1])], dim=1)
        some_finished = info["final_observation"] is not obs
        final_obs = self._with_history(final)
        info = {**info, "final_observation": final_obs}
        self._last = obs["observation"].float()
        if not some_finished:  # the same dict as obs, as the contract says
            return final_obs, reward, terminated, truncated, info
        done = terminated | truncated
        self.transitions = self.transitions * ~done[:, None, None]
        self.valid = self.valid * ~done[:, None]
        return self._with_history(self._last), reward, terminated, truncated, info
