"""The generalisation benchmark: a grid of {conditioning} x {seed} x {env}, resumable, aggregated.

Each grid cell is an ordinary run folder (``agents.train``) under ``root/<env>/<variant>/seed<k>``,
evaluated per context split (``agents.evaluation``) into ``eval.json``, with ``meta.json`` holding
wall-clock and parameter count. Re-running skips finished cells and resumes interrupted ones.
:func:`aggregate` normalises returns per env (min-max over every cell of that env) and reports the
interquartile mean with bootstrap 95 % intervals per variant and split, computed with ``rliable``
(``bench`` extra).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: variant -> (--policy, extra --hyperparams): the conditioning ladder, one keyword apart
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mlp_no_context": ("none", []),
    "concat": ("concat", []),
    "film": ("film", []),
    "lowrank_hyper": ("lowrank_hyper", []),
    "hyper": ("hyper", []),
    "chunked_hyper": ("hyper", ["policy_kwargs:{generator: chunked}"]),
}


@dataclass(frozen=True)
class SuiteEnv:
    env: str
    algo: str
    timesteps: int


#: suites: the quick one fits the CPU, the full one is for a GPU machine
SUITES: dict[str, list[SuiteEnv]] = {
    "quick": [
        SuiteEnv("hyperrl/ContextualCartPole-v0", "ppo", 60_000),
        SuiteEnv("hyperrl/ContextualPendulum-v0", "sac", 20_000),
        SuiteEnv("hyperrl/ContextualHalfCheetah-v0", "ppo", 300_000),
    ],
    "full": [
        SuiteEnv("hyperrl/ContextualHalfCheetah-v0", "sac", 1_000_000),
        SuiteEnv("hyperrl/ContextualAnt-v0", "sac", 1_000_000),
        SuiteEnv("hyperrl/ContextualWalker2d-v0", "sac", 1_000_000),
        SuiteEnv("hyperrl/ContextualFetchPush-v0", "her", 1_000_000),
    ],
}


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    env: str
    algo: str
    variant: str
    seed: int
    timesteps: int
    hyperparams: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.env.replace('/', '_')}/{self.variant}/seed{self.seed}"


def expand_grid(
    suite: str,
    seeds: int,
    variants: Sequence[str] | None = None,
    timesteps: int | None = None,
    envs: Sequence[str] | None = None,
) -> list[Cell]:
    """Every cell of ``suite`` x ``variants`` x ``range(seeds)``.

    :param timesteps: override the suite's budgets (for smoke runs).
    :param envs: only these env ids of the suite.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {list(SUITES)}")
    variants = list(variants or VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    suite_envs = [e for e in SUITES[suite] if envs is None or e.env in envs]
    if not suite_envs:
        raise ValueError(f"none of {list(envs or [])} is in suite {suite!r}")
    return [
        Cell(e.env, e.algo, v, s, timesteps or e.timesteps, tuple(VARIANTS[v][1]))
        for e in suite_envs
        for v in variants
        for s in range(seeds)
    ]


def run_cell(cell: Cell, root: Path, eval_episodes: int = 10) -> Path:
    """Train (or resume) and evaluate one cell; a finished cell is left as it is."""
    from agents.evaluation import evaluate_run
    from agents.train import TrainArgs, train

    run_dir = root / cell.name
    if (run_dir / "eval.json").is_file():
        return run_dir
    start = time.perf_counter()
    common = dict(seed=cell.seed, timesteps=cell.timesteps, progress_bar=False, eval_freq=0)
    if (run_dir / "config.yml").is_file():
        train(TrainArgs(resume=str(run_dir), **common))
    else:
        train(
            TrainArgs(
                algo=cell.algo,
                env=cell.env,
                policy=VARIANTS[cell.variant][0],
                hyperparams=list(cell.hyperparams),
                run_dir=str(run_dir),
                **common,
            )
        )
    seconds = time.perf_counter() - start
    result = evaluate_run(run_dir, episodes=eval_episodes)
    model = result["model"]
    (run_dir / "meta.json").write_text(
        json.dumps({"cell": cell.__dict__, "train_seconds": seconds, "params": _param_count(model)})
    )
    return run_dir


def _param_count(model_path: str) -> int:
    import zipfile

    import torch

    with zipfile.ZipFile(model_path) as z, z.open("policy.pth") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    return int(sum(t.numel() for t in state.values()))


def run_grid(
    cells: Sequence[Cell],
    root: Path,
    jobs: int = 1,
    runner: Callable[[Cell, Path], Path] = run_cell,
) -> list[Path]:
    """Run every unfinished cell, ``jobs`` at a time in separate processes."""
    todo = [c for c in cells if not (root / c.name / "eval.json").is_file()]
    if jobs <= 1:
        return [runner(c, root) for c in todo]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(jobs, initializer=_limit_threads, initargs=(threads,))
    with pool:
        return list(pool.map(runner, todo, [root] * len(todo)))


def _limit_threads(threads: int) -> None:
    """Keep ``jobs`` workers from oversubscribing the cores (torch defaults to all of them)."""
    import torch

    torch.set_num_threads(threads)


def collect(root: Path) -> list[dict[str, Any]]:
    """One record per finished cell: env, variant, seed, per-split mean return, params, time."""
    records = []
    for meta_path in sorted(root.rglob("meta.json")):
        meta = json.loads(meta_path.read_text())
        summary = json.loads((meta_path.parent / "eval.json").read_text())["summary"]
        cell = meta["cell"]
        records.append(
            {
                "env": cell["env"],
                "variant": cell["variant"],
                "seed": cell["seed"],
                "returns": {s: v["mean_return"] for s, v in summary.items()},
                "params": meta["params"],
                "train_seconds": meta["train_seconds"],
            }
        )
    return records


def aggregate(records: Sequence[dict[str, Any]], reps: int = 2000) -> dict[str, Any]:
    """Per variant and split: IQM of per-env min-max normalised returns (seeds x envs) with a
    bootstrap 95 % interval (``rliable``), plus mean parameter count and training time."""
    from rliable import library as rly
    from rliable import metrics

    envs = sorted({r["env"] for r in records})
    bounds = {}
    for env in envs:
        values = [v for r in records if r["env"] == env for v in r["returns"].values()]
        low, high = min(values), max(values)
        bounds[env] = (low, high - low if high > low else 1.0)
    variants = list(dict.fromkeys(r["variant"] for r in records))
    splits = list(dict.fromkeys(s for r in records for s in r["returns"]))
    table: dict[str, Any] = {}
    for split in splits:
        scores = {}
        for variant in variants:
            per_env = []
            for env in envs:
                vals = [
                    (r["returns"][split] - bounds[env][0]) / bounds[env][1]
                    for r in records
                    if r["env"] == env and r["variant"] == variant and split in r["returns"]
                ]
                per_env.append(sorted(vals))
            n = min(len(v) for v in per_env)
            if n:
                scores[variant] = np.array([v[:n] for v in per_env]).T  # (seeds, envs)
        points, intervals = rly.get_interval_estimates(
            scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps
        )
        table[split] = {
            v: {
                "iqm": float(points[v][0]),
                "ci": [float(intervals[v][0][0]), float(intervals[v][1][0])],
            }
            for v in scores
        }
    costs = {
        v: {
            "params": float(np.mean([r["params"] for r in records if r["variant"] == v])),
            "train_seconds": float(
                np.mean([r["train_seconds"] for r in records if r["variant"] == v])
            ),
        }
        for v in variants
    }
    return {"envs": envs, "splits": table, "costs": costs}


def markdown(summary: dict[str, Any]) -> str:
    """The aggregate as Markdown tables (one row per variant, a column per split)."""
    splits = list(summary["splits"])
    lines = [
        "| variant | " + " | ".join(f"{s} IQM [95% CI]" for s in splits) + " | params | train s |",
        "| --- |" + " ---: |" * (len(splits) + 2),
    ]
    for variant, cost in summary["costs"].items():
        cells = []
        for s in splits:
            entry = summary["splits"][s].get(variant)
            cells.append(
                "–"
                if entry is None
                else f"{entry['iqm']:.2f} [{entry['ci'][0]:.2f}, {entry['ci'][1]:.2f}]"
            )
        lines.append(
            f"| {variant} | "
            + " | ".join(cells)
            + f" | {cost['params']:,.0f} | {cost['train_seconds']:.0f} |"
        )
    return "\n".join(lines)
