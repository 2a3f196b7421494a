"""The run folder around the batched trainers, :class:`~agents.batched.ppo.DevicePPO`
(``--algo ppo``, the default) and :class:`~agents.batched.sac.DeviceSAC` (``--algo sac``;
``--algo her`` relabels goals): what ``train_agent.py`` does when ``--env`` names a batched env
(:data:`envs.BATCHED_ENVS`).

Same folder as the SB3 path (``config.yml``, ``contexts.yml``, ``model.zip``, ``best_model.zip``,
``vecnormalize.pkl``, ``checkpoints/``, ``tb/``), so ``scripts/evaluate.py`` evaluates and films
the run on the batched env's CPU twin. Evaluation during training runs on batched envs of each
split (one deterministic episode per world), logged as ``eval/<split>_return``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.logger import configure

import envs
from agents.algos import policy_for
from agents.architecture import space_of
from agents.batched.architecture import for_policy
from agents.batched.distributed import distributed_session, same_on_every_rank
from agents.batched.evaluation import evaluate_batched
from agents.batched.ppo import DevicePPO
from agents.batched.sac import DeviceSAC
from agents.batched.trainer import BatchedTrainer
from agents.config import parse_overrides, resolve
from agents.init_from import InitFrom, apply_freeze, check_normalisation, initialise, load_source
from agents.run_config import RunConfig, TrainArgs, load_model, read_run_config
from agents.run_folder import (
    BestModel,
    prepare_resume,
    save_on_stop,
    stop_on_signals,
    write_checkpoint,
    write_manifest,
)

#: what the trainers' ``save`` writes (those that apply), listed in the run folder's manifest
SAVED_FILES = ("model.zip", "trainer_state.pt", "vecnormalize.pkl")

#: --algo -> the trainer
TRAINERS: dict[str, type[BatchedTrainer]] = {"ppo": DevicePPO, "sac": DeviceSAC, "her": DeviceSAC}
#: what ``--algo her`` adds to the device SAC's config (SB3's HerReplayBuffer default)
HER_DEFAULTS = {"n_sampled_goal": 4}


def device_of(name: str) -> str:
    """``auto`` -> ``cuda`` when there is one, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build(
    env_id: str,
    config: dict[str, Any],
    n_envs: int,
    policy_name: str,
    device: str,
    seed: int,
    algo: str = "ppo",
) -> BatchedTrainer:
    """The batched env and the trainer (:data:`TRAINERS`) for a resolved config."""
    config = dict(config)
    trainer = TRAINERS[algo]
    sb3_class = trainer.sb3_class
    if algo == "her":
        config = HER_DEFAULTS | config
    env_kwargs = config.pop("env_kwargs", None) or {}
    if "normalize" in config:  # the SB3 path's switch: observations and rewards
        normalize = bool(config.pop("normalize"))
        if sb3_class is SAC and normalize:
            raise ValueError("the device SAC does not normalise observations; drop 'normalize'")
        if algo == "ppo":
            config["normalize_obs"] = config["normalize_reward"] = normalize
    extra_policy_kwargs = config.pop("policy_kwargs", None) or {}
    env = envs.make_batched(env_id, n_envs, "train", device, seed, **env_kwargs)
    env = for_policy(env, policy_name, extra_policy_kwargs, seed)
    policy, policy_kwargs = policy_for(sb3_class, policy_name, env, env_id)
    if isinstance(policy, str):
        from stable_baselines3.common.policies import MultiInputActorCriticPolicy
        from stable_baselines3.sac.policies import MultiInputPolicy

        policy = MultiInputPolicy if sb3_class is SAC else MultiInputActorCriticPolicy
    return trainer(
        env,
        policy,
        policy_kwargs | extra_policy_kwargs,
        trainer.config_class.from_dict(config),
        seed=seed,
    )


def _statistics_writer(algo: BatchedTrainer, cpu_env: gym.Env):
    """What writes the trainer's observation statistics as a ``vecnormalize.pkl`` (for the best
    model's own); ``None`` for a trainer that does not normalise."""
    if not getattr(algo, "obs_norm", None):
        return None
    return lambda tmp: algo.vecnormalize(cpu_env).save(str(tmp))


def _start_from(algo: BatchedTrainer, init: InitFrom) -> None:
    """``--init-from``: the source policy (and its observation statistics) in ``algo``."""
    source, stats = load_source(init)
    obs_norm = getattr(algo, "obs_norm", {})
    check_normalisation(init, stats, bool(obs_norm))
    initialise(algo.model, source, init)
    if obs_norm:  # the new task's rewards keep their own scale
        algo.load_vecnormalize_statistics(stats, returns=False)


