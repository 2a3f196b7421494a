"""The tables of docs/CONTINUAL.md from run folders, with 95 % bootstrap intervals over seeds.

    python scripts/report_continual.py forgetting \\
        "regulariser=runs/continual/hcvel_reg_s*" "plain=runs/continual/hcvel_plain_s*"
    python scripts/report_continual.py finetune --scratch "runs/finetune/scratch_seed*" \\
        "everything=runs/finetune/all_seed*" "frozen generator=runs/finetune/frozen_gen_seed*" \\
        --plot docs/results/finetune_halfcheetahvel.png

``forgetting`` reads finished ``train_continual.py`` runs (``results.json``); ``finetune``
evaluates each run's final model on 64 worlds of its task and reads its evaluation curve. A
variant is ``NAME=GLOB``; the runs of a glob are taken in sorted order, one per seed, so the
``i``-th run of each variant must be the same seed.
"""

from __future__ import annotations

import argparse
import sys
from glob import glob
from pathlib import Path

from agents.continual_report import (
    fine_tune_table,
    forgetting_markdown,
    plot_fine_tuning,
    read_sequences,
)


def _variants(items: list[str]) -> dict[str, list[Path]]:
    out = {}
    for item in items:
        name, sep, pattern = item.partition("=")
        if not sep or not name:
            raise ValueError(f"a variant is NAME=GLOB, got {item!r}")
        runs = sorted(Path(p) for p in glob(pattern) if Path(p).is_dir())
        if not runs:
            raise ValueError(f"{name}: no run folder matches {pattern!r}")
        out[name] = runs
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("forgetting", help="retention of earlier tasks over seeds")
    f.add_argument("variants", nargs="+", metavar="NAME=GLOB")
    t = sub.add_parser("finetune", help="fine-tuning against scratch, seed by seed")
    t.add_argument("--scratch", required=True, metavar="GLOB", help="the runs from scratch")
    t.add_argument("variants", nargs="+", metavar="NAME=GLOB")
    t.add_argument("--fraction", type=float, default=1 / 3, help="of scratch's steps (1/3)")
    t.add_argument("--plot", type=Path, metavar="PNG", help="the curves, mean over seeds")
    args = p.parse_args(argv)
    try:
        variants = _variants(args.variants)
        if args.what == "forgetting":
            print(forgetting_markdown({k: read_sequences(v) for k, v in variants.items()}))
        else:
            scratch = _variants([f"scratch={args.scratch}"])["scratch"]
            print(fine_tune_table(scratch, variants, args.fraction)[0])
            if args.plot:
                print(f"plot: {plot_fine_tuning({'scratch': scratch, **variants}, args.plot)}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
