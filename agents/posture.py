"""How a trained locomotion policy carries its torso: the share of steps it spends upside down.

A HalfCheetah policy can settle on running on its back, a gait it rarely leaves once found; its
return then stays far below an upright run's, and that reads like a seed that "did not learn".
This tells the two apart (``scripts/posture.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs
from agents.evaluation import obs_filter, play_episode
from agents.run_config import load_run, statistics_dir

#: the body whose orientation counts: the first body under the world (the torso of every
#: gymnasium MuJoCo locomotion model)
TORSO = 1


def upside_down(env: gym.Env) -> bool:
    """Whether the torso of a MuJoCo env's model points its up-axis below the horizon: its
    z-axis's world z-component (``xmat[TORSO, 8]``) is negative. For a planar body such as
    HalfCheetah's that is ``|rooty| > pi/2``."""
    data = getattr(env.unwrapped, "data", None)
    if data is None or not hasattr(data, "xmat"):
        raise ValueError(
            f"{env.spec.id if env.spec else env}: posture needs a MuJoCo env (one with "
            "unwrapped.data), not this one"
        )
    return bool(data.xmat[TORSO, 8] < 0)


def time_upside_down(
    run: str | Path, split: str = "train", episodes: int = 2, seed: int = 100
) -> list[dict[str, Any]]:
    """Play ``episodes`` deterministic episodes of a run's policy on ``split`` (the CPU twin of a
    batched env); per episode ``{"context", "return", "upside_down"}``, the last the share of
    steps with :func:`upside_down` true."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    model, config, run_dir, model_path = load_run(run)
    env_id = envs.cpu_twin(config.env)
    kwargs = envs.twin_kwargs(config.env, config.env_kwargs)
    available = envs.splits_of(env_id)
    if split not in available:
        raise ValueError(f"{env_id} has splits {available}, not {split!r}")
    if len(available) > 1:
        kwargs["split"] = split
    env = gym.make(env_id, **kwargs)
    normalize = obs_filter(statistics_dir(run_dir, model_path))
    rows = []
    for episode in range(episodes):
        down: list[bool] = []
        row, _ = play_episode(
            model, env, seed + episode, None, normalize, False,
            after_step=lambda e, down=down: down.append(upside_down(e)),
        )  # fmt: skip
        share = float(np.mean(down))
        rows.append({"context": row["context"], "return": row["return"], "upside_down": share})
    env.close()
    return rows


def mean_upside_down(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """``(mean return, mean share upside down)`` of :func:`time_upside_down`'s rows."""
    return (
        float(np.mean([r["return"] for r in rows])),
        float(np.mean([r["upside_down"] for r in rows])),
    )
