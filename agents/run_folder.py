"""What every trainer does to its run folder: write files so that a crash never leaves half of one,
and stop on a termination signal the way it stops on Ctrl-C (save, then say how to resume).

:func:`atomic_save` writes through a temporary file in the same folder, flushed to disk and then
renamed over the target (``os.replace`` is atomic on POSIX), so a reader of ``model.zip`` sees the
old file or the new one, never a truncated one, whether the writer was killed or the disk filled.
:func:`stop_on_signals` turns SIGTERM and SIGHUP (what ``timeout``, Docker, Slurm and cloud
preemption send) into the ``KeyboardInterrupt`` that the trainers already answer by saving;
the trainers then raise :class:`TrainingInterruptedError`, which ``train_agent.py`` turns into a
non-zero exit status. :func:`write_checkpoint` and :func:`resume_source` keep checkpoints as
complete sets (a manifest written last), bounded in number, and find the newest complete save to
resume from; :class:`BestModel` keeps ``best_model.zip`` and its score across resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: the signals that stop a run like Ctrl-C does
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class TrainingInterruptedError(Exception):
    """Training stopped on a signal after saving the run.

    :param signum: the signal (SIGINT for Ctrl-C).
    :param timesteps: env steps trained when it stopped.
    :param run_dir: the run folder, which ``--resume`` continues.
    """

    def __init__(
        self, signum: int, timesteps: int, run_dir: Path, resume_hint: str | None = None
    ) -> None:
        self.signum, self.timesteps, self.run_dir = signum, timesteps, run_dir
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at {timesteps} steps; the run is saved. Continue with "
            f"{resume_hint or f'--resume {run_dir}'}"
        )

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class _Stopped(KeyboardInterrupt):
    """The ``KeyboardInterrupt`` a stop signal raises, carrying which signal it was."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(err: KeyboardInterrupt) -> int:
    """The signal behind a ``KeyboardInterrupt`` (SIGINT unless :func:`stop_on_signals` raised
    it for another)."""
    return getattr(err, "signum", int(signal.SIGINT))


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` in the main thread, as
    SIGINT does (see :func:`signal_of`); the previous handlers come back after it. Outside the
    main thread (where Python cannot install handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS if s != signal.SIGINT}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def save_on_stop(
    run_dir: Path,
    save: Callable[[], object],
    timesteps: Callable[[], int],
    resume_hint: str | None = None,
) -> Iterator[None]:
    """Run the block (training) under :func:`stop_on_signals`, then ``save()`` however it ended.
    A stop signal or Ctrl-C is reported with the command that continues (``resume_hint``,
    default ``--resume RUN``) and, once saved, raised again as
    :class:`TrainingInterruptedError`; ``timesteps()`` gives the steps trained so far."""
    stopped: KeyboardInterrupt | None = None
    hint = resume_hint or f"--resume {run_dir}"
    try:
        with stop_on_signals():
            yield
    except KeyboardInterrupt as err:
        stopped = err
        print(f"\ninterrupted at {timesteps()} steps; saving. Continue with {hint}")
    finally:
        save()
    if stopped is not None:
        raise TrainingInterruptedError(signal_of(stopped), timesteps(), run_dir, hint)


def atomic_save(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` with ``write(tmp)`` to a temporary file beside it, flush it to disk, then
    rename it over ``path``. If ``write`` fails (a full disk, a kill), ``path`` keeps its
    previous content and the temporary file is removed. The temporary name keeps ``path``'s
    suffix, for writers that add one when it is missing (SB3's ``save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself, on file systems that allow it
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def write_text(path: str | Path, text: str) -> None:
    """``Path.write_text`` through :func:`atomic_save`."""
    atomic_save(path, lambda tmp: tmp.write_text(text))


# --- checkpoints ---------------------------------------------------------------------------------
#
# A run's saves share one layout: the files of one save (model.zip, and where they apply
# vecnormalize.pkl, replay_buffer.pkl, trainer_state.pt) in a folder -- the run folder itself for
# the latest save, ``checkpoints/step_<N>/`` for the periodic ones -- with ``manifest.json``
# written last. A save is complete when its manifest is there and names files of the sizes it
# lists; readers look only at complete saves, so a kill between two files of one save leaves a
# save that is ignored rather than half read.

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
#: files kept only in the newest checkpoint (a replay buffer is often most of a run's disk)
LARGE_FILES = ("replay_buffer.pkl",)


def write_manifest(folder: Path, timesteps: int, names: Sequence[str]) -> None:
    """Write ``folder/manifest.json`` (the save's step count and its files' sizes), last."""
    files = {n: (folder / n).stat().st_size for n in names if (folder / n).is_file()}
    write_text(folder / MANIFEST, json.dumps({"timesteps": int(timesteps), "files": files}))


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete save in ``folder``, else ``None`` (no manifest, an unreadable
    one, or a listed file missing or of another size)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        int(manifest["timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return manifest


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(timesteps, folder)`` of every complete checkpoint of ``run_dir``, oldest first."""
    found = []
    for folder in (Path(run_dir) / CHECKPOINTS).glob("step_*"):
        manifest = read_manifest(folder)
        if manifest is not None:
            found.append((int(manifest["timesteps"]), folder))
    return sorted(found)


def resume_source(run_dir: Path) -> tuple[Path, str | None]:
    """Where ``--resume`` should load from: ``(folder, note)``, the newest complete save among the
    run folder's own and its checkpoints, with a note when that is not the run folder's own.
    A ``model.zip`` in a run without any manifest (saved before manifests existed) counts as
    complete; an incomplete save in the run folder is used only when nothing complete is left.

    :raises ValueError: when there is no model to resume from at all.
    """
    run_dir = Path(run_dir)
    candidates = complete_checkpoints(run_dir)
    has_model = (run_dir / "model.zip").is_file()
    own = read_manifest(run_dir) if has_model else None
    manifests = [run_dir / MANIFEST, *(run_dir / CHECKPOINTS).glob(f"step_*/{MANIFEST}")]
    if has_model and not any(m.exists() for m in manifests):
        return run_dir, None  # saved before manifests existed: take it as it is
    if own is not None and (not candidates or own["timesteps"] >= candidates[-1][0]):
        return run_dir, None
    if candidates:
        steps, folder = candidates[-1]
        why = "has no model.zip" if not has_model else "holds an older or incomplete save"
        return folder, f"{run_dir} {why}; resuming from {folder} ({steps} steps)"
    if has_model:
        return run_dir, f"{run_dir}'s last save did not complete; resuming from its model.zip"
    raise ValueError(
        f"{run_dir} has nothing to resume from (no model.zip and no complete checkpoint in "
        f"{run_dir / CHECKPOINTS}); train a new run"
    )


def prepare_resume(run_dir: Path) -> Path:
    """Where ``--resume`` continues from (:func:`resume_source`, saying so when that is a
    checkpoint), after removing the temporary files an interrupted save left behind."""
    source, note = resume_source(run_dir)
    remove_partial_files(run_dir)
    if note:
        print(note)
    return source


def remove_partial_files(run_dir: Path) -> int:
    """Delete the temporary files of writes that a kill interrupted (:func:`atomic_save`'s
    ``.<name>.partial-<pid>.<suffix>``) anywhere in ``run_dir``; returns how many. Only for a
    run no process is writing (``--resume`` calls it before it starts)."""
    partial = [p for p in Path(run_dir).rglob(".*.partial-*") if p.is_file()]
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def write_checkpoint(
    run_dir: Path,
    timesteps: int,
    save: Callable[[Path], object],
    keep: int = 3,
) -> Path | None:
    """One periodic checkpoint: ``save(folder)`` writes the files into
    ``run_dir/checkpoints/step_<timesteps>/``, then the manifest is written; then only the
    newest ``keep`` complete checkpoints stay, and :data:`LARGE_FILES` only in the newest.

    Before writing, when the disk has less room than the previous checkpoint took (plus a
    tenth), the save is skipped with a warning; a save that fails (a full disk, a read-only
    folder) is removed with a warning. Either way the earlier checkpoints stay untouched and
    training goes on; returns the new folder, or ``None`` when nothing was saved.
    """
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINTS / f"step_{int(timesteps)}"
    previous = complete_checkpoints(run_dir)
    if previous:
        needed = _checkpoint_bytes(previous[-1][1]) * 1.1
        free = shutil.disk_usage(previous[-1][1]).free
        if free < needed:
            warnings.warn(
                f"checkpoint at {timesteps} steps skipped: {free / 2**20:.0f} MiB free on the "
                f"disk of {run_dir}, the last checkpoint took {needed / 1.1 / 2**20:.0f} MiB; "
                "free some space (older checkpoints are kept)",
                stacklevel=2,
            )
            return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save(folder)
        write_manifest(folder, timesteps, [p.name for p in folder.iterdir() if p.name != MANIFEST])
    except OSError as err:
        shutil.rmtree(folder, ignore_errors=True)
        warnings.warn(
            f"checkpoint at {timesteps} steps failed ({err}); the earlier ones are kept",
            stacklevel=2,
        )
        return None
    _prune(run_dir, keep)
    return folder


def _checkpoint_bytes(folder: Path) -> int:
    manifest = read_manifest(folder)
    return sum(manifest["files"].values()) if manifest else 0


def _prune(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints (and any incomplete one newer than them, which
    a running save may be writing), and :data:`LARGE_FILES` only in the newest."""
    checkpoints = complete_checkpoints(run_dir)
    for _, folder in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(folder, ignore_errors=True)
    for steps, folder in checkpoints[max(0, len(checkpoints) - keep) : -1]:
        large = [n for n in LARGE_FILES if (folder / n).is_file()]
        if large:
            manifest = read_manifest(folder) or {"files": {}}
            names = [n for n in manifest["files"] if n not in large]
            write_manifest(folder, steps, names)  # first: the folder stays complete
            for name in large:
                (folder / name).unlink(missing_ok=True)
    oldest_kept = checkpoints[max(0, len(checkpoints) - keep)][0] if checkpoints else 0
    for folder in (Path(run_dir) / CHECKPOINTS).glob("step_*"):
        if read_manifest(folder) is None and _step_of(folder) < oldest_kept:
            shutil.rmtree(folder, ignore_errors=True)  # left by a killed save


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix("step_"))
    except ValueError:
        return -1


class BestModel:
    """``best_model.zip`` of a run: the model with the highest return on the train split so far,
    the later one on a tie (a return that saturates, CartPole's 500, would otherwise keep the
    first and least trained policy to reach it). Its score and step count are kept in
    ``best_model.json``, so a resumed run keeps comparing against them rather than starting
    over (and overwriting a better model with its first evaluation)."""

    FILE = "best_model.json"
    #: the folder holding the best model's own ``vecnormalize.pkl`` (a run's final statistics
    #: can be far from those the best model was trained with, on a new task above all)
    STATISTICS = "best"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.score = -float("inf")
        try:
            if (self.run_dir / "best_model.zip").is_file():
                self.score = float(json.loads((self.run_dir / self.FILE).read_text())["return"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a run saved before the score was kept: the next evaluation sets it

    def offer(
        self,
        score: float,
        timesteps: int,
        save: Callable[[Path], object],
        save_statistics: Callable[[Path], object] | None = None,
    ) -> bool:
        """Save with ``save(path)`` when ``score`` ties or beats the best, and its observation
        statistics with ``save_statistics(path)`` (into ``best/vecnormalize.pkl``) when the run
        normalises; returns whether it did."""
        if not score >= self.score:
            return False
        if save_statistics is not None:
            (self.run_dir / self.STATISTICS).mkdir(exist_ok=True)
            atomic_save(self.run_dir / self.STATISTICS / "vecnormalize.pkl", save_statistics)
        atomic_save(self.run_dir / "best_model.zip", save)
        record = {"return": float(score), "timesteps": int(timesteps)}
        write_text(self.run_dir / self.FILE, json.dumps(record))
        self.score = float(score)
        return True
