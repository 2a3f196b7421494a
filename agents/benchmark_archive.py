"""The benchmark's finished cells, kept small enough to commit.

A cell's run folder (model, checkpoints, TensorBoard logs: megabytes) lives under ``runs/``,
which git ignores and which a new machine does not have. The report reads little of it: the
cell's ``meta.json`` and ``eval.json``, its sweeps ``grid/<feature>/eval.json`` and its training
curve. :func:`archive_cells` copies those, compacted, into an archive folder with the same layout
(``<archive>/<env>/<variant>/seed<k>/``), the training curve as ``curve.json``. Every function of
:mod:`agents.benchmark` and :mod:`agents.benchmark_report` that reads a root reads an archive, so
the report can be made again from a clean clone, and a grid given the archive skips the cells in
it (``run_grid(..., archive=...)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agents.benchmark_report import CURVE_FILE, run_curve

#: the archived copy of a float keeps this many significant digits (returns to well under 0.1)
SIGNIFICANT_DIGITS = 6


def archived(archive: Path | None, name: str) -> bool:
    """Whether the cell ``name`` (``Cell.name``) is finished in ``archive``."""
    return archive is not None and (archive / name / "meta.json").is_file()


def archive_cell(run_dir: Path, dest: Path, curve_points: int = 200) -> None:
    """Copy a finished cell's report files from ``run_dir`` to ``dest``: ``eval.json`` (less the
    model's path on this machine), every ``grid/<feature>/eval.json``, the training curve
    (TensorBoard ``rollout/ep_rew_mean``, at most ``curve_points`` points) as ``curve.json``, and
    ``meta.json`` last, so that a ``meta.json`` in the archive means the whole cell is there.

    :raises FileNotFoundError: when ``run_dir`` is not a finished cell (no ``meta.json``).
    """
    meta = run_dir / "meta.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished benchmark cell: it has no meta.json")
    (dest / "meta.json").unlink(missing_ok=True)
    for evaluation in [run_dir / "eval.json", *sorted((run_dir / "grid").glob("*/eval.json"))]:
        result = json.loads(evaluation.read_text())
        result.pop("model", None)
        _write(dest / evaluation.relative_to(run_dir), result)
    curve = run_curve(run_dir)
    if curve is not None:
        keep = np.unique(np.linspace(0, len(curve[0]) - 1, curve_points).round().astype(int))
        steps, values, minutes = (a[keep].tolist() for a in curve)
        _write(dest / CURVE_FILE, {"steps": steps, "values": values, "minutes": minutes})
    _write(dest / "meta.json", json.loads(meta.read_text()))


def archive_cells(root: Path, archive: Path) -> list[str]:
    """Archive every finished cell under ``root`` whose archived ``meta.json`` is missing or
    differs from its own; returns the names of the cells archived (``<env>/<variant>/seed<k>``)."""
    done = []
    if not root.is_dir():
        return done
    for meta in sorted(root.rglob("meta.json")):
        name = meta.parent.relative_to(root)
        dest = archive / name
        own = _rounded(json.loads(meta.read_text()))
        if (dest / "meta.json").is_file() and json.loads((dest / "meta.json").read_text()) == own:
            continue
        archive_cell(meta.parent, dest)
        done.append(str(name))
    return done


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _write(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_rounded(value), separators=(",", ":")) + "\n")
