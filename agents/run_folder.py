"""What every trainer does to its run folder: write files so that a crash never leaves half of one,
and stop on a termination signal the way it stops on Ctrl-C (save, then say how to resume).

:func:`atomic_save` writes through a temporary file in the same folder, flushed to disk and then
renamed over the target (``os.replace`` is atomic on POSIX), so a reader of ``model.zip`` sees the
old file or the new one, never a truncated one, whether the writer was killed or the disk filled.
:func:`stop_on_signals` turns SIGTERM and SIGHUP (what ``timeout``, Docker, Slurm and cloud
preemption send) into the ``KeyboardInterrupt`` that the trainers already answer by saving;
the trainers then raise :class:`TrainingInterruptedError`, which ``train_agent.py`` turns into a
non-zero exit status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

#: the signals that stop a run like Ctrl-C does
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class TrainingInterruptedError(Exception):
    """Training stopped on a signal after saving the run.

    :param signum: the signal (SIGINT for Ctrl-C).
    :param timesteps: env steps trained when it stopped.
    :param run_dir: the run folder, which ``--resume`` continues.
    """

    def __init__(self, signum: int, timesteps: int, run_dir: Path) -> None:
        self.signum, self.timesteps, self.run_dir = signum, timesteps, run_dir
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at {timesteps} steps; the run is saved. Continue with "
            f"--resume {run_dir}"
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
    run_dir: Path, save: Callable[[], object], timesteps: Callable[[], int]
) -> Iterator[None]:
    """Run the block (training) under :func:`stop_on_signals`, then ``save()`` however it ended.
    A stop signal or Ctrl-C is reported with the resume command and, once saved, raised again as
    :class:`TrainingInterruptedError`; ``timesteps()`` gives the steps trained so far."""
    stopped: KeyboardInterrupt | None = None
    try:
        with stop_on_signals():
            yield
    except KeyboardInterrupt as err:
        stopped = err
        print(f"\ninterrupted at {timesteps()} steps; saving. Continue with --resume {run_dir}")
    finally:
        save()
    if stopped is not None:
        raise TrainingInterruptedError(signal_of(stopped), timesteps(), run_dir)


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
