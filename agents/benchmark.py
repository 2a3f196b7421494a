"""The generalisation benchmark: a grid of {conditioning} x {seed} x {env}, resumable, aggregated.

Each grid cell is an ordinary run folder (``agents.train``) under ``root/<env>/<variant>/seed<k>``,
evaluated per context split (``agents.evaluation``) into ``eval.json``, with ``meta.json`` holding
wall-clock and parameter count. Re-running skips finished cells and resumes interrupted ones.
:func:`aggregate` normalises returns per env (min-max over every cell of that env) and reports the
interquartile mean with bootstrap 95 % intervals per variant and split, computed with ``rliable``
(``bench`` extra).

:func:`run_grid` runs the cells in local processes, or as Ray tasks on a cluster when given a Ray
address (``ray`` is in the ``bench`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.benchmark_archive import archived
from agents.run_folder import stop_on_signals

#: variant -> (--policy, extra --hyperparams): the conditioning ladder, one keyword apart.
#: ``sb3_multiinput`` is SB3's own MultiInputPolicy with the context as one more input (what a
#: user tries first); the ``_direction_only`` variants read the context through the normalised
#: embedding alone (``linear_context: false``, the path before the linear context term);
#: ``concat_large`` is concatenation with about the hyper policy's parameter count (512-wide
#: trunk and head: 552k against 618k on HalfCheetah), the capacity control; ``hyper_embed8``
#: (an 8-wide generator embedding) and ``concat_256`` (256-wide trunk and head) are the pair at a
#: smaller equal size (125k and 145k on HalfCheetah, beside ``lowrank_hyper``'s 131k).
#: Two generated designs at ``concat_256``'s width: ``lowrank_256`` is ``concat_256``'s shape with
#: the head's weights ``W0 + u(z) v(z)^T`` (rank 1, 8-wide embedding; 172k), and ``hyper_out_224``
#: a plain 224-224 trunk whose output layer alone is generated (16-wide embedding; 144k).
#: ``hyper_out_64`` is that design at the default width (a plain 64-64 trunk, the size of
#: ``concat``), the candidate for a cheaper default.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mlp_no_context": ("none", []),
    "sb3_multiinput": ("mlp", []),
    "concat": ("concat", []),
    "concat_large": ("concat", ["policy_kwargs:{net_arch: [512], head_arch: [512]}"]),
    "film": ("film", []),
    "lowrank_hyper": ("lowrank_hyper", []),
    "hyper": ("hyper", []),
    "hyper_direction_only": ("hyper", ["policy_kwargs:{linear_context: false}"]),
    "chunked_hyper": ("hyper", ["policy_kwargs:{generator: chunked}"]),
    "hyper_embed8": ("hyper", ["policy_kwargs:{generator_kwargs: {hidden: [8]}}"]),
    "concat_256": ("concat", ["policy_kwargs:{net_arch: [256], head_arch: [256]}"]),
    "lowrank_256": (
        "lowrank_hyper",
        [
            "policy_kwargs:{net_arch: [256], head_arch: [256], "
            "generator_kwargs: {hidden: [8], rank: 1}}"
        ],
    ),
    "hyper_out_224": (
        "hyper",
        ["policy_kwargs:{net_arch: [224, 224], head_arch: [], generator_kwargs: {hidden: [16]}}"],
    ),
    "hyper_out_64": (
        "hyper",
        ["policy_kwargs:{net_arch: [64, 64], head_arch: [], generator_kwargs: {hidden: [16]}}"],
    ),
}


@dataclass(frozen=True)
class SuiteEnv:
    """One env of a suite: its algorithm, budget, and overrides of its preset (``key:value``)."""

    env: str
    algo: str
    timesteps: int
    hyperparams: tuple[str, ...] = ()


#: the first benchmark's ladder (the quick and full suites)
_LADDER = ("mlp_no_context", "concat", "film", "lowrank_hyper", "hyper", "chunked_hyper")
#: the variants a suite runs by default (``--variants`` picks others)
SUITE_VARIANTS: dict[str, tuple[str, ...]] = {
    "quick": _LADDER,
    "v2": (
        "mlp_no_context",
        "sb3_multiinput",
        "concat",
        "film",
        "hyper",
        "lowrank_hyper",
        "hyper_direction_only",
        "concat_large",
    ),
    "full": _LADDER,
}

#: suites: the quick one fits the CPU in an hour; v2 (locomotion on the batched CPU backend at
#: 5M steps) takes many hours on 2 cores, in resumable parts; the full one is for a GPU machine
SUITES: dict[str, list[SuiteEnv]] = {
    "quick": [
        SuiteEnv("hyperrl/ContextualCartPole-v0", "ppo", 60_000),
        SuiteEnv("hyperrl/ContextualPendulum-v0", "sac", 20_000),
        # 4 envs and minibatches of 256 (preset: 1 and 64) and 120k steps (preset: 1M) fit its
        # 30 runs into about 40 minutes on 2 cores: a short budget, read its results as such
        SuiteEnv(
            "hyperrl/ContextualHalfCheetah-v0", "ppo", 120_000, ("n_envs:4", "batch_size:256")
        ),
    ],
    "v2": [
        SuiteEnv("hyperrl/BatchedHalfCheetah-v0", "ppo", 5_000_000),
        SuiteEnv("hyperrl/ContextualPendulum-v0", "sac", 20_000),
        SuiteEnv("hyperrl/BatchedAnt-v0", "ppo", 5_000_000),
        SuiteEnv("hyperrl/BatchedHalfCheetahVel-v0", "ppo", 5_000_000),
    ],
    "full": [
        SuiteEnv("hyperrl/ContextualHalfCheetah-v0", "sac", 1_000_000),
        SuiteEnv("hyperrl/ContextualAnt-v0", "sac", 1_000_000),
        SuiteEnv("hyperrl/ContextualWalker2d-v0", "sac", 1_000_000),
        SuiteEnv("hyperrl/ContextualFetchPush-v0", "her", 1_000_000),
    ],
}


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    env: str
    algo: str
    variant: str
    seed: int
    timesteps: int
    hyperparams: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.env.replace('/', '_')}/{self.variant}/seed{self.seed}"


def expand_grid(
    suite: str,
    seeds: int,
    variants: Sequence[str] | None = None,
    timesteps: int | None = None,
    envs: Sequence[str] | None = None,
) -> list[Cell]:
    """Every cell of ``suite`` x ``variants`` x ``range(seeds)``, seed by seed (every env and
    variant of seed 0 first), so a grid stopped part way has comparable cells.

    :param variants: default: the suite's (:data:`SUITE_VARIANTS`).
    :param timesteps: override the suite's budgets (for smoke runs).
    :param envs: only these env ids of the suite.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {list(SUITES)}")
    variants = list(variants or SUITE_VARIANTS[suite])
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    suite_envs = [e for e in SUITES[suite] if envs is None or e.env in envs]
    if not suite_envs:
        raise ValueError(f"none of {list(envs or [])} is in suite {suite!r}")
    return [
        Cell(e.env, e.algo, v, s, timesteps or e.timesteps, (*e.hyperparams, *VARIANTS[v][1]))
        for s in range(seeds)
        for e in suite_envs
        for v in variants
    ]


