"""What defines a run, shared by the SB3 path (:mod:`agents.sb3_train`) and the batched trainers
(:mod:`agents.batched.train`): the command-line arguments (:class:`TrainArgs`), the resolved config
a run folder keeps (:class:`RunConfig`, ``config.yml``), the env's context space (``contexts.yml``),
where a new run goes and how its model is loaded. The files' crash safety is
:mod:`agents.run_folder`'s.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

import envs
from agents.algos import algo_class
from agents.run_folder import CHECKPOINTS, BestModel, write_text

#: what ``--freeze`` can hold fixed when fine-tuning (:mod:`agents.init_from`)
FREEZE = ("none", "generator", "trunk")


#: the schedule flags of ``train_agent.py`` and their defaults; a run records its own in
#: ``config.yml`` and ``--resume`` keeps it unless a flag is given again
SCHEDULE = {"eval_freq": 10_000, "eval_episodes": 5, "save_freq": 50_000, "keep_checkpoints": 3}


@dataclass
class TrainArgs:
    """What ``train_agent.py`` passes in; ``None`` means "from the preset, else the default"."""

    algo: str = "ppo"
    env: str = "hyperrl/ContextualCartPole-v0"
    policy: str | None = None
    conf_file: str | None = None
    hyperparams: list[str] = field(default_factory=list)
    timesteps: int | None = None
    n_envs: int | None = None
    seed: int = 0
    device: str = "auto"
    tensorboard: bool = True
    tensorboard_log: str | None = None
    #: the schedule (:data:`SCHEDULE`): ``None`` takes the run's own on ``--resume``, else the
    #: default
    eval_freq: int | None = None
    eval_episodes: int | None = None
    save_freq: int | None = None
    keep_checkpoints: int | None = None
    run_dir: str | None = None
    resume: str | None = None
    init_from: str | None = None
    freeze: str = "none"
    reinit_critic: bool = False
    batched: bool = False
    #: a run folder whose adaptation module to train (``--adapt``) instead of a new run
    adapt: str | None = None
    progress_bar: bool = True
    verbose: int = 0

    def __post_init__(self) -> None:
        """:raises ValueError: for a count or frequency out of range, naming the flag."""
        checks = [
            ("-n/--timesteps", self.timesteps, 1, True),
            ("--n-envs", self.n_envs, 1, True),
            ("--eval-episodes", self.eval_episodes, 1, True),
            ("--eval-freq", self.eval_freq, 0, True),
            ("--save-freq", self.save_freq, 0, True),
            ("--keep-checkpoints", self.keep_checkpoints, 1, True),
            ("--seed", self.seed, 0, False),
        ]
        for flag, value, low, optional in checks:
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                what = "a positive integer" if low == 1 else "a non-negative integer"
                hint = " (0 disables it)" if flag in ("--eval-freq", "--save-freq") else ""
                raise ValueError(f"{flag} must be {what}{hint}, got {value!r}")
        self.init_spec()  # --freeze and --reinit-critic checked before anything is built
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"--device must be auto, cpu, cuda or cuda:<index>, got {self.device!r}"
                ) from None

    def with_schedule(self, recorded: dict[str, int] | None = None) -> TrainArgs:
        """These args with every schedule flag not given taken from ``recorded`` (a resumed
        run's own, from its ``config.yml``), else from :data:`SCHEDULE`."""
        recorded = recorded or {}
        filled = {
            k: recorded.get(k, default) if getattr(self, k) is None else getattr(self, k)
            for k, default in SCHEDULE.items()
        }
        return dataclasses.replace(self, **filled)

    def schedule(self) -> dict[str, int]:
        """The schedule flags, as a run's ``config.yml`` records them."""
        return {k: getattr(self, k) for k in SCHEDULE}

    def init_spec(self) -> dict[str, Any] | None:
        """``--init-from`` and its options as the run config records them (``None`` without).

        :raises ValueError: for ``--freeze`` or ``--reinit-critic`` without ``--init-from``, or
            an unknown ``--freeze``."""
        if self.init_from is None:
            if self.freeze != "none" or self.reinit_critic:
                raise ValueError("--freeze and --reinit-critic need --init-from RUN")
            return None
        if self.freeze not in FREEZE:
            raise ValueError(f"--freeze takes one of {list(FREEZE)}, got {self.freeze!r}")
        return {"run": self.init_from, "freeze": self.freeze, "reinit_critic": self.reinit_critic}

    def new_run_folder(self) -> Path:
        """``--run-dir``, else the next free ``runs/<algo>/<env>_<n>``.

        :raises ValueError: when that folder already holds a run."""
        run_dir = Path(self.run_dir or new_run_dir(Path("runs"), self.algo, self.env))
        if (run_dir / "config.yml").exists():
            raise ValueError(
                f"{run_dir} already holds a run; pass --resume {run_dir} or a new --run-dir"
            )
        return run_dir

    def tensorboard_dir(self, run_dir: Path) -> str | None:
        """``run_dir/tb``, or ``--tensorboard-log DIR/<run name>`` (one root for many runs)."""
        if not self.tensorboard:
            return None
        return str(
            Path(self.tensorboard_log) / run_dir.name if self.tensorboard_log else run_dir / "tb"
        )


@dataclass
class RunConfig:
    """A run folder's ``config.yml``: everything needed to rebuild the run.

    :param hyperparams: the resolved preset and overrides (``env_kwargs``, ``policy_kwargs``,
        ``normalize`` and the algorithm's or trainer's keys).
    :param trainer: ``"sb3"`` (an SB3 algorithm on gymnasium envs) or ``"device"`` (a batched
        trainer, :mod:`agents.batched`).
    """

    algo: str
    env: str
    policy: str
    n_timesteps: int
    n_envs: int
    seed: int
    hyperparams: dict[str, Any]
    trainer: str = "sb3"
    #: where the run started from (``--init-from``: run, freeze, reinit_critic), or ``None``
    init_from: dict[str, Any] | None = None
    #: evaluation and checkpoint frequencies (:data:`SCHEDULE`; ``None`` in runs from before
    #: they were recorded)
    schedule: dict[str, int] | None = None

    @classmethod
    def resolved(
        cls,
        args: TrainArgs,
        config: dict[str, Any],
        trainer: str = "sb3",
        n_timesteps: int = 100_000,
        n_envs: int = 1,
    ) -> RunConfig:
        """A new run's config: ``args`` over the resolved preset ``config`` (whose
        ``n_timesteps``, ``n_envs`` and ``policy`` it takes out), over these defaults."""
        config = dict(config)
        preset_steps = config.pop("n_timesteps", n_timesteps)
        preset_envs = config.pop("n_envs", n_envs)
        preset_policy = config.pop("policy", "hyper")
        return cls(
            algo=args.algo,
            env=args.env,
            policy=args.policy or preset_policy,
            n_timesteps=int(args.timesteps or preset_steps),
            n_envs=int(args.n_envs or preset_envs),
            seed=args.seed,
            hyperparams=config,
            trainer=trainer,
            init_from=args.init_spec(),
            schedule=args.with_schedule().schedule(),
        )

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return dict(self.hyperparams.get("env_kwargs") or {})

    def write(self, run_dir: Path) -> None:
        """``run_dir/config.yml`` (atomically), and ``contexts.yml`` for an env with a context
        space: its features with their nominal values, train ranges and held-out sets (and the
        range the train split draws from instead, with ``env_kwargs: {train_ranges: ...}``)."""
        saved = {
            "algo": self.algo,
            "env": self.env,
            "policy": self.policy,
            "n_timesteps": int(self.n_timesteps),
            "n_envs": int(self.n_envs),
            "seed": int(self.seed),
            "trainer": self.trainer,
            "hyperparams": self.hyperparams,
        }
        if self.init_from is not None:
            saved["init_from"] = self.init_from
        if self.schedule is not None:
            saved["schedule"] = self.schedule
        write_text(run_dir / "config.yml", yaml.safe_dump(saved, sort_keys=False))
        if envs.cpu_twin(self.env) in envs.ENVS:  # task suites have no context space
            space = envs.context_space(self.env)
            if self.env_kwargs.get("train_ranges"):
                space = space.with_train_ranges(self.env_kwargs["train_ranges"])
            contexts = {
                f.name: {
                    k: v for k, v in dataclasses.asdict(f).items() if k != "name" and v is not None
                }
                for f in space.features
            }
            write_text(run_dir / "contexts.yml", yaml.safe_dump(contexts, sort_keys=False))


def read_run_config(run_dir: Path) -> RunConfig:
    """:raises ValueError: when ``run_dir`` has no readable ``config.yml``."""
    path = run_dir / "config.yml"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run folder (no config.yml)")
    try:
        saved = yaml.safe_load(path.read_text())
        return RunConfig(**saved)
    except (yaml.YAMLError, TypeError) as err:
        raise ValueError(
            f"{path} is not a run config ({type(err).__name__}: {err}); restore it or start a "
            "new run"
        ) from None


def new_run_dir(root: Path, algo: str, env_id: str) -> Path:
    """The first free ``root/<algo>/<env id as a name>_<n>``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", env_id)
    for i in range(1, 10_000):
        path = root / algo / f"{name}_{i}"
        if not path.exists():
            return path
    raise RuntimeError(f"too many runs under {root / algo}")


def load_model(algo: type[BaseAlgorithm], path: Path, **kwargs: Any) -> BaseAlgorithm:
    """``algo.load`` with a clear error for a missing or corrupt file."""
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist; train a run first")
    try:
        return algo.load(path, **kwargs)
    except Exception as err:  # zip, pickle and torch errors all mean the same to a user
        raise ValueError(
            f"model file {path} is corrupt or not an SB3 model ({type(err).__name__}: {err}); "
            "retrain, or point to another run or checkpoint"
        ) from None


def space_shapes(space: gym.Space) -> object:
    """What must match for a model to run on an env: the space's kind and shape, per key of a
    Dict (not its bounds, which may differ by rounding between an env and its batched twin)."""
    if isinstance(space, gym.spaces.Dict):
        return {k: space_shapes(v) for k, v in space.spaces.items()}
    return (type(space).__name__, getattr(space, "shape", None), getattr(space, "n", None))


def spaces_of(holder: Any) -> tuple[object, object]:
    """``(observation, action)`` :func:`space_shapes` of a model, policy or env."""
    return space_shapes(holder.observation_space), space_shapes(holder.action_space)


def make_envs(
    env_id: str,
    n_envs: int,
    seed: int,
    env_kwargs: dict[str, Any],
    split: str | None = None,
    wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> VecEnv:
    """``n_envs`` copies of ``env_id`` made with ``env_kwargs`` (and ``split``, for an env that
    has context splits), each in ``wrapper`` when given, seeded from ``seed``."""
    kwargs = dict(env_kwargs)
    if split is not None and len(envs.splits_of(env_id)) > 1:
        kwargs["split"] = split
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=kwargs, wrapper_class=wrapper)


def load_run(run: str | Path) -> tuple[Any, RunConfig, Path, Path]:
    """``(model on the CPU, run config, run folder, model file)`` of a run folder (its
    ``best_model.zip`` if there is one, else ``model.zip``) or of one of its ``.zip`` files,
    checkpoints' included."""
    run = Path(run)
    run_dir = run.parent if run.suffix == ".zip" else run
    if run.suffix == ".zip" and run_dir.parent.name == CHECKPOINTS:
        run_dir = run_dir.parent.parent  # checkpoints/step_<N>/model.zip
    config = read_run_config(run_dir)
    algo, algo_defaults = algo_class(config.algo)
    if run.suffix == ".zip":
        model_path = run
    elif (run_dir / "best_model.zip").is_file():
        model_path = run_dir / "best_model.zip"
    else:
        model_path = run_dir / "model.zip"
    kwargs: dict[str, Any] = {}
    if algo_defaults.get("replay_buffer_class") is not None:
        # SB3 loads a model with HerReplayBuffer only with an env to relabel goals against
        env_kwargs = envs.twin_kwargs(config.env, config.env_kwargs)
        kwargs["env"] = make_envs(envs.cpu_twin(config.env), 1, 0, env_kwargs)
    return load_model(algo, model_path, device="cpu", **kwargs), config, run_dir, model_path


def statistics_dir(run_dir: Path, model_path: Path) -> Path:
    """Where a model file's observation statistics are: a checkpoint's own ``vecnormalize.pkl``
    when it has one (``best/`` for ``best_model.zip``), else the run's."""
    own = model_path.parent
    if model_path.name == "best_model.zip":
        own = model_path.parent / BestModel.STATISTICS
    return own if (own / "vecnormalize.pkl").is_file() else run_dir
