"""Share of steps a trained locomotion policy spends upside down (on its back), per run.

    python scripts/posture.py RUN [RUN ...] [--split train] [-n 2]

A HalfCheetah run whose return stays far below its seed-mates' may have learned to run on its
back; this tells that apart from one that learned nothing (see ``agents/posture.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.posture import mean_upside_down, time_upside_down
from agents.safe_pickle import TRUST_NOTE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=TRUST_NOTE)
    p.add_argument("runs", nargs="+", help="run folders or model .zip files")
    p.add_argument("--split", default="train", help="the context split to play (default: train)")
    p.add_argument("-n", "--episodes", type=int, default=2, help="episodes per run (default: 2)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error("-n/--episodes must be >= 1")
    print(f"{'run':60s} {'return':>9s} {'upside down':>12s}")
    for run in args.runs:
        try:
            rows = time_upside_down(run, args.split, args.episodes)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        mean_return, share = mean_upside_down(rows)
        label = "/".join(Path(run).resolve().parts[-3:])
        print(f"{label[:60]:60s} {mean_return:9.0f} {share:12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