def run_cell(
    cell: Cell, root: Path, eval_episodes: int = 10, grid: int = 7, grid_episodes: int = 2
) -> Path:
    """Train (or resume) and evaluate one cell; a finished cell is left as it is.

    Besides the splits (``eval.json``), each context feature is swept alone over its whole bounds,
    the others nominal: ``grid`` points, ``grid_episodes`` episodes each, into
    ``grid/<feature>/eval.json`` (return against context; ``grid=0`` skips it). The sweeps run
    before the splits, so a cell with ``eval.json`` has them all.
    """
    from agents.evaluation import evaluate_run
    from agents.run_folder import complete_checkpoints
    from agents.train import TrainArgs, train

    run_dir = root / cell.name
    if (run_dir / "eval.json").is_file():
        return run_dir
    start = time.perf_counter()
    common = dict(seed=cell.seed, timesteps=cell.timesteps, progress_bar=False, eval_freq=0)
    saved = (run_dir / "model.zip").is_file() or complete_checkpoints(run_dir)
    if (run_dir / "config.yml").is_file() and not saved:
        shutil.rmtree(run_dir)  # killed before its first save: nothing to resume
    if (run_dir / "config.yml").is_file():
        train(TrainArgs(resume=str(run_dir), **common))
    else:
        train(
            TrainArgs(
                algo=cell.algo,
                env=cell.env,
                policy=VARIANTS[cell.variant][0],
                hyperparams=list(cell.hyperparams),
                run_dir=str(run_dir),
                **common,
            )
        )
    seconds = time.perf_counter() - start
    space = _context_space(cell.env)
    for feature in space.names if space is not None and grid else []:
        out = run_dir / "grid" / feature
        if not (out / "eval.json").is_file():
            evaluate_run(
                run_dir, episodes=grid_episodes, grid=grid, grid_features=[feature], out_dir=out
            )
    result = evaluate_run(run_dir, episodes=eval_episodes)
    model = result["model"]
    (run_dir / "meta.json").write_text(
        json.dumps({"cell": cell.__dict__, "train_seconds": seconds, "params": _param_count(model)})
    )
    return run_dir


