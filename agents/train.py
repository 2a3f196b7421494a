"""The training recipe behind ``scripts/train_agent.py``: it checks the env id and hands the run
to the SB3 path (:mod:`agents.sb3_train`, gymnasium envs) or to a batched trainer
(:mod:`agents.batched.train`, batched envs); both write the same run folder
(:mod:`agents.run_config`, :mod:`agents.run_folder`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gymnasium as gym

import envs
from agents.algos import close_matches
from agents.batched.train import train_on_device
from agents.run_config import TrainArgs, read_run_config
from agents.sb3_train import train_sb3

__all__ = ["TrainArgs", "check_env_id", "train"]


def check_env_id(env_id: str) -> None:
    """:raises ValueError: for an id gymnasium does not know, with the closest one."""
    if env_id in gym.registry:
        return
    ours = sorted(k for k in gym.registry if k.startswith(f"{envs.registration.NAMESPACE}/"))
    raise ValueError(
        f"unknown env id {env_id!r}{close_matches(env_id, list(gym.registry))}; this package's "
        f"envs are {', '.join(ours)}, and any registered gymnasium id works"
    )


def train(args: TrainArgs) -> Path:
    """Train (or resume) a run; returns its folder. Ctrl-C saves the model and everything needed
    to ``--resume``. ``args.batched`` trains a gymnasium id on its batched CPU twin
    (:data:`envs.NATIVE_TWINS`) with the on-device trainer; ``args.adapt`` trains an existing
    run's adaptation module (:func:`agents.adaptation.adapt_run`)."""
    if args.adapt:
        from agents.adaptation import adapt_run

        return adapt_run(args)
    if args.resume:
        run = read_run_config(Path(args.resume))
        args = args.with_schedule(run.schedule)  # the run's own unless given again
        return train_on_device(args) if run.trainer == "device" else train_sb3(args)
    args = args.with_schedule()
    if args.batched:
        args = dataclasses.replace(args, env=envs.batched_twin(args.env))
    if args.env in envs.BATCHED_ENVS:
        return train_on_device(args)
    check_env_id(args.env)
    return train_sb3(args)
