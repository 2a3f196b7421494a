"""Throughput of the Fetch tasks on the batched CPU backend against the gymnasium env, in one run.

For each task: env-steps/s of the gymnasium-robotics env (``hyperrl/ContextualFetch*``, one env,
random actions, resets included) and of its batched twin (:class:`envs.manipulation.native.
NativeFetch`, physics with observations, rewards and auto-resets) at each number of worlds; then,
with ``--her``, where a step of the on-device SAC with hindsight relabelling goes on FetchPush
(``--her-envs`` worlds): one vector step of the actor against one update of ``--batch`` samples,
the update eager and compiled (``--compile``, the trainer's ``compile: true``).
Prints Markdown tables (``--out`` also writes them)::

    python scripts/bench_fetch.py --envs 64 256 --her --compile both
    python scripts/bench_fetch.py --tasks Push --envs 16 --steps 5   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import gymnasium as gym
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

import envs  # noqa: E402
from agents.batched.train import build  # noqa: E402


def timed(fn: Callable[[], int], repeats: int) -> float:
    """Units per second of ``fn`` (which returns the units it did), after one warm-up call."""
    fn()
    start, done = time.perf_counter(), 0
    for _ in range(repeats):
        done += fn()
    return done / (time.perf_counter() - start)


def gymnasium_rate(env_id: str, steps: int) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)

    def run() -> int:
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        return steps

    rate = timed(run, 2)
    env.close()
    return rate


def batched_rate(env_id: str, worlds: int, steps: int) -> float:
    env = envs.make_batched(env_id, worlds, seed=0)
    env.reset()
    generator = torch.Generator().manual_seed(0)

    def run() -> int:
        for _ in range(steps):
            env.step(torch.rand(worlds, 4, generator=generator) * 2 - 1)
        return steps * worlds

    rate = timed(run, 2)
    env.close()
    return rate


def her_split(worlds: int, batch: int, repeats: int, compile: bool) -> tuple[float, float]:
    """Seconds of one vector step of the actor and of one HER update on FetchPush (after the
    first updates, which compile when ``compile``)."""
    config = {"batch_size": batch, "learning_starts": 0, "buffer_size": 100_000, "compile": compile}
    algo = build("hyperrl/BatchedFetchPush-v0", config, worlds, "hyper", "cpu", 0, "her")
    algo.collect(8)
    start = time.perf_counter()
    algo.collect(repeats)
    step = (time.perf_counter() - start) / repeats
    algo.update(3)
    start = time.perf_counter()
    algo.update(repeats)
    return step, (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["Reach", "Push", "Slide", "PickAndPlace"])
    p.add_argument("--envs", nargs="+", type=int, default=[64, 256], help="worlds")
    p.add_argument("--steps", type=int, default=50, help="vector steps per timed call")
    p.add_argument("--her", action="store_true", help="also time the device SAC with HER")
    p.add_argument("--her-envs", type=int, default=64)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument(
        "--compile",
        choices=["off", "on", "both"],
        default="off",
        help="time the HER update eager, compiled, or both",
    )
    p.add_argument("--out", default=None, help="also write the tables here")
    args = p.parse_args()
    header = " | ".join(f"batched, {n} worlds" for n in args.envs)
    lines = [
        f"| task | gymnasium env (1 thread) | {header} |",
        "| --- | ---: |" + " ---: |" * len(args.envs),
    ]
    for task in args.tasks:
        cpu = f"hyperrl/ContextualFetch{task}-v0"
        base = gymnasium_rate(cpu, args.steps)
        cells = []
        for n in args.envs:
            rate = batched_rate(envs.batched_twin(cpu), n, args.steps)
            cells.append(f"{rate:,.0f} ({rate / base:.1f}×)")
        lines.append(f"| {task} | {base:,.0f} | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for compile in modes if args.her else []:
        step, update = her_split(args.her_envs, args.batch, max(4, args.steps // 5), compile)
        how = "compiled" if compile else "eager"
        lines += [
            "",
            f"| FetchPush, HER, {args.her_envs} worlds, {how} | seconds | env-steps/s |",
            "| --- | ---: | ---: |",
            f"| one vector step (actor + physics) | {step:.3f} | {args.her_envs / step:,.0f} |",
            f"| one update, batch {args.batch} | {update:.4f} | |",
        ]
        for k in (1, 4, 16):
            rate = args.her_envs / (step + k * update)
            lines.append(
                f"| gradient_steps {k} per vector step | {step + k * update:.3f} | {rate:,.0f} |"
            )
        print("\n".join(lines[-7:]), flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
