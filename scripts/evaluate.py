"""Evaluate a run per context split: ``python scripts/evaluate.py runs/ppo/<run> --video``.

Writes eval.json, eval.csv and eval.png (return against context) into the run folder, and with
``--video`` mp4 rollouts (headless: set MUJOCO_GL=egl for MuJoCo envs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from agents.architecture import parse_member  # noqa: E402
from agents.evaluation import evaluate_run  # noqa: E402
from agents.safe_pickle import TRUST_NOTE  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=TRUST_NOTE)
    p.add_argument("run", help="a run folder, or a model .zip inside one")
    p.add_argument("--splits", nargs="*", default=None)
    p.add_argument("-n", "--episodes", type=int, default=10, help="per split (or grid point)")
    p.add_argument("--grid", type=int, default=None, help="points per feature of a context grid")
    p.add_argument("--grid-features", nargs="*", default=None, help="one or two feature names")
    p.add_argument("--video", action="store_true")
    p.add_argument("--max-videos", type=int, default=6)
    p.add_argument("-o", "--out-dir", default=None, help="default: the run folder")
    p.add_argument(
        "--context-source",
        default="true",
        choices=("true", "inferred", "nominal"),
        help="what the policy reads as its context: the env's (true), the run's adaptation "
        "module's estimate from the episode so far (inferred; train it with train_agent.py "
        "--adapt RUN), or the centre of the train range (nominal); files: eval_<source>.*",
    )
    p.add_argument(
        "--member",
        default=None,
        metavar="W1,W2,...",
        help="for a --policy architecture run: the member to act with, by its hidden widths "
        "(default: the largest); files: eval_member_<widths>.*",
    )
    args = p.parse_args(argv)
    try:
        member = parse_member(args.member) if args.member is not None else None
        result = evaluate_run(
            args.run,
            args.splits,
            args.episodes,
            args.grid,
            args.grid_features,
            args.video,
            args.max_videos,
            args.out_dir,
            context_source=args.context_source,
            member=member,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