def _context_space(env_id: str) -> Any:
    """The physics or task context space of ``env_id`` (or of its CPU twin), if it has one."""
    import envs

    cpu = envs.cpu_twin(env_id)
    return envs.context_space(cpu) if cpu in envs.ENVS else None


def _param_count(model_path: str) -> int:
    import zipfile

    import torch

    with zipfile.ZipFile(model_path) as z, z.open("policy.pth") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    return int(sum(t.numel() for t in state.values()))


def run_grid(
    cells: Sequence[Cell],
    root: Path,
    jobs: int = 1,
    runner: Callable[[Cell, Path], Path] = run_cell,
    ray_address: str | None = None,
    ray_cpus_per_run: float = 1,
    archive: Path | None = None,
) -> list[Path]:
    """Run every unfinished cell (no ``eval.json`` yet, and not in ``archive``), ``jobs`` at a
    time in separate processes, or as Ray tasks when ``ray_address`` is given.

    :param ray_address: run one Ray task per unfinished cell and let Ray schedule them (``jobs``
        is then ignored): ``"local"`` starts a Ray instance on this machine, ``"auto"`` joins the
        cluster this machine belongs to, ``"host:port"`` or ``"ray://host:port"`` joins that one.
        ``root`` must then be on a filesystem that this machine and every node see at the same
        path (it is made absolute here), and every node needs this project installed. A process
        already connected to Ray (``ray.is_initialized()``) keeps and uses its connection;
        otherwise the connection made here is shut down on return.
    :param ray_cpus_per_run: the CPUs Ray reserves for each cell (fractions allowed); torch in
        the task uses that many threads.
    :param archive: an archive of finished cells (:mod:`agents.benchmark_archive`), run here or on
        another machine: the cells in it are not run again.
    :raises GridError: after every Ray task has ended, when any cell failed; it names them.
    """
    todo = [
        c
        for c in cells
        if not (root / c.name / "eval.json").is_file() and not archived(archive, c.name)
    ]
    if ray_address is not None:
        return _run_on_ray(todo, root, runner, ray_address, ray_cpus_per_run)
    if jobs <= 1:
        return [runner(c, root) for c in todo]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(jobs, initializer=_limit_threads, initargs=(threads,))
    try:
        with stop_on_signals():  # SIGTERM reaches the except below, not just this process
            results = list(pool.map(runner, todo, [root] * len(todo)))
    except BaseException:
        # a stopped or failed cell ends the grid: drop the cells not started and stop the
        # workers (a worker in training saves its cell) instead of letting them take the next
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in workers:  # a worker in training saves its cell, then would go on
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
        raise
    pool.shutdown()
    return results


