"""Learn a sequence of tasks one after another: ``python scripts/train_continual.py
configs/continual/halfcheetah_vel.yml -f runs/continual/hc_vel``.

The config names a batched env, its tasks (ranges of context features) and how to learn them
(:class:`agents.continual.SequenceConfig`); ``--beta``, ``--policy``, ``--steps-per-task`` and
``--no-freeze`` override it, e.g. ``--beta 0 --no-freeze`` for plain sequential fine-tuning or
``--policy mlp --beta 0 --no-freeze`` for an MLP reading the task's context. Prints the
forgetting table (return on every task after each task) and writes it to
``RUN/results.json``; Ctrl-C saves, ``--resume RUN`` continues.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.continual import SequenceConfig, forgetting_table, train_sequence
from agents.run_folder import TrainingInterruptedError
from agents.safe_pickle import TRUST_NOTE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=TRUST_NOTE)
    p.add_argument("config", nargs="?", help="a sequence YAML file (configs/continual/)")
    p.add_argument("-f", "--run-dir", default=None, help="default: runs/continual/<config>_s<seed>")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue a stopped run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beta", type=float, default=None, help="the regulariser's weight (0: none)")
    p.add_argument("--policy", default=None, help="hyper, lowrank_hyper; mlp, concat with --beta 0")
    p.add_argument("--steps-per-task", type=int, default=None)
    p.add_argument("--no-freeze", action="store_true", help="let trunks and statistics move")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.resume:
            run_dir = Path(args.resume)
            config = SequenceConfig.from_yaml(run_dir / "sequence.yml")
        elif args.config:
            config = SequenceConfig.from_yaml(args.config)
            overrides = {
                "beta": args.beta, "policy": args.policy, "steps_per_task": args.steps_per_task,
            }  # fmt: skip
            if args.no_freeze:
                overrides |= {"freeze_trunk": False, "freeze_normalization": False}
            values = config.to_dict() | {k: v for k, v in overrides.items() if v is not None}
            config = SequenceConfig.from_dict(values)
            default = Path("runs/continual") / f"{Path(args.config).stem}_s{args.seed}"
            run_dir = Path(args.run_dir) if args.run_dir else default
        else:
            p.error("give a sequence config, or --resume RUN")
        results = train_sequence(
            config, run_dir, args.seed, args.device, not args.no_progress, bool(args.resume)
        )
    except TrainingInterruptedError:
        return 130
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(forgetting_table(results))
    print(f"retention (share of each task's gain left at the end): {results['retention']}")
    print(f"results: {run_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
