"""A quick video of one context: ``python scripts/record_video.py RUN --context gravity=12``."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from agents.evaluation import evaluate_run, parse_context  # noqa: E402
from agents.safe_pickle import TRUST_NOTE  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, epilog=TRUST_NOTE)
    p.add_argument("run", help="a run folder, or a model .zip inside one")
    p.add_argument(
        "--context",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="pinned context features (others nominal); default: a train context",
    )
    p.add_argument("-o", "--out-dir", default=None)
    args = p.parse_args(argv)
    try:
        result = evaluate_run(
            args.run,
            episodes=1,
            video=True,
            max_videos=1,
            out_dir=args.out_dir,
            pinned=parse_context(args.context) or None,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"return {result['episodes'][0]['return']:.1f} with context "
        f"{result['episodes'][0]['context']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
