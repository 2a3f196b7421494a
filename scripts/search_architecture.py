"""Pick the member of an architecture run to deploy: ``python scripts/search_architecture.py RUN
[--within 0.1 | --max-params N] [--export]``.

Evaluates members of a ``--policy architecture`` run (default: one per depth and width, every
layer that wide; ``--members all`` or a list such as ``64,64 16,8``) on its batched twin, one
deterministic episode per world and split, every member on the same contexts. Prints the table
and the return-against-parameters frontier (``--plot PNG`` draws it), picks the smallest member
within ``--within`` of the best member's return on ``--split`` (or the best with at most
``--max-params`` parameters), and with ``--export`` writes it as a plain network
(``RUN/export/actor_member_<widths>.*``, as ``export_policy.py --member`` does).
``--baselines RUN...`` plays separately trained plain runs (e.g. ``--policy mlp`` with
``net_arch: {pi: [32, 32]}``) on the same contexts and sets each beside the member of its
widths. ``--json`` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

import envs  # noqa: E402
from agents.architecture import parse_member, space_of  # noqa: E402
from agents.architecture_search import (  # noqa: E402
    choose,
    compare,
    evaluate_baselines,
    evaluate_members,
    frontier,
    uniform_members,
)
from agents.evaluation import parse_context  # noqa: E402
from agents.export import export_run  # noqa: E402
from agents.run_config import load_run  # noqa: E402
from agents.safe_pickle import TRUST_NOTE  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=TRUST_NOTE)
    p.add_argument("run", help="a --policy architecture run folder")
    p.add_argument("--members", nargs="*", default=None, help="'all', or widths like 64,16")
    p.add_argument("--splits", nargs="*", default=None, help="default: every split of the env")
    p.add_argument("--split", default="train", help="the split the choice is made on")
    p.add_argument("--worlds", type=int, default=32, help="episodes per member and split")
    p.add_argument("--within", type=float, default=0.1, help="of the best member's return")
    p.add_argument("--max-params", type=int, default=None, help="the best under this budget")
    p.add_argument("--export", action="store_true", help="export the chosen member")
    p.add_argument("--context", nargs="*", default=[], metavar="NAME=VALUE",
                   help="the context to export for (default: nominal)")  # fmt: skip
    p.add_argument("--baselines", nargs="*", default=[], metavar="RUN",
                   help="plain runs to set beside the members of their widths")  # fmt: skip
    p.add_argument("--plot", default=None, metavar="PNG")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        if args.worlds < 1:
            raise ValueError(f"--worlds must be a positive integer, got {args.worlds}")
        try:
            torch.device(args.device)
        except RuntimeError:
            raise ValueError(f"unknown --device {args.device!r}; e.g. cpu or cuda") from None
        config = load_run(args.run)[1]
        splits = args.splits or list(envs.splits_of(config.env))
        if args.split not in splits:
            raise ValueError(f"--split {args.split!r} is not among the splits {splits}")
        context = parse_context(args.context)  # checked before the long evaluation
        members, baselines = None, []
        if args.members == ["all"]:
            members = space_of(config.hyperparams.get("policy_kwargs") or {}).members()
        elif args.members:
            members = [parse_member(m) for m in args.members]
        if args.baselines:  # their widths join the members evaluated
            baselines = evaluate_baselines(
                args.baselines, splits, args.worlds, args.device, env=config.env
            )
            space = space_of(config.hyperparams.get("policy_kwargs") or {})
            members = list(members or uniform_members(space))
            for base in baselines:
                try:
                    widths = space.check(base["member"])
                except ValueError as err:
                    raise ValueError(f"baseline {base['run']}: {err}") from None
                if widths not in members:
                    members.append(widths)
        rows = evaluate_members(args.run, members, splits, args.worlds, args.device)
        chosen = choose(rows, args.split, args.within, args.max_params)
        exported = None
        if args.export:
            exported = export_run(args.run, context, member=chosen["member"])["files"]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    front = frontier(rows, args.split)
    print(table(rows, front))
    rule = (f"best with <= {args.max_params} parameters" if args.max_params is not None
            else f"smallest within {args.within:.0%} of the best")  # fmt: skip
    print(f"chosen ({rule} on {args.split}): {chosen['member']}, {chosen['params']:,} "
          f"parameters, return {chosen[args.split]:.1f}")  # fmt: skip
    if exported:
        print(f"exported: {', '.join(exported)}")
    compared = compare(rows, baselines, args.split, args.within)
    if compared:
        print(comparison_table(compared, args.within))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        out = {"members": rows, "chosen": chosen, "baselines": baselines, "compared": compared}
        Path(args.json).write_text(json.dumps(out, indent=2))
    if args.plot:
        plot(rows, front, args.split, Path(args.plot), baselines)
    return 0


def table(rows: list[dict], front: list[dict]) -> str:
    splits = [k for k in rows[0] if k not in ("member", "params")]
    on_front = {tuple(r["member"]) for r in front}
    lines = ["| member | parameters | " + " | ".join(splits) + " | frontier |",
             "| --- | ---: |" + " ---: |" * len(splits) + " :---: |"]  # fmt: skip
    for r in sorted(rows, key=lambda r: r["params"]):
        cells = " | ".join(f"{r[s]:.1f}" for s in splits)
        mark = "*" if tuple(r["member"]) in on_front else ""
        lines.append(f"| {'-'.join(map(str, r['member']))} | {r['params']:,} | {cells} | {mark} |")
    return "\n".join(lines)


def comparison_table(compared: list[dict], within: float) -> str:
    lines = [
        "| member | parameters | return | trained alone: parameters | return | ratio | "
        f"within {within:.0%} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for c in compared:
        lines.append(
            f"| {'-'.join(map(str, c['member']))} | {c['member_params']:,} | "
            f"{c['member_return']:.1f} | {c['baseline_params']:,} | {c['baseline_return']:.1f} | "
            f"{c['ratio']:.2f} | {'yes' if c['within'] else 'no'} |"
        )
    return "\n".join(lines)


def plot(
    rows: list[dict], front: list[dict], split: str, path: Path, baselines: Sequence[dict] = ()
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["params"] for r in rows], [r[split] for r in rows], s=12, alpha=0.6,
               label="members")  # fmt: skip
    ax.plot([r["params"] for r in front], [r[split] for r in front], "o-", color="C3",
            label="frontier")  # fmt: skip
    for r in front:
        ax.annotate("-".join(map(str, r["member"])), (r["params"], r[split]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8, color="C3")  # fmt: skip
    for i, base in enumerate(baselines):
        ax.scatter([base["params"]], [base[split]], marker="x", s=50, color="k",
                   label="trained alone" if i == 0 else None)  # fmt: skip
        ax.annotate("-".join(map(str, base["member"])), (base["params"], base[split]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("actor parameters")
    ax.set_ylabel(f"return ({split})")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
