"""The measurements of docs/CONTINUAL.md from run folders (``scripts/report_continual.py``):
retention of earlier tasks over seeds of ``train_continual.py`` runs, and for fine-tuning runs
the final return on their task and the steps their evaluation curve takes to reach the return a
run from scratch ends at, each with a bootstrap interval over seeds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import envs
from agents.adaptation import RunPolicy
from agents.batched.evaluation import evaluate_batched
from agents.benchmark_report import _pyplot, run_curve
from agents.run_config import load_run, statistics_dir


def mean_ci(
    values: Sequence[float], reps: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (one per seed) and its 95 % percentile
    bootstrap interval over them (with three seeds a coarse one: it spans what resampling three
    values can give)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("no values to summarise")
    draws = np.random.default_rng(seed).choice(x, size=(reps, len(x)), replace=True).mean(1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(x.mean()), float(low), float(high)


def read_sequences(runs: Sequence[Path]) -> dict[str, Any]:
    """The ``results.json`` of finished ``train_continual.py`` runs of one sequence: ``{"tasks",
    "runs", "retention" (runs, tasks), "returns" (runs, tasks after, tasks on), "before" (runs,
    tasks)}``.

    :raises ValueError: for a run without results (unfinished) or of another sequence."""
    tasks, rows = None, []
    for run in runs:
        path = Path(run) / "results.json"
        if not path.is_file():
            raise ValueError(f"{run} has no results.json: it has not finished its last task")
        found = json.loads(path.read_text())
        if tasks is not None and found["tasks"] != tasks:
            raise ValueError(f"{run} learned tasks {found['tasks']}, the others {tasks}")
        tasks = found["tasks"]
        rows.append(found)
    return {
        "tasks": tasks,
        "runs": [str(r) for r in runs],
        "retention": np.array([r["retention"] for r in rows]),
        "returns": np.array([r["returns"] for r in rows]),
        "before": np.array([r["before"] for r in rows]),
    }


def final_return(run: Path, worlds: int = 64, seed: int = 2024) -> float:
    """Mean return of a run's final ``model.zip`` (its own observation statistics), one
    deterministic episode in each of ``worlds`` worlds of the train split of its batched env (a
    batched run's ``env_kwargs`` included: a fine-tuning task's ``train_ranges``)."""
    model, config, run_dir, model_path = load_run(Path(run) / "model.zip")
    policy = RunPolicy(model, statistics_dir(run_dir, model_path), torch.device("cpu"))
    kwargs = config.env_kwargs if config.env in envs.BATCHED_ENVS else {}
    env = envs.make_batched(envs.batched_twin(config.env), worlds, "train", "cpu", seed, **kwargs)
    return evaluate_batched(policy, env, seed=seed)["return"]


def steps_to(run: Path, threshold: float, tag: str = "eval/train_return") -> int | None:
    """The first logged step at which ``run``'s ``tag`` reached ``threshold`` (``None``:
    never)."""
    curve = run_curve(Path(run), tag)
    if curve is None:
        return None
    steps, values, _ = curve
    reached = np.nonzero(values >= threshold)[0]
    return int(steps[reached[0]]) if len(reached) else None


def fine_tune_table(
    scratch: Sequence[Path], variants: dict[str, Sequence[Path]], fraction: float = 1 / 3
) -> tuple[str, dict[str, Any]]:
    """Markdown and numbers for fine-tuning runs against runs from scratch, seed by seed (the
    ``i``-th run of every list is one seed): each run's final return, and the steps each
    fine-tuning run took to reach its seed's scratch final return, against ``fraction`` of the
    scratch run's steps."""
    finals = {"scratch": [final_return(r) for r in scratch]}
    budget = [run_curve(Path(r), "eval/train_return")[0][-1] for r in scratch]
    reached: dict[str, list[int | None]] = {}
    for name, runs in variants.items():
        if len(runs) != len(scratch):
            raise ValueError(f"{name}: {len(runs)} runs, but {len(scratch)} from scratch")
        finals[name] = [final_return(r) for r in runs]
        reached[name] = [steps_to(r, f) for r, f in zip(runs, finals["scratch"], strict=True)]
    lines = [
        "| run | final return per seed | mean [95 % CI] | steps to scratch's final, per seed "
        f"| within {fraction:.2g} of scratch's steps |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, values in finals.items():
        mean, low, high = mean_ci(values)
        per_seed = " / ".join(f"{v:,.0f}" for v in values)
        if name == "scratch":
            steps, within = " / ".join(f"({b / 1e6:.2f}M)" for b in budget), "—"
        else:
            hits = reached[name]
            steps = " / ".join("never" if s is None else f"{s / 1e6:.2f}M" for s in hits)
            ok = [s is not None and s <= fraction * b for s, b in zip(hits, budget, strict=True)]
            within = f"{sum(ok)} of {len(ok)} seeds"
        lines.append(
            f"| {name} | {per_seed} | {mean:,.0f} [{low:,.0f}, {high:,.0f}] | {steps} | {within} |"
        )
    return "\n".join(lines), {"finals": finals, "reached": reached, "scratch_steps": budget}


def forgetting_markdown(sequences: dict[str, dict[str, Any]]) -> str:
    """Retention of every earlier task and the last task's final return, per variant: mean over
    seeds with its bootstrap interval, and the seeds' values."""
    first = next(iter(sequences.values()))
    earlier = first["tasks"][:-1]
    head = " | ".join(f"retention of {t}" for t in earlier)
    lines = [
        f"| variant | seeds | {head} | {first['tasks'][-1]} (last task), final return |",
        "| --- | ---: | " + " | ".join("---" for _ in earlier) + " | ---: |",
    ]
    for name, seq in sequences.items():
        cells = []
        for i in range(len(earlier)):
            values = seq["retention"][:, i]
            mean, low, high = mean_ci(values)
            seeds = " / ".join(f"{v:.2f}" for v in values)
            cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}] ({seeds})")
        last = seq["returns"][:, -1, -1]
        mean, low, high = mean_ci(last)
        lines.append(
            f"| {name} | {len(seq['runs'])} | "
            + " | ".join(cells)
            + f" | {mean:,.0f} [{low:,.0f}, {high:,.0f}] |"
        )
    return "\n".join(lines)


def plot_fine_tuning(
    variants: dict[str, Sequence[Path]], path: Path, tag: str = "eval/train_return"
) -> Path:
    """Each variant's ``tag`` against env steps: the mean over its runs (seeds) on their common
    steps, with the range between the lowest and the highest run shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in variants.items():
        curves = [c for c in (run_curve(Path(r), tag) for r in runs) if c is not None]
        if not curves:
            continue
        steps = curves[0][0]
        for curve in curves[1:]:
            steps = np.intersect1d(steps, curve[0])
        values = np.array([np.interp(steps, c[0], c[1]) for c in curves])
        (line,) = ax.plot(steps / 1e6, values.mean(0), label=f"{name} ({len(curves)} seeds)")
        ax.fill_between(steps / 1e6, values.min(0), values.max(0), alpha=0.15,
                        color=line.get_color())  # fmt: skip
    ax.set_xlabel("env steps (M)")
    ax.set_ylabel("return on the task (deterministic)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
