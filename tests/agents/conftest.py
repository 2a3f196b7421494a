"""Fixtures shared by the agents tests."""

from __future__ import annotations

import pytest

from agents.train import TrainArgs, train


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    """A barely trained PPO run on contextual Pendulum, with observation normalisation (one per
    test module, which may add files to it)."""
    run_dir = tmp_path_factory.mktemp("runs") / "pendulum"
    args = TrainArgs(
        algo="ppo", env="hyperrl/ContextualPendulum-v0",
        hyperparams=["n_steps:64", "batch_size:64", "n_epochs:1", "normalize:true"],
        timesteps=256, n_envs=2, eval_freq=0, save_freq=0, progress_bar=False,
        tensorboard=False, run_dir=str(run_dir),
    )  # fmt: skip
    train(args)
    return run_dir
