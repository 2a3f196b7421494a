"""The training recipe behind ``scripts/train_agent.py``: config -> envs -> model -> run folder.

A run folder holds ``config.yml`` (everything needed to rebuild the run), ``contexts.yml`` (the
env's context features and splits), ``model.zip``, ``best_model.zip``, ``vecnormalize.pkl`` and
``replay_buffer.pkl`` where they apply, ``checkpoints/`` and TensorBoard events in ``tb/``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, sync_envs_normalization

import envs
from agents.algos import GOAL_KEYS, algo_class, close_matches, policy_for
from agents.config import parse_overrides, resolve
from agents.run_folder import (
    BestModel,
    atomic_save,
    remove_partial_files,
    resume_source,
    save_on_stop,
    write_checkpoint,
    write_manifest,
    write_text,
)
from agents.safe_pickle import load_vecnormalize
from hyperrl.policies import norm_obs_keys
from hyperrl.policies.diagnostics import generated_weight_stats


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
    eval_freq: int = 10_000
    eval_episodes: int = 5
    save_freq: int = 50_000
    keep_checkpoints: int = 3
    run_dir: str | None = None
    resume: str | None = None
    batched: bool = False
    progress_bar: bool = True
    verbose: int = 0

    def __post_init__(self) -> None:
        """:raises ValueError: for a count or frequency out of range, naming the flag."""
        checks = [
            ("-n/--timesteps", self.timesteps, 1, True),
            ("--n-envs", self.n_envs, 1, True),
            ("--eval-episodes", self.eval_episodes, 1, False),
            ("--eval-freq", self.eval_freq, 0, False),
            ("--save-freq", self.save_freq, 0, False),
            ("--keep-checkpoints", self.keep_checkpoints, 1, False),
            ("--seed", self.seed, 0, False),
        ]
        for flag, value, low, optional in checks:
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                what = "a positive integer" if low == 1 else "a non-negative integer"
                hint = " (0 disables it)" if flag in ("--eval-freq", "--save-freq") else ""
                raise ValueError(f"{flag} must be {what}{hint}, got {value!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"--device must be auto, cpu, cuda or cuda:<index>, got {self.device!r}"
                ) from None


def check_env_id(env_id: str) -> None:
    """:raises ValueError: for an id gymnasium does not know, with the closest one."""
    if env_id in gym.registry:
        return
    ours = sorted(k for k in gym.registry if k.startswith(f"{envs.registration.NAMESPACE}/"))
    raise ValueError(
        f"unknown env id {env_id!r}{close_matches(env_id, list(gym.registry))}; this package's "
        f"envs are {', '.join(ours)}, and any registered gymnasium id works"
    )


def splits_of(env_id: str) -> tuple[str, ...]:
    """The context splits an env id can be made with (``gym.make(env_id, split=...)``)."""
    if env_id in envs.ENVS:
        return envs.SPLITS
    if env_id in envs.SUITES:
        return ("train", "held_out")
    return ("train",)


def make_envs(
    env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any], split: str | None = None
) -> VecEnv:
    kwargs = dict(env_kwargs)
    if split is not None and len(splits_of(env_id)) > 1:
        kwargs["split"] = split
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=kwargs)


def new_run_dir(root: Path, algo: str, env_id: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", env_id)
    for i in range(1, 10_000):
        path = root / algo / f"{name}_{i}"
        if not path.exists():
            return path
    raise RuntimeError(f"too many runs under {root / algo}")


class SplitEvalCallback(BaseCallback):
    """Every ``eval_freq`` calls: mean return on each context split, logged as
    ``eval/<split>_return``; the best model on the train split is kept as ``best_model.zip``
    (:class:`agents.run_folder.BestModel`)."""

    def __init__(
        self, eval_envs: dict[str, VecEnv], eval_freq: int, episodes: int, run_dir: Path
    ) -> None:
        super().__init__()
        self.eval_envs, self.eval_freq, self.episodes = eval_envs, eval_freq, episodes
        self.best = BestModel(run_dir)

    def _on_step(self) -> bool:
        if self.eval_freq <= 0 or self.n_calls % self.eval_freq:
            return True
        for split, env in self.eval_envs.items():
            if isinstance(env, VecNormalize):
                sync_envs_normalization(self.training_env, env)
            mean, _ = evaluate_policy(
                self.model, env, self.episodes, deterministic=True, warn=False
            )
            self.logger.record(f"eval/{split}_return", mean)
            if split == "train":
                self.best.offer(mean, self.model.num_timesteps, self.model.save)
        self._log_generated_weights()
        self.logger.dump(self.num_timesteps)
        return True

    def _log_generated_weights(self, contexts: int = 8) -> None:
        """``hyper/<net>/weight_norm`` and ``weight_spread`` over a few training contexts."""
        env = self.eval_envs["train"]
        if not isinstance(env.observation_space, gym.spaces.Dict):
            return
        batch = [env.reset() for _ in range(contexts)]
        obs = {k: np.concatenate([b[k] for b in batch]) for k in batch[0]}
        for key, value in generated_weight_stats(self.model.policy, obs).items():
            self.logger.record(f"hyper/{key}", value)


def _config_file(
    args: TrainArgs, config: dict[str, Any], n_timesteps: int, n_envs: int, policy: str
) -> dict[str, Any]:
    return {
        "algo": args.algo,
        "env": args.env,
        "policy": policy,
        "n_timesteps": int(n_timesteps),
        "n_envs": int(n_envs),
        "seed": args.seed,
        "hyperparams": config,
    }


def train(args: TrainArgs) -> Path:
    """Train (or resume) a run; returns its folder. Ctrl-C saves the model and everything needed
    to ``--resume``. ``args.batched`` trains a gymnasium id on its batched CPU twin
    (:data:`envs.NATIVE_TWINS`) with the on-device trainer."""
    if args.batched and not args.resume:
        args = dataclasses.replace(args, env=envs.batched_twin(args.env))
    if args.env in envs.BATCHED_ENVS or (
        args.resume and read_run_config(Path(args.resume)).get("trainer") == "device"
    ):
        from agents.device_train import train_on_device

        return train_on_device(args)
    if args.resume:
        return _resume(args)
    check_env_id(args.env)
    algo, algo_defaults = algo_class(args.algo)
    config = resolve(args.env, args.algo, algo, args.conf_file, parse_overrides(args.hyperparams))
    preset_timesteps, preset_envs = config.pop("n_timesteps", 100_000), config.pop("n_envs", 1)
    n_timesteps = int(args.timesteps or preset_timesteps)
    n_envs = int(args.n_envs or preset_envs)
    preset_policy = config.pop("policy", "hyper")
    policy_name = args.policy or preset_policy
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(Path("runs"), args.algo, args.env)
    if (run_dir / "config.yml").exists():
        raise ValueError(
            f"{run_dir} already holds a run; pass --resume {run_dir} or a new --run-dir"
        )
    # build first: a config the env or policy rejects must not leave a half-made run folder
    model = _build(args, algo, algo_defaults, config, n_envs, policy_name, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = _config_file(args, dict(config), n_timesteps, n_envs, policy_name)
    write_text(run_dir / "config.yml", yaml.safe_dump(saved, sort_keys=False))
    if args.env in envs.ENVS:
        space = envs.context_space(args.env)
        contexts = {
            f.name: {k: v for k, v in dataclasses.asdict(f).items() if k != "name"}
            for f in space.features
        }
        write_text(run_dir / "contexts.yml", yaml.safe_dump(contexts, sort_keys=False))
    return _learn(args, model, n_timesteps, run_dir, resumed=False)


def _build(args, algo, algo_defaults, config, n_envs, policy_name, run_dir):
    config = dict(config)
    env_kwargs = config.pop("env_kwargs", None) or {}
    normalize = config.pop("normalize", False)
    venv = make_envs(args.env, n_envs, args.seed, env_kwargs, split="train")
    space = venv.observation_space
    if "replay_buffer_class" in algo_defaults and not (
        isinstance(space, gym.spaces.Dict) and set(space.spaces) >= GOAL_KEYS
    ):
        raise ValueError(
            f"--algo her relabels goals, but {args.env} is not goal-conditioned (its observation "
            f"has no {sorted(GOAL_KEYS)}); use a Fetch env such as "
            "hyperrl/ContextualFetchReach-v0, or --algo sac"
        )
    policy, policy_kwargs = policy_for(algo, policy_name, venv, args.env)
    policy_kwargs |= config.pop("policy_kwargs", None) or {}
    if normalize:
        # every key but what the policy conditions on (a goal too): identical contexts must stay
        # identical, or every step gets its own generated head
        keys = (
            norm_obs_keys(venv.observation_space, policy_kwargs.get("context_keys", ("context",)))
            if isinstance(venv.observation_space, gym.spaces.Dict)
            else None
        )
        venv = VecNormalize(venv, norm_obs_keys=keys)
    device = args.device
    if device == "auto" and not issubclass(algo, OffPolicyAlgorithm):
        device = "cpu"  # on-policy SB3 with CPU envs runs faster on the CPU
    try:
        model = algo(
            policy,
            venv,
            policy_kwargs=policy_kwargs,
            seed=args.seed,
            device=device,
            verbose=args.verbose,
            tensorboard_log=_tensorboard_dir(args, run_dir),
            **(algo_defaults | config),
        )
    except (TypeError, ValueError, AssertionError) as err:  # SB3's own checks of the values
        venv.close()
        raise ValueError(
            f"{algo.__name__} rejected the config {config} with policy_kwargs {policy_kwargs}: "
            f"{type(err).__name__}: {err}"
        ) from None
    return model


def _tensorboard_dir(args: TrainArgs, run_dir: Path) -> str | None:
    """``run_dir/tb``, or ``--tensorboard-log DIR/<run name>`` (one root for many runs)."""
    if not args.tensorboard:
        return None
    return str(
        Path(args.tensorboard_log) / run_dir.name if args.tensorboard_log else run_dir / "tb"
    )


def _callbacks(args: TrainArgs, model: BaseAlgorithm, run_dir: Path) -> list[BaseCallback]:
    saved = yaml.safe_load((run_dir / "config.yml").read_text())
    n_envs = model.get_env().num_envs
    callbacks: list[BaseCallback] = []
    if args.save_freq > 0:
        callbacks.append(
            CheckpointEvery(max(args.save_freq // n_envs, 1), run_dir, args.keep_checkpoints)
        )
    if args.eval_freq > 0:
        env_kwargs = saved["hyperparams"].get("env_kwargs") or {}
        eval_envs = {}
        for split in splits_of(saved["env"]):
            env = make_envs(saved["env"], 1, args.seed + 1000, env_kwargs, split=split)
            if isinstance(model.get_env(), VecNormalize):
                env = VecNormalize(
                    env,
                    norm_obs_keys=model.get_env().norm_obs_keys,
                    training=False,
                    norm_reward=False,
                )
            eval_envs[split] = env
        callbacks.append(
            SplitEvalCallback(
                eval_envs, max(args.eval_freq // n_envs, 1), args.eval_episodes, run_dir
            )
        )
    return callbacks


def _learn(
    args: TrainArgs,
    model: BaseAlgorithm,
    n_timesteps: int,
    run_dir: Path,
    resumed: bool,
) -> Path:
    remaining = n_timesteps - (model.num_timesteps if resumed else 0)

    def save() -> None:
        write_manifest(run_dir, model.num_timesteps, save_model_files(model, run_dir))

    with save_on_stop(run_dir, save, lambda: model.num_timesteps):
        if remaining > 0:
            model.learn(
                remaining,
                callback=_callbacks(args, model, run_dir),
                progress_bar=args.progress_bar,
                tb_log_name="run",
                reset_num_timesteps=not resumed,
            )
    return run_dir


def save_model_files(model: BaseAlgorithm, folder: Path) -> list[str]:
    """Write what resuming ``model`` needs into ``folder``, each file atomically: ``model.zip``,
    ``vecnormalize.pkl`` (with normalisation), ``replay_buffer.pkl`` (off-policy). Returns the
    names written."""
    names = ["model.zip"]
    atomic_save(folder / "model.zip", model.save)
    venv = model.get_vec_normalize_env()
    if venv is not None:
        atomic_save(folder / "vecnormalize.pkl", lambda tmp: venv.save(str(tmp)))
        names.append("vecnormalize.pkl")
    if isinstance(model, OffPolicyAlgorithm):
        atomic_save(folder / "replay_buffer.pkl", model.save_replay_buffer)
        names.append("replay_buffer.pkl")
    return names


class CheckpointEvery(BaseCallback):
    """Every ``every`` calls (env steps / n_envs) a complete checkpoint in
    ``run_dir/checkpoints/step_<N>/`` (:func:`agents.run_folder.write_checkpoint`: model,
    normalisation, replay buffer, manifest last; the newest ``keep`` stay)."""

    def __init__(self, every: int, run_dir: Path, keep: int) -> None:
        super().__init__()
        self.every, self.run_dir, self.keep = every, run_dir, keep

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            write_checkpoint(
                self.run_dir,
                self.num_timesteps,
                lambda folder: save_model_files(self.model, folder),
                self.keep,
            )
        return True


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


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yml"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run folder (no config.yml)")
    return yaml.safe_load(path.read_text())


def _resume(args: TrainArgs) -> Path:
    run_dir = Path(args.resume)
    saved = read_run_config(run_dir)
    algo, algo_defaults = algo_class(saved["algo"])
    config = dict(saved["hyperparams"])
    env_kwargs = config.pop("env_kwargs", None) or {}
    source, note = resume_source(run_dir)
    remove_partial_files(run_dir)
    if note:
        print(note)
    venv = make_envs(saved["env"], saved["n_envs"], saved["seed"], env_kwargs, split="train")
    if (source / "vecnormalize.pkl").is_file():
        vec = load_vecnormalize(source / "vecnormalize.pkl")
        vec.set_venv(venv)
        venv = vec
    device = args.device if args.device != "auto" or issubclass(algo, OffPolicyAlgorithm) else "cpu"
    model = load_model(algo, source / "model.zip", env=venv, device=device)
    model.tensorboard_log = _tensorboard_dir(args, run_dir)
    if isinstance(model, OffPolicyAlgorithm) and (source / "replay_buffer.pkl").is_file():
        try:
            model.load_replay_buffer(source / "replay_buffer.pkl")
        except Exception as err:  # unpickling errors of every kind mean the same to a user
            raise ValueError(
                f"{source / 'replay_buffer.pkl'} is corrupt or not a replay buffer "
                f"({type(err).__name__}: {err}); delete it to resume with an empty buffer "
                "(refilled from learning_starts)"
            ) from None
    resumed_args = dataclasses.replace(args, algo=saved["algo"], env=saved["env"])
    return _learn(
        resumed_args,
        model,
        int(args.timesteps or saved["n_timesteps"]),
        run_dir,
        resumed=True,
    )
