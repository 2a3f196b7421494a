"""Plot runs' evaluation return (or success rate) per context split against wall-clock time
(and env steps).

    python scripts/plot_curves.py runs/ppo/hyperrl_BatchedHalfCheetah-v0_1 RUN2 \\
        --out docs/results/batched_locomotion.png --reference hyperrl/BatchedHalfCheetah-v0=5819
    python scripts/plot_curves.py runs/her_push --metric success_rate --out push.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.benchmark_report import plot_run_curves


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (with tb/ and config.yml)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument(
        "--reference",
        nargs="*",
        default=[],
        metavar="ENV=RETURN",
        help="a dashed line per env id (e.g. the rl-baselines3-zoo return)",
    )
    p.add_argument(
        "--metric",
        choices=("return", "success_rate"),
        default="return",
        help="what to plot (success_rate: goal-reaching envs)",
    )
    args = p.parse_args(argv)
    references = {}
    for item in args.reference:
        env, sep, value = item.rpartition("=")
        if not sep:
            p.error(f"--reference takes ENV=RETURN, got {item!r}")
        references[env] = float(value)
    missing = [str(r) for r in args.runs if not (r / "config.yml").is_file()]
    if missing:
        p.error(f"not run folders (no config.yml): {', '.join(missing)}")
    print(plot_run_curves(args.runs, args.out, references, metric=args.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
