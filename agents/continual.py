"""Continual learning over a sequence of tasks on the batched PPO:
``python scripts/train_continual.py configs/continual/halfcheetah_vel.yml``.

A sequence config names a batched env and its tasks, each a range of its context features
(``train_ranges``, e.g. target velocities ``[0, 1]``, then ``[1, 2]``...). One policy trains on
the tasks one after another, ``steps_per_task`` env steps each. After each task:

- every task is evaluated (deterministic episodes on its own contexts), which fills the
  forgetting matrix ``returns[i][j]`` (return on task ``j`` after training task ``i``; the
  untrained policy's returns are ``before``);
- with ``beta > 0`` the generators' outputs for ``probes`` contexts of the task are stored and,
  from then on, :class:`~hyperrl.continual.OutputRegulariser` keeps them (von Oswald et al.,
  2020);
- after the first task the trunks (``freeze_trunk``) and the observation statistics
  (``freeze_normalization``) stop moving: what the regulariser keeps is the generated heads, so
  what they read must stay too.

The run folder holds ``sequence.yml`` (the config as run), ``current/`` (the trainer, saved after
each task and on Ctrl-C; the run continues from it: ``--resume RUN``), ``after_<i>_<name>/``
(the model after each task) and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import yaml

import envs
from agents.algos import close_matches
from agents.batched.evaluation import evaluate_batched
from agents.batched.ppo import DevicePPO, DevicePPOConfig
from agents.batched.train import build
from agents.config import resolve
from agents.init_from import apply_freeze, frozen_parameters
from agents.run_folder import atomic_save, save_on_stop, write_text
from envs.batched import sample_contexts, scale_contexts
from hyperrl.continual import OutputRegulariser

STATE_FILE = "continual.pt"
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class Task:
    """One task of a sequence: a name and the ranges its train contexts come from."""

    name: str
    train_ranges: dict[str, list[float]]


@dataclass
class SequenceConfig:
    """A sequence of tasks and how to learn them (the keys of a sequence YAML file).

    :param env: a batched env id with context features.
    :param tasks: the tasks, in order.
    :param policy: ``--policy`` name (the regulariser needs ``hyper`` or ``lowrank_hyper``).
    :param steps_per_task: env steps of training per task.
    :param beta: the output regulariser's weight (0: plain sequential fine-tuning).
    :param probes: contexts per task at which the generators' outputs are kept.
    :param freeze_trunk: hold the trunks fixed after the first task.
    :param freeze_normalization: hold the observation statistics fixed after the first task.
    :param n_envs: worlds (default: the env's PPO preset).
    :param eval_episodes: episodes per task in each evaluation.
    :param hyperparams: PPO keys over the env's preset (``n_steps``, ``learning_rate``...).
    """

    env: str
    tasks: list[Task]
    policy: str = "hyper"
    steps_per_task: int = 1_000_000
    beta: float = 0.05
    probes: int = 64
    freeze_trunk: bool = True
    freeze_normalization: bool = True
    n_envs: int | None = None
    eval_episodes: int = 32
    hyperparams: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SequenceConfig:
        """:raises ValueError: naming an unknown key, a missing one, a bad value or task."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(values, Mapping):
            raise ValueError(f"a sequence config is a mapping of {names}, got {values!r}")
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ValueError(
                f"unknown sequence key {unknown[0]!r}{close_matches(unknown[0], names)}; "
                f"valid keys: {', '.join(names)}"
            )
        missing = [k for k in ("env", "tasks") if k not in values]
        if missing:
            raise ValueError(f"a sequence config needs {missing}")
        values = dict(values)
        env_id = values["env"]
        if env_id not in envs.BATCHED_ENVS:
            raise ValueError(
                f"continual learning runs on the batched PPO; {env_id!r} is not a batched env "
                f"(one of {sorted(envs.BATCHED_ENVS)})"
            )
        values["tasks"] = _tasks(values["tasks"], env_id)
        config = cls(**values)
        if config.policy == "architecture":  # its members are drawn by a wrapper of their own
            raise ValueError("continual learning does not take --policy architecture")
        for key in ("steps_per_task", "probes", "eval_episodes"):
            value = getattr(config, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not isinstance(config.beta, int | float) or config.beta < 0:
            raise ValueError(f"beta must be a number >= 0, got {config.beta!r}")
        if not isinstance(config.hyperparams, Mapping):
            raise ValueError(f"hyperparams must be a mapping, got {config.hyperparams!r}")
        if "env_kwargs" in config.hyperparams and "train_ranges" in (
            config.hyperparams["env_kwargs"] or {}
        ):
            raise ValueError("the tasks set train_ranges; leave it out of hyperparams.env_kwargs")
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> SequenceConfig:
        """:raises ValueError: for a missing or unreadable file, and as :meth:`from_dict`."""
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read the sequence config {path}: {err}") from None
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tasks(tasks: Any, env_id: str) -> list[Task]:
    if not isinstance(tasks, list) or not tasks:
        raise ValueError("tasks must be a non-empty list of {name: ..., train_ranges: {...}}")
    space = envs.context_space(env_id)
    out = []
    for i, task in enumerate(tasks):
        if not isinstance(task, Mapping) or set(task) != {"name", "train_ranges"}:
            raise ValueError(
                f"task {i} must have exactly the keys name and train_ranges, got {task!r}"
            )
        space.with_train_ranges(task["train_ranges"])  # its errors name the problem
        ranges = {k: [float(v) for v in r] for k, r in task["train_ranges"].items()}
        out.append(Task(str(task["name"]), ranges))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be distinct, got {names}")
    return out


def train_sequence(
    config: SequenceConfig,
    run_dir: str | Path,
    seed: int = 0,
    device: str = "cpu",
    progress_bar: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Learn ``config.tasks`` in order (see the module docstring); returns what
    ``results.json`` holds: ``tasks``, ``before`` (the untrained policy's return on each task),
    ``returns`` (row ``i``: every task's return after task ``i``; tasks not yet trained
    included, as zero-shot transfer), ``retention`` (the share of each task's gain over
    ``before`` left at the end) and ``drift`` (how far the kept generator outputs moved, per
    task). ``resume`` continues the run in ``run_dir`` with its own seed (``seed`` is then
    ignored)."""
    run_dir = Path(run_dir)
    saved = None
    if resume:
        saved = _read_state(run_dir)
        seed = int(saved["seed"])
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} is not empty; pick a new folder or pass --resume")
    preset = resolve(config.env, "ppo", DevicePPOConfig, None, dict(config.hyperparams))
    preset.pop("policy", None)
    preset.pop("n_timesteps", None)
    n_envs = int(config.n_envs or preset.pop("n_envs", 512))
    preset.pop("n_envs", None)
    algo = build(config.env, preset, n_envs, config.policy, device, seed, "ppo")
    assert isinstance(algo, DevicePPO)
    if config.freeze_trunk:  # refused now rather than after the first task
        try:
            frozen_parameters(algo.policy, "trunk")
        except ValueError:
            raise ValueError(
                f"freeze_trunk needs a policy with trunk layers (hyper, lowrank_hyper, film, "
                f"concat), not --policy {config.policy}; set freeze_trunk: false (--no-freeze)"
            ) from None
    regulariser = OutputRegulariser(algo.policy, config.beta) if config.beta > 0 else None
    algo.regulariser = regulariser.penalty if regulariser is not None else None
    base_space = algo.env.context_space
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "sequence.yml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    spaces = [base_space.with_train_ranges(t.train_ranges) for t in config.tasks]
    cpu_env = gym.make(envs.cpu_twin(config.env))  # for vecnormalize.pkl beside each model
    eval_envs = [
        envs.make_batched(config.env, config.eval_episodes, "train", device, seed + 10_000,
                          train_ranges=t.train_ranges)
        for t in config.tasks
    ]  # fmt: skip

    def evaluate() -> list[float]:
        return [evaluate_batched(algo, env, seed=seed + 1000)["return"] for env in eval_envs]

    if saved is not None:
        state = _resume(run_dir, saved, algo, regulariser, config)
    else:  # the untrained policy's returns: where each task starts from
        state = {"seed": seed, "task": 0, "steps_in_task": 0, "returns": [], "before": evaluate()}
    for k in range(state["task"], len(config.tasks)):
        task = config.tasks[k]
        algo.env.context_space = spaces[k]
        if state["steps_in_task"] == 0:
            algo._obs = None  # the next rollout resets every world into the new task
            print(f"task {k + 1}/{len(config.tasks)}: {task.name} {task.train_ranges}")
        start = algo.num_timesteps - state["steps_in_task"]

        def save(k=k, start=start) -> None:
            state["task"], state["steps_in_task"] = k, algo.num_timesteps - start
            _save(run_dir, algo, regulariser, state, cpu_env)

        with save_on_stop(run_dir, save, lambda: algo.num_timesteps, f"--resume {run_dir}"):
            algo.learn(config.steps_per_task - state["steps_in_task"], progress_bar=progress_bar)
        row = evaluate()
        state["returns"].append(row)
        print("  returns after it: " + ", ".join(
            f"{t.name} {r:.1f}" for t, r in zip(config.tasks, row, strict=True)))  # fmt: skip
        if regulariser is not None:
            generator = torch.Generator().manual_seed(seed + k)
            raw = sample_contexts(spaces[k], config.probes, "train", generator, algo.env.device)
            regulariser.remember(scale_contexts(base_space, raw))
        if k == 0:
            _freeze_after_first(algo, config)
        algo.save(run_dir / f"after_{k}_{task.name}", cpu_env)
        state["task"], state["steps_in_task"] = k + 1, 0
        _save(run_dir, algo, regulariser, state, cpu_env)
    results = _results(config, state["before"], state["returns"], regulariser)
    write_text(run_dir / RESULTS_FILE, json.dumps(results, indent=2))
    return results


def _freeze_after_first(algo: DevicePPO, config: SequenceConfig) -> None:
    if config.freeze_trunk:
        apply_freeze(algo.policy, "trunk")
    if config.freeze_normalization:
        for norm in algo.obs_norm.values():
            norm.frozen = True


def _save(run_dir: Path, algo: DevicePPO, regulariser, state: dict[str, Any], cpu_env) -> None:
    algo.save(run_dir / "current", cpu_env)
    saved = dict(state, regulariser=regulariser.state_dict() if regulariser else None)
    atomic_save(run_dir / STATE_FILE, lambda tmp: torch.save(saved, tmp))


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir} has no {STATE_FILE}: nothing to resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same line
        raise ValueError(f"{path} is corrupt ({type(err).__name__}); start a new run") from None


def _resume(
    run_dir: Path, state: dict[str, Any], algo: DevicePPO, regulariser, config: SequenceConfig
) -> dict[str, Any]:
    algo.restore(run_dir / "current")
    if state["task"] > 0:
        _freeze_after_first(algo, config)
    if regulariser is not None and state.get("regulariser"):
        device = algo.env.device
        regulariser.load_state_dict(
            {"beta": state["regulariser"]["beta"],
             "anchors": [(c.to(device), [o.to(device) for o in outputs])
                         for c, outputs in state["regulariser"]["anchors"]]}
        )  # fmt: skip
    state.pop("regulariser", None)
    return state


def _results(
    config: SequenceConfig, before: list[float], returns: list[list[float]], regulariser
) -> dict[str, Any]:
    """Retention of task ``j``: the share of what training it gained over the untrained
    policy that is left at the end, ``(final - before) / (right after - before)`` (returns may
    be negative, as HalfCheetahVel's are, so a plain ratio of returns would mislead)."""
    retention = []
    for j in range(len(returns)):
        gained = returns[j][j] - before[j]
        retention.append((returns[-1][j] - before[j]) / gained if gained > 0 else None)
    return {
        "tasks": [t.name for t in config.tasks],
        "before": before,
        "returns": returns,
        "retention": retention,
        "drift": regulariser.drift() if regulariser is not None else None,
    }


def forgetting_table(results: dict[str, Any]) -> str:
    """Markdown: one row per task trained, one column per task evaluated."""
    names = results["tasks"]
    lines = ["| after \\ on | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for i, row in enumerate(results["returns"]):
        lines.append(f"| {names[i]} | " + " | ".join(f"{r:.1f}" for r in row) + " |")
    return "\n".join(lines)
