"""Compare a run's return with the true, inferred and nominal context, per split, on its batched
twin: ``python scripts/evaluate_adaptation.py RUN [RUN ...]``.

Every source plays the same contexts and initial states (one deterministic episode per world).
The inferred context needs the run's adaptation module (``train_agent.py --adapt RUN``); runs
without one (e.g. a no-context baseline) are evaluated on the sources they can take. Prints a
markdown table per split (mean over the runs given, with their spread) and the estimate's mean
absolute error per feature, in the feature's own units; ``--json`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from agents.adaptation import ADAPTATION_FILE, CONTEXT_SOURCES, evaluate_sources, settling
from agents.safe_pickle import TRUST_NOTE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=TRUST_NOTE)
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--splits", nargs="*", default=None, help="default: every split of the env")
    p.add_argument("--sources", nargs="*", default=list(CONTEXT_SOURCES), choices=CONTEXT_SOURCES)
    p.add_argument("--worlds", type=int, default=64, help="episodes per split and source")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="with --change-at: draw the estimate's error per step of every run here",
    )
    p.add_argument(
        "--change-at",
        type=int,
        default=None,
        metavar="T",
        help="also change every world's context after T steps of an episode and report how "
        "many steps the inferred context takes to settle (train split)",
    )
    args = p.parse_args(argv)
    if args.worlds < 1:
        p.error(f"--worlds must be a positive integer, got {args.worlds}")
    results = {}
    try:
        for run in args.runs:
            sources = [
                s for s in args.sources
                if s != "inferred" or (Path(run) / ADAPTATION_FILE).is_file()
            ]  # fmt: skip
            results[run] = evaluate_sources(run, args.splits, sources, args.worlds, args.device)
        if args.change_at is not None:
            for run in args.runs:
                if (Path(run) / ADAPTATION_FILE).is_file():
                    change = settling(run, args.change_at, worlds=args.worlds, device=args.device)
                    results[run]["context_change"] = change
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table({r: {k: v for k, v in res.items() if k != "context_change"}
                 for r, res in results.items()}))  # fmt: skip
    for run, res in results.items():
        if "context_change" in res:
            change = res["context_change"]
            print(
                f"{run}: context changed after {args.change_at} steps: estimate error "
                f"{change['before']:.3f} before, peak {change['peak']:.3f}, back within 25 % "
                f"after {change['settle_steps']} steps"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.plot and args.change_at is not None:
        plot_change(results, args.change_at, Path(args.plot))
    return 0


def plot_change(results: dict[str, dict], change_at: int, path: Path) -> None:
    """The estimate's mean error per step of each run's episodes, the change marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for run, res in results.items():
        if "context_change" in res:
            error = res["context_change"]["error"]
            ax.plot(range(len(error)), error, lw=1, label=Path(run).name)
    ax.axvline(change_at, color="k", ls="--", lw=0.8)
    ax.set_xlabel("step of the episode")
    ax.set_ylabel("mean |estimate - true| (scaled)")
    ax.set_title("inferred context: every world's context redrawn at the dashed line", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: per split, each source's mean return over the runs (± std, runs), the
    inferred ÷ true ratio (runs with a positive true return), and the estimate's mean error per
    feature."""
    splits = list(dict.fromkeys(s for r in results.values() for s in r))
    lines = ["| split | " + " | ".join(f"{s} return" for s in CONTEXT_SOURCES)
             + " | inferred ÷ true | estimate's mean abs error |",
             "| --- |" + " ---: |" * (len(CONTEXT_SOURCES) + 1) + " --- |"]  # fmt: skip
    for split in splits:
        rows = [r[split] for r in results.values() if split in r]
        cells = []
        for source in CONTEXT_SOURCES:
            values = [row[f"{source}_return"] for row in rows if f"{source}_return" in row]
            cells.append(_mean(values))
        # a ratio of returns means "this fraction of the return" only where returns are positive
        pairs = [
            row["inferred_return"] / row["true_return"]
            for row in rows
            if "inferred_return" in row and row.get("true_return", 0) > 0
        ]
        ratio = f"{np.mean(pairs):.2f}" if pairs else "–"
        errors = [row["abs_error"] for row in rows if "abs_error" in row]
        error = ", ".join(
            f"{name} {np.mean([e[name] for e in errors]):.3g}" for name in (errors or [{}])[0]
        )
        lines.append(f"| {split} | " + " | ".join(cells) + f" | {ratio} | {error or '–'} |")
    return "\n".join(lines)


def _mean(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{np.mean(values):,.0f} ± {np.std(values):,.0f} ({len(values)})"


if __name__ == "__main__":
    sys.exit(main())
