"""The on-policy rollout's arithmetic on ``(T, N, ...)`` tensors (time-major, one column per
world): advantages by GAE, and minibatches laid out by world."""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates, ``(T, N)``. ``dones[t]`` marks that the step ``t`` ended
    its episode, so nothing after it flows back (truncations are bootstrapped in the reward)."""
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(last_values)
    next_values = last_values
    for t in reversed(range(rewards.shape[0])):
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_values * live - values[t]
        running = delta + gamma * lam * live * running
        advantages[t] = running
        next_values = values[t]
    return advantages


def env_major(x: torch.Tensor, worlds: torch.Tensor) -> torch.Tensor:
    """``(T, N, ...)`` -> ``(len(worlds) * T, ...)``: each picked world's steps contiguous."""
    picked = x[:, worlds].transpose(0, 1)
    return picked.reshape(-1, *x.shape[2:])
