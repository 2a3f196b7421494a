"""Posture: which torso orientations count as upside down, and runs it cannot judge."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import envs  # noqa: F401 - registers the contextual envs
from agents.posture import time_upside_down, upside_down


def _pose(env: gym.Env, qpos: np.ndarray) -> None:
    data = env.unwrapped.data
    data.qpos[:] = qpos
    mujoco.mj_forward(env.unwrapped.model, data)


@pytest.mark.parametrize(("rooty", "down"), [(0.0, False), (1.4, False), (1.7, True), (-3.1, True)])
def test_a_planar_torso_is_upside_down_past_a_quarter_turn(rooty, down):
    env = gym.make("hyperrl/ContextualHalfCheetah-v0")
    env.reset(seed=0)
    qpos = env.unwrapped.data.qpos.copy()
    qpos[2] = rooty
    _pose(env, qpos)
    assert upside_down(env) is down


def test_a_free_torso_rolled_over_is_upside_down():
    env = gym.make("hyperrl/ContextualAnt-v0")
    env.reset(seed=0)
    qpos = env.unwrapped.data.qpos.copy()
    assert not upside_down(env)
    qpos[3:7] = [0.0, 1.0, 0.0, 0.0]  # half a turn about the x-axis
    _pose(env, qpos)
    assert upside_down(env)


def test_a_run_off_mujoco_is_refused_with_the_reason(pendulum_run):
    with pytest.raises(ValueError, match="MuJoCo"):
        time_upside_down(pendulum_run, episodes=1)
    with pytest.raises(ValueError, match="splits"):
        time_upside_down(pendulum_run, split="nowhere", episodes=1)


def test_a_run_plays_the_episodes_its_evaluation_plays(tmp_path):
    from agents.evaluation import evaluate_run
    from agents.train import TrainArgs, train

    run_dir = tmp_path / "cheetah"
    train(
        TrainArgs(
            algo="ppo",
            env="hyperrl/ContextualHalfCheetah-v0",
            hyperparams=["n_steps:32", "batch_size:32", "n_epochs:1", "normalize:true"],
            timesteps=64,
            n_envs=2,
            eval_freq=0,
            save_freq=0,
            progress_bar=False,
            tensorboard=False,
            run_dir=str(run_dir),
        )
    )
    rows = time_upside_down(run_dir, "train", episodes=2, seed=10_000)
    result = evaluate_run(run_dir, splits=["train"], episodes=2, out_dir=tmp_path / "eval")
    # same seeds, same observation normalisation: the same episodes
    assert np.mean([r["return"] for r in rows]) == pytest.approx(
        result["summary"]["train"]["mean_return"]
    )
    assert all(0.0 <= r["upside_down"] <= 1.0 for r in rows)
    assert rows[0]["context"] != rows[1]["context"]
