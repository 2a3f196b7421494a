"""Export one context's policy as a plain network: ``python scripts/export_policy.py RUN
--context gravity=12``.

Generates the heads once and writes ``actor.pt``, ``actor.ts`` (TorchScript) and ``actor.onnx``
into ``RUN/export`` (or ``-o``): the deterministic actor as ordinary linear layers, taking the
flattened raw observation (its keys are listed in ``export.json``) and returning the action.
The export is checked against the full policy on that context before anything is written.
``--inferred`` exports the policy for unknown contexts (adaptation module and actor) instead.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

from agents.architecture import parse_member  # noqa: E402
from agents.evaluation import parse_context  # noqa: E402
from agents.export import FORMATS, export_inferred, export_run  # noqa: E402
from agents.safe_pickle import TRUST_NOTE  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=TRUST_NOTE)
    p.add_argument("run", help="a run folder, or a model .zip inside one")
    p.add_argument(
        "--context",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="context features to export for (the others nominal); default: nominal",
    )
    p.add_argument(
        "--inferred",
        action="store_true",
        help="export the policy for unknown contexts instead: the run's adaptation module "
        "(train_agent.py --adapt RUN) and the actor, as actor_inferred.* taking the observation, "
        "the last transitions and their validity",
    )
    p.add_argument("--format", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("-o", "--out-dir", default=None, help="default: RUN/export")
    p.add_argument(
        "--member",
        default=None,
        metavar="W1,W2,...",
        help="for a --policy architecture run: the member to export, by its hidden widths "
        "(default: the largest; scripts/search_architecture.py picks one)",
    )
    args = p.parse_args(argv)
    if args.inferred and (args.context or args.member):
        p.error("--inferred exports the policy for unknown contexts; drop --context and --member")
    try:
        if args.inferred:
            summary = export_inferred(args.run, args.out_dir, args.format)
        else:
            member = parse_member(args.member) if args.member is not None else None
            summary = export_run(
                args.run, parse_context(args.context), args.out_dir, args.format, member=member
            )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.inferred:
        print(
            f"exported {summary['env']} for inferred contexts: {', '.join(summary['files'])}; "
            f"inputs obs ({summary['obs_dim']} values), transitions {summary['history']}, valid "
            f"({summary['history'][0]}); actions within {summary['max_action_gap']:.2g} of the "
            f"policy's over {summary['checked_steps']} steps; "
            f"{summary['params']['exported']:,} parameters; batch-1 latency "
            f"{summary['latency_us_batch1']['exported']:.0f} us (the policy's predict on the "
            f"module's estimate: {summary['latency_us_batch1']['full_predict_with_estimate']:.0f} "
            "us)"
        )
        return 0
    params, latency = summary["params"], summary["latency_us_batch1"]
    print(
        f"exported {summary['env']} for {summary['context']}: {', '.join(summary['files'])}; "
        f"obs = {' + '.join(summary['obs_keys']) or 'observation'} ({summary['obs_dim']} values); "
        f"actions within {summary['max_action_gap']:.2g} of the policy's over "
        f"{summary['checked_steps']} steps; {params['exported']:,} parameters "
        f"(the policy's actor: {params['full_policy_actor']:,}); batch-1 latency "
        f"{latency['exported']:.0f} us (the policy's predict: {latency['full_predict']:.0f} us)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