#: how long stopped workers get to save the cells they are training before they are killed
STOP_GRACE_SECONDS = 20.0


def _limit_threads(threads: int) -> None:
    """A worker's set-up: keep ``jobs`` workers from oversubscribing the cores (torch defaults to
    all of them), and let SIGTERM end a worker outside training (a forked worker inherits the
    grid's own handler, which would only interrupt the cell it is running)."""
    import signal

    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class GridError(RuntimeError):
    """Cells of a grid failed; ``failures`` maps each failed cell's name to its exception."""

    def __init__(self, failures: dict[str, BaseException], total: int) -> None:
        self.failures = failures
        listing = "; ".join(f"{name}: {type(e).__name__}: {e}" for name, e in failures.items())
        super().__init__(
            f"{len(failures)} of {total} benchmark cells failed (rerun to retry them; finished "
            f"cells are kept): {listing}"
        )


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            "running the grid on Ray needs the 'ray' package from the 'bench' extra: "
            "pip install -e '.[bench]'"
        ) from err
    return ray


def _run_on_ray(
    todo: Sequence[Cell],
    root: Path,
    runner: Callable[[Cell, Path], Path],
    address: str,
    cpus_per_run: float,
) -> list[Path]:
    """One Ray task per cell, all submitted at once; waits for every one of them."""
    if cpus_per_run <= 0:
        raise ValueError(f"ray_cpus_per_run must be positive, not {cpus_per_run}")
    if not todo:
        return []
    ray = _import_ray()
    connect = not ray.is_initialized()
    if connect:
        ray.init(address=address)
    try:
        task = ray.remote(num_cpus=cpus_per_run)(_ray_task)
        # a worker's working directory need not be ours
        root = root.absolute()
        threads = max(1, int(cpus_per_run))
        refs = [task.remote(runner, cell, root, threads) for cell in todo]
        results: list[Path] = []
        failures: dict[str, BaseException] = {}
        first_error: BaseException | None = None
        for cell, ref in zip(todo, refs, strict=True):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayError as err:
                # a RayTaskError wraps the cell's own exception (and carries the remote
                # traceback in its message); a dead worker's error has no cause
                failures[cell.name] = getattr(err, "cause", None) or err
                first_error = first_error or err
    finally:
        if connect:
            ray.shutdown()
    if failures:
        raise GridError(failures, len(todo)) from first_error
    return results


def _ray_task(runner: Callable[[Cell, Path], Path], cell: Cell, root: Path, threads: int) -> Path:
    """A cell inside a Ray worker, torch held to the CPUs Ray reserved for it."""
    _limit_threads(threads)
    return runner(cell, root)


def collect(root: Path) -> list[dict[str, Any]]:
    """One record per finished cell: env, variant, seed, per-split mean return, params, time."""
    records = []
    for meta_path in sorted(root.rglob("meta.json")):
        meta = json.loads(meta_path.read_text())
        summary = json.loads((meta_path.parent / "eval.json").read_text())["summary"]
        cell = meta["cell"]
        records.append(
            {
                "env": cell["env"],
                "variant": cell["variant"],
                "seed": cell["seed"],
                "returns": {s: v["mean_return"] for s, v in summary.items()},
                "params": meta["params"],
                "train_seconds": meta["train_seconds"],
            }
        )
    return records


#: the variants every env of the aggregate must have run, of those the records have at all
AGGREGATE_CORE = ("mlp_no_context", "sb3_multiinput", "concat", "film", "hyper")


