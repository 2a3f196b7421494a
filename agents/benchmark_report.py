"""Figures and per-env tables of a benchmark root or archive (see :mod:`agents.benchmark`,
:mod:`agents.benchmark_archive`).

- :func:`per_env_markdown`: mean return +- standard error over seeds, per env, variant and split
  (raw returns, the numbers to compare against published ones);
- :func:`ratios_markdown`: one variant's IQM over others' (hyper / concat, hyper / FiLM);
- :func:`paired_markdown`: per env, each generated variant against the plain one of about its
  size (:data:`EQUAL_SIZE`), or a candidate design against the default it would replace
  (:data:`CANDIDATES`): the difference of mean returns with a bootstrap 95 % interval;
- :func:`plot_iqm`: the aggregate IQM with its 95 % interval per variant, a panel per split;
- :func:`plot_return_vs_context`: per env, evaluation return against each context feature,
  binned over the feature's bounds, a line per variant (every episode of every seed);
- :func:`plot_feature_sweeps`: per env, return against each feature swept alone over its bounds
  (the others nominal; the cells' ``grid/<feature>`` evaluations), mean over seeds per variant;
- :func:`plot_learning_curves`: per env, the training return (TensorBoard ``rollout/ep_rew_mean``)
  against env steps, mean over seeds, a line per variant.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def per_env_markdown(records: Sequence[dict[str, Any]]) -> str:
    """A Markdown table per env: rows are variants, columns splits, ``mean ± s.e. (n)``, then
    the variant's parameter count and mean training minutes."""
    out = []
    for env in sorted({r["env"] for r in records}):
        rows = [r for r in records if r["env"] == env]
        splits = list(dict.fromkeys(s for r in rows for s in r["returns"]))
        out += [f"**{env}**", "", "| variant | " + " | ".join(splits) + " | params | train min |"]
        out.append("| --- |" + " ---: |" * (len(splits) + 2))
        for variant in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == variant]
            cells = []
            for split in splits:
                vals = np.array([r["returns"][split] for r in mine])
                se = vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else float("nan")
                cells.append(f"{vals.mean():.1f} ± {se:.1f} ({len(vals)})")
            params = np.mean([r["params"] for r in mine])
            minutes = np.mean([r["train_seconds"] for r in mine]) / 60
            cells += [f"{params:,.0f}", f"{minutes:.1f}"]
            out.append(f"| {variant} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


#: generated variant -> the concatenation of about its parameter count on HalfCheetah
EQUAL_SIZE: dict[str, str] = {
    "hyper": "concat_large",
    "hyper_embed8": "concat_256",
    "lowrank_hyper": "concat_256",
    "lowrank_256": "concat_256",
    "hyper_out_224": "concat_256",
    "hyper_out_64": "concat",
}

#: a candidate design -> the default it would replace
CANDIDATES: dict[str, str] = {"hyper_out_64": "hyper"}


def paired_markdown(
    records: Sequence[dict[str, Any]],
    pairs: dict[str, str] = EQUAL_SIZE,
    reps: int = 2000,
    seed: int = 0,
    heading: str = "generated − plain of about its size",
) -> str:
    """Per env, a row per pair ``(generated, plain)`` with 2 or more seeds of each:
    ``mean(generated) - mean(plain)`` per split with a 95 % percentile-bootstrap interval (the
    seeds of each variant resampled on their own), the ratio of means ``(1.05×)`` where the plain
    mean is positive, and both parameter counts. An interval that excludes 0 is a difference the
    seeds resolve. Returns ``""`` when no env has a pair. Other ``pairs`` (:data:`CANDIDATES`)
    take their own ``heading``."""
    rng = np.random.default_rng(seed)
    out = []
    for env in sorted({r["env"] for r in records}):
        rows = [r for r in records if r["env"] == env]
        by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_variant[r["variant"]].append(r)
        present = [
            (gen, plain)
            for gen, plain in pairs.items()
            if len(by_variant[gen]) > 1 and len(by_variant[plain]) > 1
        ]
        if not present:
            continue
        splits = list(dict.fromkeys(s for r in rows for s in r["returns"]))
        out += [f"**{env}**: {heading}, mean return [95% CI]", ""]
        out.append("| difference | " + " | ".join(splits) + " | params |")
        out.append("| --- |" + " ---: |" * (len(splits) + 1))
        for gen, plain in present:
            cells = []
            for split in splits:
                a = np.array([r["returns"][split] for r in by_variant[gen]])
                b = np.array([r["returns"][split] for r in by_variant[plain]])
                diffs = _resampled_means(a, rng, reps) - _resampled_means(b, rng, reps)
                low, high = np.percentile(diffs, [2.5, 97.5])
                ratio = f" ({a.mean() / b.mean():.2f}×)" if b.mean() > 0 else ""
                cells.append(f"{a.mean() - b.mean():+.0f} [{low:+.0f}, {high:+.0f}]{ratio}")
            params = [int(np.mean([r["params"] for r in by_variant[v]])) for v in (gen, plain)]
            out.append(
                f"| {gen} − {plain} | " + " | ".join(cells) + f" | {params[0]:,} / {params[1]:,} |"
            )
        out.append("")
    return "\n".join(out)


def _resampled_means(values: np.ndarray, rng: np.random.Generator, reps: int) -> np.ndarray:
    """``(reps,)`` means of ``values`` resampled with replacement (a bootstrap)."""
    return rng.choice(values, (reps, len(values))).mean(1)


def ratios_markdown(
    summary: dict[str, Any], variant: str = "hyper", against: Sequence[str] = ("concat", "film")
) -> str:
    """``variant``'s IQM divided by each of ``against``'s, per split (docs/RESULTS.md's targets).

    The IQMs are of min-max normalised returns, whose bounds come from every variant in the grid:
    read a ratio together with the per-env tables, especially when the denominator is near 0."""
    lines = [f"| {variant} / | " + " | ".join(summary["splits"]) + " |"]
    lines.append("| --- |" + " ---: |" * len(summary["splits"]))
    for other in against:
        cells = []
        for entries in summary["splits"].values():
            if variant in entries and other in entries and entries[other]["iqm"] > 0:
                cells.append(f"{entries[variant]['iqm'] / entries[other]['iqm']:.2f}")
            else:
                cells.append("–")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_in_distribution_markdown(summary: dict[str, Any], variant: str = "hyper") -> str:
    """``variant``'s IQM over the best variant's, on the in-distribution splits (the target:
    within 5 % of the best)."""
    lines = ["| split | best variant | " + variant + " / best |", "| --- | --- | ---: |"]
    for split, entries in summary["splits"].items():
        if split == "extrapolation" or variant not in entries:
            continue
        best = max(entries, key=lambda v: entries[v]["iqm"])
        top = entries[best]["iqm"]
        ratio = f"{entries[variant]['iqm'] / top:.2f}" if top > 0 else "–"
        lines.append(f"| {split} | {best} | {ratio} |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_iqm(summary: dict[str, Any], path: Path) -> None:
    """Horizontal IQM bars with 95 % intervals, a panel per split."""
    plt = _pyplot()
    splits = list(summary["splits"])
    fig, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 3), sharey=True)
    for ax, split in zip(np.atleast_1d(axes), splits, strict=True):
        entries = summary["splits"][split]
        names = list(entries)
        iqm = np.array([entries[v]["iqm"] for v in names])
        ci = np.array([entries[v]["ci"] for v in names]).T
        ax.barh(names, iqm, xerr=np.abs(ci - iqm), color="tab:blue", alpha=0.7, capsize=3)
        ax.set_title(split)
        ax.set_xlabel("IQM normalised return")
        ax.set_xlim(0, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _episodes(root: Path) -> dict[str, list[dict[str, Any]]]:
    """env -> every evaluation episode of every finished cell, tagged with its variant."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for meta_path in sorted(root.rglob("meta.json")):
        cell = json.loads(meta_path.read_text())["cell"]
        for ep in json.loads((meta_path.parent / "eval.json").read_text())["episodes"]:
            out[cell["env"]].append({"variant": cell["variant"], **ep})
    return out


def plot_return_vs_context(root: Path, out_dir: Path, bins: int = 8) -> list[Path]:
    """One figure per env (``return_vs_context_<env>.png``), a panel per context feature."""
    import envs

    plt = _pyplot()
    written = []
    for env, episodes in _episodes(root).items():
        space = envs.context_space(env)
        fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3), sharey=True)
        for ax, feature in zip(np.atleast_1d(axes), space.features, strict=True):
            edges = np.linspace(*feature.bounds, bins + 1)
            centers = (edges[:-1] + edges[1:]) / 2
            for variant in dict.fromkeys(e["variant"] for e in episodes):
                x = np.array(
                    [e["context"][feature.name] for e in episodes if e["variant"] == variant]
                )
                y = np.array([e["return"] for e in episodes if e["variant"] == variant])
                which = np.clip(np.digitize(x, edges) - 1, 0, bins - 1)
                means = [
                    y[which == b].mean() if (which == b).any() else np.nan for b in range(bins)
                ]
                ax.plot(centers, means, marker="o", ms=3, label=variant)
            ax.axvspan(*feature.train, color="0.9", zorder=0)
            ax.axvspan(*feature.holdout, color="0.75", zorder=0)
            ax.set_xlabel(feature.name)
        title = f"{env}: light = train range, dark = interpolation hole"
        path = out_dir / f"return_vs_context_{env.split('/')[-1]}.png"
        written.append(_finish_panels(fig, axes, "return (binned mean)", title, path))
    return written


def _finish_panels(fig: Any, axes: Any, ylabel: str, title: str, path: Path) -> Path:
    """Label a row of panels (y label left, legend right), title it, write it to ``path``."""
    plt = _pyplot()
    np.atleast_1d(axes)[0].set_ylabel(ylabel)
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_feature_sweeps(root: Path, out_dir: Path) -> list[Path]:
    """One figure per env (``sweeps_<env>.png``), a panel per context feature: the return of each
    variant (mean over seeds, band: standard error) at each point of the feature's sweep."""
    import envs

    sweeps: dict[str, dict[str, dict[str, list]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for meta_path in sorted(root.rglob("meta.json")):
        cell = json.loads(meta_path.read_text())["cell"]
        for sweep in sorted((meta_path.parent / "grid").glob("*/eval.json")):
            feature = sweep.parent.name
            by_value: dict[float, list[float]] = defaultdict(list)
            for ep in json.loads(sweep.read_text())["episodes"]:
                by_value[ep["context"][feature]].append(ep["return"])
            values = sorted(by_value)
            run = (np.array(values), np.array([np.mean(by_value[v]) for v in values]))
            sweeps[cell["env"]][feature][cell["variant"]].append(run)
    plt = _pyplot()
    written = []
    for env, by_feature in sweeps.items():
        space = envs.context_space(env)
        features = [f for f in space.features if f.name in by_feature]
        fig, axes = plt.subplots(1, len(features), figsize=(4 * len(features), 3), sharey=True)
        for ax, feature in zip(np.atleast_1d(axes), features, strict=True):
            for variant, runs in by_feature[feature.name].items():
                x = runs[0][0]
                ys = np.array([y for xs, y in runs if len(xs) == len(x)])
                mean = ys.mean(0)
                se = ys.std(0, ddof=1) / np.sqrt(len(ys)) if len(ys) > 1 else 0 * mean
                (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{variant} ({len(ys)})")
                ax.fill_between(x, mean - se, mean + se, color=line.get_color(), alpha=0.15)
            ax.axvspan(*feature.train, color="0.9", zorder=0)
            ax.axvline(feature.nominal, color="0.6", lw=0.8, ls=":")
            ax.set_xlabel(feature.name)
        title = (
            f"{env}: each feature swept alone over its bounds, the others nominal; "
            "shaded: train range"
        )
        path = out_dir / f"sweeps_{env.split('/')[-1]}.png"
        written.append(_finish_panels(fig, axes, "return (mean over seeds)", title, path))
    return written


def run_curve(
    run_dir: Path, tag: str = "rollout/ep_rew_mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A run's TensorBoard scalar ``tag``: ``(steps, values, minutes)``, sorted by step, minutes
    of wall time since the run's first event of any tag; ``None`` when it was never logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps, values, times, start = [], [], [], np.inf
    for events in sorted((run_dir / "tb").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        for other in tags:
            start = min([start] + [s.wall_time for s in acc.Scalars(other)[:1]])
        if tag in tags:
            for s in acc.Scalars(tag):
                steps.append(s.step)
                values.append(s.value)
                times.append(s.wall_time)
    if not steps:
        return None
    order = np.argsort(steps)
    minutes = (np.array(times) - start) / 60
    return np.array(steps)[order], np.array(values)[order], minutes[order]


#: a cell's training curve in an archive (:mod:`agents.benchmark_archive`), which has no TensorBoard
#: logs: ``{"steps": [...], "values": [...], "minutes": [...]}``
CURVE_FILE = "curve.json"


def _curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """A cell's training curve ``(steps, values)``: its TensorBoard logs', or its archived one."""
    if (run_dir / CURVE_FILE).is_file():
        found = json.loads((run_dir / CURVE_FILE).read_text())
        return np.array(found["steps"]), np.array(found["values"])
    curve = run_curve(run_dir)
    return None if curve is None else curve[:2]


def plot_run_curves(
    runs: Sequence[Path],
    path: Path,
    references: dict[str, float] | None = None,
    splits: Sequence[str] = ("train", "interpolation", "extrapolation"),
    metric: str = "return",
) -> Path:
    """A panel per run: ``metric`` per split (``eval/<split>_<metric>``: ``return`` or
    ``success_rate``) against wall-clock minutes, env steps on a second axis, and a dashed line at
    ``references[env]`` (e.g. the rl-baselines3-zoo return of the env's stock version), the env
    read from ``config.yml``."""
    import yaml

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.4), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        config = yaml.safe_load((run / "config.yml").read_text())
        env = config["env"]
        last = None
        for split in splits:
            curve = run_curve(run, f"eval/{split}_{metric}")
            if curve is not None:
                steps, values, minutes = curve
                ax.plot(minutes, values, marker=".", label=split)
                last = (steps, minutes)
        reference = (references or {}).get(env)
        if reference is not None:
            ax.axhline(reference, color="grey", ls="--", lw=1, label="rl-zoo (stock env)")
        if last is not None and len(last[0]) > 1:
            steps, minutes = last
            top = ax.secondary_xaxis(
                "top",
                functions=(
                    lambda m, s=steps, t=minutes: np.interp(m, t, s) / 1e6,
                    lambda x, s=steps, t=minutes: np.interp(x * 1e6, s, t),
                ),
            )
            top.set_xlabel("env steps (M)", fontsize=8)
        ax.set_title(f"{env}, {config.get('n_envs', '?')} envs", fontsize=9, pad=30)
        ax.set_xlabel("wall-clock minutes")
        if metric == "success_rate":
            ax.set_ylim(0.0, 1.0)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(
        "mean return (deterministic)" if metric == "return" else f"{metric} (deterministic)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(root: Path, out_dir: Path, points: int = 50) -> Path | None:
    """``learning_curves.png``: a panel per env, mean over seeds per variant."""
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for meta_path in sorted(root.rglob("meta.json")):
        cell = json.loads(meta_path.read_text())["cell"]
        curve = _curve(meta_path.parent)
        if curve is not None:
            curves[cell["env"]][cell["variant"]].append((cell["timesteps"], curve))
    if not curves:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.2))
    for ax, (env, by_variant) in zip(np.atleast_1d(axes), sorted(curves.items()), strict=True):
        for variant, runs in by_variant.items():
            grid = np.linspace(0, max(t for t, _ in runs), points)
            ys = np.array([np.interp(grid, s, v, left=np.nan) for _, (s, v) in runs])
            with warnings.catch_warnings():  # before the first logged episode: nothing to average
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(grid, np.nanmean(ys, 0), label=variant)
        ax.set_title(env, fontsize=9)
        ax.set_xlabel("env steps")
    np.atleast_1d(axes)[0].set_ylabel("training return")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
