"""The generalisation benchmark of the conditioning ladder.

    python scripts/benchmark.py --suite quick --seeds 5 --jobs 2      # run (resumable)
    python scripts/benchmark.py --suite quick --report                # aggregate only
    python scripts/benchmark.py --suite full --ray-address auto --root /shared/benchmark  # on Ray

Runs land in ``runs/benchmark/<suite>/``; the report (IQM with bootstrap 95% intervals of
per-env normalised returns, per split) is printed and written next to them as ``results.md``
and ``results.json``. What the report reads of each finished cell (its evaluations, sweeps and
training curve: tens of kB) is copied into ``docs/results/cells/<suite>/``, which is committed:
the report is made from there, so it can be made again on a clean clone, and the cells there are
not run again (``--archive``). Needs the ``bench`` extra for the statistics and for Ray. With
``--ray-address`` every run is a Ray task scheduled by Ray; ``--root`` must then be on a filesystem
that every node sees at the same path, and every node needs this project installed. (A cluster
using Ray's token authentication wants ``RAY_AUTH_MODE=token`` and its token here, too.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
REPO = Path(__file__).resolve().parents[1]

from agents.benchmark import (  # noqa: E402
    AGGREGATE_CORE,
    SUITE_VARIANTS,
    SUITES,
    VARIANTS,
    aggregate,
    aggregate_envs,
    collect,
    expand_grid,
    markdown,
    run_grid,
)
from agents.benchmark_archive import archive_cells  # noqa: E402
from agents.benchmark_report import (  # noqa: E402
    CANDIDATES,
    best_in_distribution_markdown,
    paired_markdown,
    per_env_markdown,
    plot_feature_sweeps,
    plot_iqm,
    plot_learning_curves,
    plot_return_vs_context,
    ratios_markdown,
)
from agents.run_folder import TrainingInterruptedError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="quick", choices=list(SUITES))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument(
        "--variants",
        nargs="*",
        default=None,
        choices=list(VARIANTS),
        help="default: the suite's own (quick: "
        f"{', '.join(SUITE_VARIANTS['quick'])}; v2: {', '.join(SUITE_VARIANTS['v2'])})",
    )
    p.add_argument("--envs", nargs="*", default=None, help="only these env ids of the suite")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (local processes)")
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        default=None,
        help="run on Ray instead of local processes: 'local' starts an instance here, 'auto' joins "
        "this machine's cluster, host:port or ray://host:port that cluster; --root must be on a "
        "filesystem every node sees at the same path, and every node needs hyperrl installed",
    )
    p.add_argument(
        "--ray-cpus-per-run",
        metavar="N",
        type=float,
        default=None,
        help="CPUs Ray reserves for each run (default 1; fractions allowed)",
    )
    p.add_argument("-n", "--timesteps", type=int, default=None, help="override every budget")
    p.add_argument("--root", default=None, help="where the runs go (default: runs/benchmark)")
    p.add_argument(
        "--archive",
        default=None,
        metavar="DIR",
        help="the committed copy of the finished cells, under DIR/<suite>: finished cells are "
        "copied there after every run, the report reads it, and the cells in it are not run "
        "again (default: docs/results/cells with the default --root, none with another; "
        "'none': no archive)",
    )
    p.add_argument("--report", action="store_true", help="aggregate what has finished; run nothing")
    p.add_argument(
        "--aggregate-seeds",
        type=int,
        default=None,
        metavar="N",
        help="the aggregate takes the envs with N or more seeds of each of "
        f"{', '.join(AGGREGATE_CORE)} that ran (default: 3, or the most any env has); the "
        "per-env tables list every env",
    )
    args = p.parse_args(argv)
    if args.ray_address is None and args.ray_cpus_per_run is not None:
        p.error("--ray-cpus-per-run needs --ray-address")
    if args.ray_address is not None and args.jobs != 1:
        p.error("--jobs is for local processes; on Ray use --ray-cpus-per-run")
    root = Path(args.root or "runs/benchmark") / args.suite
    archive = _archive(args.archive, args.root is None, args.suite)
    try:
        if not args.report:
            cells = expand_grid(args.suite, args.seeds, args.variants, args.timesteps, args.envs)
            print(f"{len(cells)} runs under {root}")
            try:
                run_grid(
                    cells,
                    root,
                    jobs=args.jobs,
                    ray_address=args.ray_address,
                    ray_cpus_per_run=1 if args.ray_cpus_per_run is None else args.ray_cpus_per_run,
                    archive=archive,
                )
            finally:  # what finished before a stop is kept, too
                _sync(root, archive)
        else:
            _sync(root, archive)
        source = root if archive is None else archive
        records = collect(source)
        if not records:
            print(f"error: no finished runs under {source}", file=sys.stderr)
            return 2
        envs, left_out = aggregate_envs(records, args.aggregate_seeds)
        summary = aggregate([r for r in records if r["env"] in envs]) if envs else None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterruptedError as err:
        print(f"{err}\nthe grid stopped; rerun the same command to go on", file=sys.stderr)
        return err.exit_code
    why = "; ".join(f"{env}: {seeds}" for env, seeds in left_out.items())
    if summary is None:  # the cells that finished are still worth their tables
        parts = [
            f"No aggregate yet: no env has {args.aggregate_seeds or 'a'} seed(s) of each core "
            f"variant ({why}); lower --aggregate-seeds, or run the missing cells."
        ]
    else:
        against = ("concat", "concat_large", "sb3_multiinput", "film", "hyper_direction_only")
        scope = f"Aggregate over {', '.join(envs)}." + (
            f" Left out, too few seeds of the core variants ({', '.join(AGGREGATE_CORE)}): {why}."
            if left_out
            else ""
        )
        parts = [
            scope,
            markdown(summary),
            ratios_markdown(summary, "hyper", against),
            best_in_distribution_markdown(summary, "hyper"),
        ]
    pairs = [
        paired_markdown(records),
        paired_markdown(records, CANDIDATES, heading="candidate − the default"),
    ]
    tables = [per_env_markdown(records).rstrip(), *(p.rstrip() for p in pairs if p)]
    table = "\n\n".join([*parts, *tables])
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.md").write_text(table + "\n")
    (root / "results.json").write_text(json.dumps((summary or {}) | {"records": records}, indent=2))
    print(table)
    figures = []
    if summary is not None:
        plot_iqm(summary, root / "iqm.png")
        figures.append(root / "iqm.png")
    figures += plot_return_vs_context(source, root)
    figures += plot_feature_sweeps(source, root)
    curves = plot_learning_curves(source, root)
    figures += [curves] if curves else []
    print("figures: " + ", ".join(str(f) for f in figures))
    return 0


def _archive(given: str | None, default_root: bool, suite: str) -> Path | None:
    """``--archive``'s folder for ``suite``, or ``None`` for no archive."""
    if given is None:
        return REPO / "docs" / "results" / "cells" / suite if default_root else None
    return None if given.lower() == "none" else Path(given) / suite


def _sync(root: Path, archive: Path | None) -> None:
    if archive is not None:
        names = archive_cells(root, archive)
        if names:
            print(f"archived {len(names)} finished cell(s) in {archive}")


if __name__ == "__main__":
    sys.exit(main())
