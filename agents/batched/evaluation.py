"""Evaluation of a batched trainer's policy on a batched env of one split, during training."""

from __future__ import annotations

import torch

from agents.batched.trainer import BatchedTrainer
from envs.batched import BatchedContextualEnv


def evaluate_batched(
    algo: BatchedTrainer, env: BatchedContextualEnv, seed: int = 1000
) -> dict[str, float]:
    """One deterministic episode in each world of ``env`` (its split): ``{"return": mean
    return}``, plus ``"success_rate"`` (episodes whose last step reached the goal) for envs that
    report ``info["is_success"]``."""
    worlds = env.num_envs
    obs = env.reset(seed=seed)
    total = torch.zeros(worlds, device=env.device)
    success, reports_success = torch.zeros_like(total), False
    live = torch.ones(worlds, dtype=torch.bool, device=env.device)
    algo.policy.set_training_mode(False)
    algo.start_episodes()
    with torch.no_grad():
        for _ in range(env.max_episode_steps):
            actions = algo.act(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(actions)
            total += reward * live
            if "is_success" in info:
                success, reports_success = torch.where(live, info["is_success"], success), True
            live &= ~(terminated | truncated)
            if not bool(live.any()):
                break
    out = {"return": float(total.mean())}
    if reports_success:
        out["success_rate"] = float(success.mean())
    return out
