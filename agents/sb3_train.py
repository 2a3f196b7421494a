"""The SB3 path of ``train_agent.py``: an SB3 algorithm on gymnasium envs, its callbacks
(evaluation on every context split, checkpoints) and resuming.

A run folder holds ``config.yml`` (everything needed to rebuild the run), ``contexts.yml`` (the
env's context features and splits), ``model.zip``, ``best_model.zip``, ``vecnormalize.pkl`` and
``replay_buffer.pkl`` where they apply, ``checkpoints/`` and TensorBoard events in ``tb/``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, sync_envs_normalization

import envs
from agents.algos import BATCHED_ONLY, GOAL_KEYS, algo_class, policy_for
from agents.architecture import member_wrapper, training_wrapper
from agents.config import parse_overrides, resolve
from agents.init_from import InitFrom, apply_freeze, check_normalisation, initialise, load_source
from agents.run_config import RunConfig, TrainArgs, load_model, make_envs, read_run_config
from agents.run_folder import (
    BestModel,
    atomic_save,
    prepare_resume,
    save_on_stop,
    write_checkpoint,
    write_manifest,
)
from agents.safe_pickle import load_vecnormalize
from hyperrl.policies import norm_obs_keys
from hyperrl.policies.architecture import ARCHITECTURE_KEY
from hyperrl.policies.diagnostics import generated_weight_stats


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
                vec = self.model.get_vec_normalize_env()  # the best model's own statistics
                stats = (lambda tmp, vec=vec: vec.save(str(tmp))) if vec is not None else None
                self.best.offer(mean, self.model.num_timesteps, self.model.save, stats)
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


def train_sb3(args: TrainArgs) -> Path:
    """Train (or, with ``args.resume``, continue) an SB3 run; returns its folder. Ctrl-C and
    termination signals save the model and everything needed to ``--resume``."""
    if args.resume:
        return _resume(args)
    algo, algo_defaults = algo_class(args.algo)
    config = resolve(args.env, args.algo, algo, args.conf_file, parse_overrides(args.hyperparams))
    run = RunConfig.resolved(args, config, "sb3")
    run_dir = args.new_run_folder()
    # build first: a config the env or policy rejects must not leave a half-made run folder
    model = _build(args, run, algo, algo_defaults, run_dir)
    if run.init_from is not None:
        _start_from(model, InitFrom(**run.init_from))
    run_dir.mkdir(parents=True, exist_ok=True)
    run.write(run_dir)
    return _learn(args, run, model, run_dir, resumed=False)


def _start_from(model: BaseAlgorithm, init: InitFrom) -> None:
    """``--init-from``: the source policy (and its observation statistics) in ``model``."""
    source, stats = load_source(init)
    venv = model.get_vec_normalize_env()
    check_normalisation(init, stats, venv is not None and venv.norm_obs)
    initialise(model, source, init)
    if venv is not None and stats is not None:
        venv.obs_rms = copy.deepcopy(stats.obs_rms)


def _sampling(run: RunConfig) -> Callable[[gym.Env], gym.Env] | None:
    """The training envs' wrapper: a member drawn per episode for an architecture run."""
    return training_wrapper(run.policy, run.hyperparams.get("policy_kwargs"))


