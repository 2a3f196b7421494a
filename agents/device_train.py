"""The run folder around :class:`agents.device_ppo.DevicePPO` (``--algo ppo``, the default) and
:class:`agents.device_sac.DeviceSAC` (``--algo sac``; ``--algo her`` relabels goals): what
``train_agent.py`` does when ``--env`` names a batched env (:data:`envs.BATCHED_ENVS`).

Same folder as the SB3 path (``config.yml``, ``contexts.yml``, ``model.zip``, ``best_model.zip``,
``vecnormalize.pkl``, ``checkpoints/``, ``tb/``), so ``scripts/evaluate.py`` evaluates and films
the run on the batched env's CPU twin. Evaluation during training runs on batched envs of each
split (one deterministic episode per world), logged as ``eval/<split>_return``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.logger import configure

import envs
from agents.algos import policy_for
from agents.config import resolve
from agents.device_ppo import DevicePPO, DevicePPOConfig
from agents.device_sac import DeviceSAC, DeviceSACConfig
from agents.run_folder import (
    BestModel,
    remove_partial_files,
    resume_source,
    save_on_stop,
    stop_on_signals,
    write_checkpoint,
    write_manifest,
    write_text,
)
from envs.batched import BatchedContextualEnv

#: what the trainers' ``save`` writes (those that apply), listed in the run folder's manifest
SAVED_FILES = ("model.zip", "trainer_state.pt", "vecnormalize.pkl")

#: --algo -> (the SB3 class its checkpoints load with, the trainer, the trainer's config)
TRAINERS: dict[str, tuple[type, type, type]] = {
    "ppo": (PPO, DevicePPO, DevicePPOConfig),
    "sac": (SAC, DeviceSAC, DeviceSACConfig),
    "her": (SAC, DeviceSAC, DeviceSACConfig),
}
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
) -> DevicePPO | DeviceSAC:
    """The batched env and the trainer (:data:`TRAINERS`) for a resolved config."""
    config = dict(config)
    sb3_class, trainer, config_class = TRAINERS[algo]
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
    policy, policy_kwargs = policy_for(sb3_class, policy_name, env, env_id)
    if isinstance(policy, str):
        from stable_baselines3.common.policies import MultiInputActorCriticPolicy
        from stable_baselines3.sac.policies import MultiInputPolicy

        policy = MultiInputPolicy if sb3_class is SAC else MultiInputActorCriticPolicy
    return trainer(
        env,
        policy,
        policy_kwargs | extra_policy_kwargs,
        config_class.from_dict(config),
        seed=seed,
    )


def evaluate_batched(
    algo: DevicePPO | DeviceSAC, env: BatchedContextualEnv, seed: int = 1000
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


@contextlib.contextmanager
def distributed_session(device: str) -> Iterator[tuple[int, str]]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (NCCL on GPUs, gloo on the
    CPU) for the ``with`` block and yield ``(rank, this rank's device)``; otherwise
    ``(0, device)``. A group joined here is left together (a barrier after a normal exit) and
    destroyed on the way out: rank 1 exiting while rank 0 still saved, with the group alive,
    aborted about one run in five (``terminate called without an active exception``)."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield 0, device
        return
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield dist.get_rank(), device
        if joined:  # leave together: rank 0 still saves after the others' last collective
            dist.barrier()
    finally:
        if joined:
            dist.destroy_process_group()


def train_on_device(args, run_dir: Path | None = None) -> Path:
    """Train (or, with ``args.resume``, continue) a device-PPO or device-SAC run; Ctrl-C saves.

    Under ``torchrun --nproc-per-node K`` every rank steps its own ``n_envs`` worlds and the
    gradients are averaged (:class:`DevicePPO`, :class:`DeviceSAC`); rank 0 writes the run
    folder, logs and evaluates. ``n_timesteps`` counts the steps of all ranks."""
    with distributed_session(device_of(args.device)) as (rank, device):
        return _train(args, run_dir, rank, device)


def _train(args, run_dir: Path | None, rank: int, device: str) -> Path:
    from agents.train import _tensorboard_dir, new_run_dir, read_run_config, splits_of

    if args.resume:
        run_dir = Path(args.resume)
        saved = read_run_config(run_dir)
    else:
        if args.algo not in TRAINERS:
            raise ValueError(
                f"batched env {args.env} trains with --algo ppo, sac or her (the on-device "
                f"trainers), not {args.algo!r}; use its CPU twin {envs.cpu_twin(args.env)} for "
                "other SB3 algorithms"
            )
        config_class = TRAINERS[args.algo][2]
        config = resolve(args.env, args.algo, config_class, args.conf_file, _overrides(args))
        preset_steps, preset_envs = config.pop("n_timesteps", 1_000_000), config.pop("n_envs", 4096)
        preset_policy = config.pop("policy", "hyper")
        saved = {
            "algo": args.algo,
            "env": args.env,
            "policy": args.policy or preset_policy,
            "n_timesteps": int(args.timesteps or preset_steps),
            "n_envs": int(args.n_envs or preset_envs),
            "seed": args.seed,
            "trainer": "device",
            "hyperparams": config,
        }
        run_dir = (
            Path(args.run_dir) if args.run_dir else new_run_dir(Path("runs"), args.algo, args.env)
        )
        run_dir = _same_on_every_rank(run_dir)
        if rank == 0 and (run_dir / "config.yml").exists():
            raise ValueError(
                f"{run_dir} already holds a run; pass --resume {run_dir} or a new --run-dir"
            )
    algo = build(
        saved["env"],
        saved["hyperparams"],
        saved["n_envs"],
        saved["policy"],
        device,
        saved["seed"],
        saved.get("algo", "ppo"),
    )
    env_kwargs = saved["hyperparams"].get("env_kwargs") or {}
    eval_envs = (
        {
            split: envs.make_batched(
                saved["env"], args.eval_episodes, split, device, None, **env_kwargs
            )
            for split in splits_of(envs.cpu_twin(saved["env"]))
        }
        if args.eval_freq > 0 and rank == 0
        else {}
    )
    if args.resume:
        _restore(algo, run_dir, TRAINERS[saved["algo"]][0])
    if rank != 0:  # the other ranks only step worlds and share gradients
        with stop_on_signals():
            algo.learn(saved["n_timesteps"] - algo.num_timesteps)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        write_text(run_dir / "config.yml", yaml.safe_dump(saved, sort_keys=False))
        if envs.cpu_twin(saved["env"]) in envs.ENVS:  # task suites have no context space
            space = envs.context_space(saved["env"])
            contexts = {
                f.name: {k: v for k, v in dataclasses.asdict(f).items() if k != "name"}
                for f in space.features
            }
            write_text(run_dir / "contexts.yml", yaml.safe_dump(contexts, sort_keys=False))
    tb = _tensorboard_dir(args, run_dir)
    logger = configure(f"{tb}/run_1" if tb else None, ["tensorboard"] if tb else [])
    cpu_env = _cpu_env(saved)
    every = {"eval": args.eval_freq, "save": args.save_freq}
    last = {k: algo.num_timesteps for k in every}
    best = BestModel(run_dir)

    def periodic(algo: DevicePPO | DeviceSAC, values: dict[str, float]) -> None:
        if every["eval"] > 0 and algo.num_timesteps - last["eval"] >= every["eval"]:
            last["eval"] = algo.num_timesteps
            for split, env in eval_envs.items():
                result = evaluate_batched(algo, env, seed=algo.seed + 1000)
                for key, value in result.items():
                    logger.record(f"eval/{split}_{key}", value)
                if split == "train":
                    algo.model.num_timesteps = algo.num_timesteps
                    best.offer(result["return"], algo.num_timesteps, algo.model.save)
            logger.dump(algo.num_timesteps)
        if every["save"] > 0 and algo.num_timesteps - last["save"] >= every["save"]:
            last["save"] = algo.num_timesteps
            write_checkpoint(
                run_dir,
                algo.num_timesteps,
                lambda folder: algo.save(folder, cpu_env),
                args.keep_checkpoints,
            )

    remaining = saved["n_timesteps"] - algo.num_timesteps
    warp = envs.BATCHED_ENVS[saved["env"]].entry_point.startswith("envs.warp_")
    if warp and torch.device(device).type == "cpu":
        print(
            f"note: MuJoCo Warp runs on its CPU backend here ({saved['n_envs']} worlds): fine "
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


def _same_on_every_rank(path: Path) -> Path:
    """Rank 0's ``path`` on every rank (a new run folder's name depends on what exists)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return path
    box = [str(path)]
    dist.broadcast_object_list(box, 0)
    return Path(box[0])


def _overrides(args) -> dict[str, Any]:
    from agents.config import parse_overrides

    return parse_overrides(args.hyperparams)


def _cpu_env(saved: dict[str, Any]):
    import gymnasium as gym

    kwargs = envs.twin_kwargs(saved["env"], saved["hyperparams"].get("env_kwargs") or {})
    return gym.make(envs.cpu_twin(saved["env"]), **kwargs)


def _restore(algo: DevicePPO | DeviceSAC, run_dir: Path, sb3_class: type) -> None:
    """Continue from the run's newest complete save (:func:`agents.run_folder.resume_source`)."""
    from agents.train import load_model

    source, note = resume_source(run_dir)
    remove_partial_files(run_dir)
    if note:
        print(note)
    load_model(sb3_class, source / "model.zip", device="cpu")  # a clear error for a bad file
    algo.restore(source)