def train_on_device(args: TrainArgs) -> Path:
    """Train (or, with ``args.resume``, continue) a device-PPO or device-SAC run; Ctrl-C saves.

    Under ``torchrun --nproc-per-node K`` every rank steps its own ``n_envs`` worlds and the
    gradients are averaged (:class:`DevicePPO`, :class:`DeviceSAC`); rank 0 writes the run
    folder, logs and evaluates. ``n_timesteps`` counts the steps of all ranks."""
    with distributed_session(device_of(args.device)) as (rank, device):
        return _train(args, rank, device)


def _train(args: TrainArgs, rank: int, device: str) -> Path:
    if args.resume:
        run_dir = Path(args.resume)
        run = read_run_config(run_dir)
        if args.timesteps:  # -n on --resume: the new total
            run.n_timesteps = args.timesteps
    else:
        if args.algo not in TRAINERS:
            raise ValueError(
                f"batched env {args.env} trains with --algo ppo, sac or her (the on-device "
                f"trainers), not {args.algo!r}; use its CPU twin {envs.cpu_twin(args.env)} for "
                "other SB3 algorithms"
            )
        config_class = TRAINERS[args.algo].config_class
        overrides = parse_overrides(args.hyperparams)
        config = resolve(args.env, args.algo, config_class, args.conf_file, overrides)
        run = RunConfig.resolved(args, config, "device", n_timesteps=1_000_000, n_envs=4096)
        run_dir = same_on_every_rank(args.new_run_folder() if rank == 0 else Path())
    algo = build(run.env, run.hyperparams, run.n_envs, run.policy, device, run.seed, run.algo)
    policy_kwargs = run.hyperparams.get("policy_kwargs") or {}
    member = space_of(policy_kwargs).largest if run.policy == "architecture" else None
    eval_envs = (
        {  # an architecture run is evaluated on its largest member
            split: for_policy(
                envs.make_batched(
                    run.env, args.eval_episodes, split, device, None, **run.env_kwargs
                ),
                run.policy,
                policy_kwargs,
                member=member,
            )
            for split in envs.splits_of(run.env)
        }
        if args.eval_freq > 0 and rank == 0
        else {}
    )
    if args.resume:
        source = prepare_resume(run_dir)
        # a clear error for a bad file
        load_model(TRAINERS[run.algo].sb3_class, source / "model.zip", device="cpu")
        algo.restore(source)
        if run.init_from is not None:  # a saved model does not keep requires_grad
            apply_freeze(algo.policy, run.init_from["freeze"])
    elif run.init_from is not None:
        _start_from(algo, InitFrom(**run.init_from))
    if rank != 0:  # the other ranks only step worlds and share gradients
        with stop_on_signals():
            algo.learn(run.n_timesteps - algo.num_timesteps)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        run.write(run_dir)
    tb = args.tensorboard_dir(run_dir)
    logger = configure(f"{tb}/run_1" if tb else None, ["tensorboard"] if tb else [])
    cpu_env = gym.make(envs.cpu_twin(run.env), **envs.twin_kwargs(run.env, run.env_kwargs))
    every = {"eval": args.eval_freq, "save": args.save_freq}
    last = {k: algo.num_timesteps for k in every}
    best = BestModel(run_dir)

    def periodic(algo: BatchedTrainer, values: dict[str, float]) -> None:
        if every["eval"] > 0 and algo.num_timesteps - last["eval"] >= every["eval"]:
            last["eval"] = algo.num_timesteps
            for split, env in eval_envs.items():
                result = evaluate_batched(algo, env, seed=algo.seed + 1000)
                for key, value in result.items():
                    logger.record(f"eval/{split}_{key}", value)
                if split == "train":
                    algo.sync_model()
                    stats = _statistics_writer(algo, cpu_env)
                    best.offer(result["return"], algo.num_timesteps, algo.model.save, stats)
            logger.dump(algo.num_timesteps)
        if every["save"] > 0 and algo.num_timesteps - last["save"] >= every["save"]:
            last["save"] = algo.num_timesteps
            write_checkpoint(
                run_dir,
                algo.num_timesteps,
                lambda folder: algo.save(folder, cpu_env),
                args.keep_checkpoints,
            )

    remaining = run.n_timesteps - algo.num_timesteps
    if envs.BATCHED_ENVS[run.env].backend == "warp" and torch.device(device).type == "cpu":
        print(
            f"note: MuJoCo Warp runs on its CPU backend here ({run.n_envs} worlds): fine "
            "for tests and small runs, thousands rather than millions of steps/s (see "
            "docs/BENCHMARKS.md); on a GPU machine pass --device cuda"
        )

    def save() -> None:
        algo.save(run_dir, cpu_env)
        write_manifest(run_dir, algo.num_timesteps, SAVED_FILES)

    with save_on_stop(run_dir, save, lambda: algo.num_timesteps):
        if remaining > 0:
            algo.learn(remaining, logger=logger, callback=periodic, progress_bar=args.progress_bar)
    return run_dir