def _build(
    args: TrainArgs,
    run: RunConfig,
    algo: type[BaseAlgorithm],
    algo_defaults: dict[str, Any],
    run_dir: Path,
) -> BaseAlgorithm:
    """The model of a new run, on ``run.n_envs`` train-split envs.

    :raises ValueError: when the env or SB3 rejects the config."""
    config = dict(run.hyperparams)
    config.pop("env_kwargs", None)
    normalize = config.pop("normalize", False)
    venv = make_envs(args.env, run.n_envs, args.seed, run.env_kwargs, "train", _sampling(run))
    space = venv.observation_space
    if "replay_buffer_class" in algo_defaults and not (
        isinstance(space, gym.spaces.Dict) and set(space.spaces) >= GOAL_KEYS
    ):
        raise ValueError(
            f"--algo her relabels goals, but {args.env} is not goal-conditioned (its observation "
            f"has no {sorted(GOAL_KEYS)}); use a Fetch env such as "
            "hyperrl/ContextualFetchReach-v0, or --algo sac"
        )
    if run.policy in BATCHED_ONLY:  # a memory: SB3's PPO has none
        try:
            where = f"--env {envs.batched_twin(args.env)}"
        except ValueError:
            where = "a hyperrl/Batched* env"
        raise ValueError(f"--policy {run.policy} trains on the batched PPO only; use {where}")
    policy, policy_kwargs = policy_for(algo, run.policy, venv, args.env)
    policy_kwargs |= config.pop("policy_kwargs", None) or {}
    if normalize:
        # every key but what the policy conditions on (a goal too, and an architecture run's
        # member): identical contexts must stay identical, or every step gets its own head
        keys = None
        if isinstance(space, gym.spaces.Dict):
            raw = list(policy_kwargs.get("context_keys", ("context",)))
            raw += [ARCHITECTURE_KEY] if ARCHITECTURE_KEY in space.spaces else []
            keys = norm_obs_keys(space, raw)
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
            tensorboard_log=args.tensorboard_dir(run_dir),
            **(algo_defaults | config),
        )
    except (TypeError, ValueError, AssertionError) as err:  # SB3's own checks of the values
        venv.close()
        raise ValueError(
            f"{algo.__name__} rejected the config {config} with policy_kwargs {policy_kwargs}: "
            f"{type(err).__name__}: {err}"
        ) from None
    return model


def _callbacks(
    args: TrainArgs, run: RunConfig, model: BaseAlgorithm, run_dir: Path
) -> list[BaseCallback]:
    n_envs = model.get_env().num_envs
    callbacks: list[BaseCallback] = []
    if args.save_freq > 0:
        callbacks.append(
            CheckpointEvery(max(args.save_freq // n_envs, 1), run_dir, args.keep_checkpoints)
        )
    if args.eval_freq > 0:
        eval_envs = {}
        largest_member, _ = member_wrapper(run, None)  # an architecture run's largest member
        for split in envs.splits_of(run.env):
            env = make_envs(run.env, 1, run.seed + 1000, run.env_kwargs, split, largest_member)
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
    args: TrainArgs, run: RunConfig, model: BaseAlgorithm, run_dir: Path, resumed: bool
) -> Path:
    remaining = run.n_timesteps - (model.num_timesteps if resumed else 0)

    def save() -> None:
        write_manifest(run_dir, model.num_timesteps, save_model_files(model, run_dir))

    with save_on_stop(run_dir, save, lambda: model.num_timesteps):
        if remaining > 0:
            model.learn(
                remaining,
                callback=_callbacks(args, run, model, run_dir),
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


def _resume(args: TrainArgs) -> Path:
    run_dir = Path(args.resume)
    run = read_run_config(run_dir)
    algo, _ = algo_class(run.algo)
    source = prepare_resume(run_dir)
    venv = make_envs(run.env, run.n_envs, run.seed, run.env_kwargs, "train", _sampling(run))
    if (source / "vecnormalize.pkl").is_file():
        vec = load_vecnormalize(source / "vecnormalize.pkl")
        vec.set_venv(venv)
        venv = vec
    device = args.device if args.device != "auto" or issubclass(algo, OffPolicyAlgorithm) else "cpu"
    model = load_model(algo, source / "model.zip", env=venv, device=device)
    model.tensorboard_log = args.tensorboard_dir(run_dir)
    if isinstance(model, OffPolicyAlgorithm) and (source / "replay_buffer.pkl").is_file():
        try:
            model.load_replay_buffer(source / "replay_buffer.pkl")
        except Exception as err:  # unpickling errors of every kind mean the same to a user
            raise ValueError(
                f"{source / 'replay_buffer.pkl'} is corrupt or not a replay buffer "
                f"({type(err).__name__}: {err}); delete it to resume with an empty buffer "
                "(refilled from learning_starts)"
            ) from None
    if run.init_from is not None:  # a saved model does not keep requires_grad
        apply_freeze(model.policy, run.init_from["freeze"])
    if args.timesteps:
        run.n_timesteps = args.timesteps
    return _learn(args, run, model, run_dir, resumed=True)
