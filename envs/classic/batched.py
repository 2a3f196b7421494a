"""Contextual Pendulum batched in plain torch: the fast contextual task on which the batched
trainers are tested."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from envs.batched.contract import BatchedContextualEnv
from envs.classic.contextual import PENDULUM_CONTEXT


class TorchPendulum(BatchedContextualEnv):
    """Pendulum-v1 (gravity, mass, length as context), batched in torch: same dynamics, reward,
    initial-state distribution and 200-step horizon as :class:`envs.classic.ContextualPendulum`."""

    max_speed, max_torque, dt = 8.0, 2.0, 0.05

    def __init__(
        self,
        num_envs: int,
        split: str = "train",
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ) -> None:
        super().__init__(num_envs, PENDULUM_CONTEXT, split, 200, device, seed)
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        self.observation_space = gym.spaces.Dict(
            {
                "observation": gym.spaces.Box(-high, high, dtype=np.float32),
                "context": self._context_box(),
            }
        )
        self.action_space = gym.spaces.Box(-self.max_torque, self.max_torque, (1,), np.float32)
        self.state = torch.zeros(num_envs, 2, device=self.device)  # theta, theta_dot

    supports_state = True
    supports_context_change = True

    def _apply_contexts(self, mask: torch.Tensor) -> None:
        """Nothing: every step reads :attr:`contexts`."""

    def _physics_state(self) -> dict[str, torch.Tensor]:
        return {"state": self.state}

    def _load_physics_state(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state["state"].to(self.device)

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        n = int(mask.sum())
        high = torch.tensor([math.pi, 1.0], dtype=torch.float64)
        init = (torch.rand(n, 2, generator=self.generator, dtype=torch.float64) * 2 - 1) * high
        self.state[mask] = init.to(self.device, torch.float32)

    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, m, length = self.contexts.unbind(-1)
        th, thdot = self.state.unbind(-1)
        u = actions[:, 0]
        angle = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
        cost = angle**2 + 0.1 * thdot**2 + 0.001 * u**2
        thdot = thdot + (3 * g / (2 * length) * torch.sin(th) + 3.0 / (m * length**2) * u) * self.dt
        thdot = thdot.clamp(-self.max_speed, self.max_speed)
        self.state = torch.stack([th + thdot * self.dt, thdot], -1)
        return -cost, torch.zeros_like(cost, dtype=torch.bool)

    def _observe(self) -> torch.Tensor:
        th, thdot = self.state.unbind(-1)
        return torch.stack([torch.cos(th), torch.sin(th), thdot], -1)