def aggregate_envs(
    records: Sequence[dict[str, Any]], min_seeds: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """The envs to aggregate over: those with ``min_seeds`` or more seeds of each core variant
    (:data:`AGGREGATE_CORE`, less those no record has), so that an env part-way through its
    grid does not shrink the aggregate to its few cells. ``None``: 3, or the most seeds any env
    has of each when none has 3. Returns the envs and, for each env left out, its seed counts
    (``{env: "hyper 1, concat 0, ... seeds"}``)."""
    present = {r["variant"] for r in records}
    core = [v for v in AGGREGATE_CORE if v in present]
    counts = {
        env: {
            v: len({r["seed"] for r in records if (r["env"], r["variant"]) == (env, v)})
            for v in core
        }
        for env in sorted({r["env"] for r in records})
    }
    if min_seeds is None:
        min_seeds = min(3, max((min(c.values(), default=0) for c in counts.values()), default=0))
    min_seeds = max(min_seeds, 1)
    included = [env for env, c in counts.items() if min(c.values(), default=0) >= min_seeds]
    left_out = {
        env: ", ".join(f"{v} {n}" for v, n in c.items()) + " seeds"
        for env, c in counts.items()
        if env not in included
    }
    return included, left_out


def aggregate(records: Sequence[dict[str, Any]], reps: int = 2000) -> dict[str, Any]:
    """Per variant and split: IQM of per-env min-max normalised returns (seeds x envs: the first
    ``n`` seeds of each env, ``n`` the fewest the variant has on any env) with a
    bootstrap 95 % interval (``rliable``), plus mean parameter count and training time."""
    from rliable import library as rly
    from rliable import metrics

    envs = sorted({r["env"] for r in records})
    bounds = {}
    for env in envs:
        values = [v for r in records if r["env"] == env for v in r["returns"].values()]
        low, high = min(values), max(values)
        bounds[env] = (low, high - low if high > low else 1.0)
    variants = list(dict.fromkeys(r["variant"] for r in records))
    splits = list(dict.fromkeys(s for r in records for s in r["returns"]))
    table: dict[str, Any] = {}
    for split in splits:
        scores = {}
        for variant in variants:
            per_env = []
            for env in envs:
                runs = sorted(
                    (r["seed"], (r["returns"][split] - bounds[env][0]) / bounds[env][1])
                    for r in records
                    if r["env"] == env and r["variant"] == variant and split in r["returns"]
                )
                per_env.append([value for _, value in runs])
            # as many seeds from every env, the first ones (not the worst: trimming by value
            # would bias a variant with more seeds somewhere)
            n = min(len(v) for v in per_env)
            if n:
                scores[variant] = np.array([v[:n] for v in per_env]).T  # (seeds, envs)
        points, intervals = rly.get_interval_estimates(
            scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps
        )
        table[split] = {
            v: {
                "iqm": float(points[v][0]),
                "ci": [float(intervals[v][0][0]), float(intervals[v][1][0])],
            }
            for v in scores
        }
    costs = {
        v: {
            "params": float(np.mean([r["params"] for r in records if r["variant"] == v])),
            "train_seconds": float(
                np.mean([r["train_seconds"] for r in records if r["variant"] == v])
            ),
        }
        for v in variants
    }
    return {"envs": envs, "splits": table, "costs": costs}


def markdown(summary: dict[str, Any]) -> str:
    """The aggregate as Markdown tables (one row per variant, a column per split)."""
    splits = list(summary["splits"])
    lines = [
        "| variant | " + " | ".join(f"{s} IQM [95% CI]" for s in splits) + " | params | train s |",
        "| --- |" + " ---: |" * (len(splits) + 2),
    ]
    for variant, cost in summary["costs"].items():
        cells = []
        for s in splits:
            entry = summary["splits"][s].get(variant)
            cells.append(
                "–"
                if entry is None
                else f"{entry['iqm']:.2f} [{entry['ci'][0]:.2f}, {entry['ci'][1]:.2f}]"
            )
        lines.append(
            f"| {variant} | "
            + " | ".join(cells)
            + f" | {cost['params']:,.0f} | {cost['train_seconds']:.0f} |"
        )
    return "\n".join(lines)
