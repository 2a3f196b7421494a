"""Throughput of the batched path (on-device trainers) against SB3 PPO on the same machine.

For each number of worlds: env-steps/s of the batched env alone (random actions; physics with
observations, rewards and auto-resets), of a rollout with the hyper policy
(``DevicePPO.collect``), and of training end to end (rollout + update); then SB3 PPO with the
same hyper policy on the CPU twin (``--sb3-envs`` subprocess envs) as the reference. Prints a
Markdown table with ratios to SB3 (``--out`` also writes it) and where a training iteration's
time goes: physics (``train / physics``), the policy and copies of the rollout (``train /
rollout - train / physics``) and the update (``1 - train / rollout``), and the seconds one
rollout's update takes alone (``update (s)``, on a stored rollout). ``--conditionings hyper
lowrank_hyper`` adds a row per kind of head, ``--compile both`` a row per head with the compiled
minibatch step (``compile: true``; compiled in two untimed warm-up iterations). The ratio is of
throughput under each path's own settings, not of equal work per sample: the device path updates
5 epochs of minibatches of whole worlds (about 16k samples, or ``--minibatches`` per rollout),
SB3 its defaults (10 epochs of 64 samples).

On a GPU the env is MuJoCo Warp's (``hyperrl/WarpHalfCheetah-v0``); on the CPU, MuJoCo's own
threads (``hyperrl/BatchedHalfCheetah-v0``, :mod:`envs.locomotion.native`):

    python scripts/bench_gpu.py --env hyperrl/WarpHalfCheetah-v0 --envs 1024 4096 16384
    python scripts/bench_gpu.py --device cpu --envs 64 256 512 --minibatches 16 --sb3-envs 2
    python scripts/bench_gpu.py --device cpu --envs 16 64 --steps 8 --sb3-envs 2   # a smoke run

The generated-head minibatch cost alone: ``python scripts/bench_hypernet.py --sizes 64 256 256 8
--batches 16384 --contexts 512 --device cuda`` (one head per world over its 32 samples).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

import torch

os.environ.setdefault("MUJOCO_GL", "egl")

import envs  # noqa: E402
from agents.batched.ppo import DevicePPO, DevicePPOConfig  # noqa: E402
from agents.batched.trainer import distribution_checks  # noqa: E402
from hyperrl import CONDITIONINGS, HyperActorCriticPolicy  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], int], device: torch.device, repeats: int) -> float:
    """env-steps/s of ``fn`` (which returns the env steps it took), after one warm-up call."""
    fn()
    _sync(device)
    start, steps = time.perf_counter(), 0
    for _ in range(repeats):
        steps += fn()
    _sync(device)
    return steps / (time.perf_counter() - start)


def device_rates(
    env_id: str,
    n: int,
    device: str,
    steps: int,
    repeats: int,
    conditionings: Sequence[str] = ("hyper",),
    tf32: bool = True,
    minibatches: int | None = None,
    settle: int = 0,
    compile_modes: Sequence[bool] = (False,),
    check_distributions: bool = False,
) -> dict[str, dict[str, float]]:
    """Per kind of head (``"hyper"``, or ``"hyper +compile"`` for a compiled update):
    ``physics`` (measured once, the same env for every head), ``rollout``, ``train`` and
    ``update`` (one rollout's update alone) env-steps/s. The distributions check their arguments
    iff ``check_distributions``, as in training (:func:`distribution_checks`)."""
    env = envs.make_batched(env_id, n, "train", device, seed=0)
    dev = env.device
    env.reset()
    low = torch.as_tensor(env.action_space.low, device=dev)
    high = torch.as_tensor(env.action_space.high, device=dev)

    def physics() -> int:
        for _ in range(steps):
            env.step(low + (high - low) * torch.rand(n, *low.shape, device=dev))
        return steps * n

    for _ in range(settle):  # past the first steps after a reset, which cost less
        env.step(low + (high - low) * torch.rand(n, *low.shape, device=dev))
    physics_rate = rate(physics, dev, repeats)
    # minibatches of about 16,384 samples (or as asked), made of whole worlds
    wanted = minibatches or max(1, n * steps // 16384)
    n_minibatches = max(k for k in range(1, wanted + 1) if n % k == 0)
    out = {}
    with distribution_checks(check_distributions):  # as in training
        for conditioning, compiled in ((c, m) for c in conditionings for m in compile_modes):
            cfg = DevicePPOConfig(
                n_steps=steps, n_minibatches=n_minibatches, n_epochs=5, tf32=tf32, compile=compiled
            )
            policy_kwargs = {"conditioning": conditioning, "context_keys": ("context",)}
            algo = DevicePPO(env, HyperActorCriticPolicy, policy_kwargs, cfg)
            if compiled:  # compiles for the first shapes, then with dynamic sizes
                for _ in range(2):
                    algo.update(algo.collect())

            def rollout(algo: DevicePPO = algo) -> int:
                algo.collect()
                return steps * n

            def train(algo: DevicePPO = algo) -> int:
                algo.update(algo.collect())
                return steps * n

            stored = algo.collect()

            def update(algo: DevicePPO = algo, stored: dict = stored) -> int:
                algo.update(stored)  # the same rollout, again and again
                return steps * n

            out[conditioning + (" +compile" if compiled else "")] = {
                "physics": physics_rate,
                "rollout": rate(rollout, dev, repeats),
                "train": rate(train, dev, repeats),
                "update": rate(update, dev, repeats),
            }
    return out


def sb3_rate(env_id: str, n_envs: int, steps: int) -> float:
    """SB3 PPO (hyper policy, CPU envs in subprocesses, the policy on the CPU: faster than CUDA
    for SB3's one-step-at-a-time rollouts)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    vec_cls = SubprocVecEnv if n_envs > 1 else None
    venv = make_vec_env(envs.cpu_twin(env_id), n_envs=n_envs, seed=0, vec_env_cls=vec_cls)
    model = PPO(
        HyperActorCriticPolicy,
        venv,
        n_steps=max(64, 2048 // n_envs),
        batch_size=64,
        policy_kwargs={"context_keys": ("context",)},
        device="cpu",
    )
    model.learn(model.n_steps * n_envs)  # warm-up
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    venv.close()
    return steps / seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--env",
        default=None,
        choices=sorted(envs.BATCHED_ENVS),
        help="default: hyperrl/WarpHalfCheetah-v0 (CUDA), hyperrl/BatchedHalfCheetah-v0 (CPU)",
    )
    p.add_argument(
        "--envs", type=int, nargs="+", default=None, help="default: 1024 4096 16384 (CUDA), "
        "64 256 512 (CPU)"
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=32, help="rollout length (n_steps)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    p.add_argument(
        "--conditionings",
        nargs="+",
        default=["hyper"],
        choices=CONDITIONINGS,
        help="the device policies' heads, a row each (SB3's reference keeps hyper)",
    )
    p.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the device trainer's TF32 matmuls on CUDA (its default: on)",
    )
    p.add_argument(
        "--minibatches", type=int, default=None, help="per rollout (default: ~16k samples each)"
    )
    p.add_argument(
        "--settle",
        type=int,
        default=0,
        help="random-action steps before physics is timed (the first steps after a reset, the "
        "robot falling onto the floor, are cheaper than running: on the CPU backend, HalfCheetah "
        "at 512 worlds steps ~40k/s right after a reset, ~26k/s after 200 steps)",
    )
    p.add_argument(
        "--compile",
        choices=["off", "on", "both"],
        default="off",
        help="the device trainer's minibatch step eager (off), compiled (on) or a row of each",
    )
    p.add_argument(
        "--check-distributions",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch's argument checks of the action distributions (a host sync each on CUDA; "
        "the trainers' default: off)",
    )
    p.add_argument("--sb3-envs", type=int, default=16, help="0: no SB3 reference")
    p.add_argument("--sb3-steps", type=int, default=8192)
    p.add_argument("--out", default=None, help="also write the table here")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.env is None:
        args.env = "hyperrl/WarpHalfCheetah-v0" if cuda else "hyperrl/BatchedHalfCheetah-v0"
    if args.envs is None:
        args.envs = [1024, 4096, 16384] if cuda else [64, 256, 512]
    reference = sb3_rate(args.env, args.sb3_envs, args.sb3_steps) if args.sb3_envs else None
    name = torch.cuda.get_device_name() if cuda else "CPU"
    tf32 = f", TF32 {'on' if args.tf32 else 'off'}" if cuda else ""
    sb3 = (
        f"SB3 PPO reference ({args.sb3_envs} CPU envs): {reference:,.0f} env-steps/s"
        if reference
        else "no SB3 reference"
    )
    lines = [
        f"{args.env} on {args.device} ({name}), torch {torch.__version__}, rollout "
        f"{args.steps} steps{tf32}; {sb3}",
        "",
        "| worlds | heads | physics steps/s | rollout steps/s | train steps/s | time: physics / "
        "policy / update | update (s) | train × SB3 |",
        "| ---: | --- | ---: | ---: | ---: | :---: | ---: | ---: |",
    ]
    for n in args.envs:
        rates = device_rates(
            args.env,
            n,
            args.device,
            args.steps,
            args.repeats,
            args.conditionings,
            args.tf32,
            args.minibatches,
            args.settle,
            {"off": (False,), "on": (True,), "both": (False, True)}[args.compile],
            args.check_distributions,
        )
        for conditioning, r in rates.items():
            # shares of a training iteration's time (seconds per step are 1 / rate)
            physics = r["train"] / r["physics"]
            update = 1 - r["train"] / r["rollout"]
            policy = 1 - physics - update
            ratio = f"{r['train'] / reference:.1f}" if reference else "—"
            lines.append(
                f"| {n:,} | {conditioning} | {r['physics']:,.0f} | {r['rollout']:,.0f} | "
                f"{r['train']:,.0f} | {physics:.0%} / {policy:.0%} / {update:.0%} | "
                f"{args.steps * n / r['update']:.3f} | {ratio} |"
            )
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
