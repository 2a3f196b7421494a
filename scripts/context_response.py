"""How far a trained policy's context-set parameters follow the context beyond the train range.

    python scripts/context_response.py RUN [RUN ...] [--values 1 2 3 4] [--json OUT]

For every conditioned net of each run (hyper heads: the generated weights; FiLM: its scales and
shifts), one context feature at a time is moved from 0 to each value (contexts are scaled so the
train range is [-1, 1]; extrapolation lies beyond) and ``|P(v) - P(0)| / |P(1) - P(0)|`` is
printed as the range over features. A map that keeps following the context gives about ``v``; a
direction-only embedding stays near 1 (see ``hyperrl.policies.diagnostics.context_response``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agents.run_config import load_run
from agents.safe_pickle import TRUST_NOTE
from hyperrl.policies.diagnostics import context_response


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=TRUST_NOTE)
    p.add_argument("runs", nargs="+", help="run folders or model .zip files")
    p.add_argument("--values", nargs="+", type=float, default=[1.0, 2.0, 3.0, 4.0])
    p.add_argument("--json", metavar="OUT", help="also write every ratio to this JSON file")
    args = p.parse_args(argv)
    if args.values[0] != 1.0 or any(v <= 0 for v in args.values):
        p.error("--values must start at 1 (the train range's edge) and be positive")
    header = "run / net".ljust(56) + "".join(f"c = {v:g}".rjust(13) for v in args.values)
    print(header)
    report = {}
    for run in args.runs:
        try:
            model, _, run_dir, _ = load_run(run)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        ratios = context_response(model.policy, args.values)
        if not ratios:
            print(f"{run_dir}: no context-conditioned generator or FiLM head")
        for net, r in ratios.items():
            low, high = r.min(0), r.max(0)
            cells = "".join(f"{lo:6.2f}–{hi:<6.2f}" for lo, hi in zip(low, high, strict=True))
            label = "/".join(Path(run_dir).parts[-2:]) + " / " + net
            print(f"{label[:55]:56s}{cells}")
            report[f"{run_dir}:{net}"] = r.tolist()
    if args.json:
        Path(args.json).write_text(json.dumps({"values": args.values, "ratios": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
