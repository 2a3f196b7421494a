"""Fault injection: a run killed anywhere -- between saves, between the files of one save, half
way through writing a file -- resumes, loses at most one save interval, and leaves no file that
fails to load. Also: saves onto a read-only folder, and truncated or foreign files given to
``evaluate.py``, ``--resume`` and ``--init-from``.

A kill is ``os._exit(137)`` (what SIGKILL leaves: no handler, no cleanup) injected at the N-th
file write of a run (:func:`agents.run_folder.atomic_save`), before the write or after the data
is written but before the rename. 7 kills here are deterministic (each then resumed, or refused
with a clear error when nothing was saved yet); the SIGKILL-at-random-times test is marked slow.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stable_baselines3 import PPO, SAC

from agents import run_folder
from agents.run_folder import complete_checkpoints, read_manifest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import evaluate as evaluate_script  # noqa: E402
import train_agent  # noqa: E402

#: a small SB3 run: PPO on contextual CartPole, a checkpoint every 128 steps, 768 in all
RUN = ["--env", "hyperrl/ContextualCartPole-v0", "-n", "768", "--n-envs", "2", "--hyperparams",
       "n_steps:32", "batch_size:64", "n_epochs:1", "--save-freq", "128", "--eval-freq", "0",
       "--no-progress", "--keep-checkpoints", "2"]  # fmt: skip
SAVE_FREQ = 128

_KILLER = """
import os, sys
import agents.run_folder as run_folder, agents.sb3_train as train
kill_at, mode = int(sys.argv[1]), sys.argv[2]
calls = [0]
original = run_folder.atomic_save

def atomic_save(path, write):
    calls[0] += 1
    if calls[0] == kill_at:
        if mode == "before":
            os._exit(137)
        def write_then_die(tmp):
            write(tmp)
            os._exit(137)  # the data is on disk under its temporary name, never renamed
        return original(path, write_then_die)
    return original(path, write)

run_folder.atomic_save = train.atomic_save = atomic_save
sys.path.insert(0, "scripts")
import train_agent
sys.exit(train_agent.main(sys.argv[3:]))
"""


def _train_killed_at(run: Path, kill_at: int, mode: str) -> int:
    command = [sys.executable, "-c", _KILLER, str(kill_at), mode, *RUN, "-f", str(run)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True).returncode


def _check_every_save_loads(run: Path) -> int:
    """Every complete save of ``run`` loads; returns how many were checked."""
    saves = [folder for _, folder in complete_checkpoints(run)]
    saves += [run] if read_manifest(run) is not None else []
    for folder in saves:
        PPO.load(folder / "model.zip", device="cpu")
    return len(saves)


def _step_of_write(n: int) -> int:
    """The env step at which this run makes its ``n``-th file write: config.yml (1) and
    contexts.yml (2), then per checkpoint every 128 steps model.zip and manifest.json (3-14),
    then the final save's model.zip and manifest.json at 768 (15, 16)."""
    return 0 if n <= 2 else min(SAVE_FREQ * ((n - 3) // 2 + 1), 768)


@pytest.mark.parametrize(
    ("kill_at", "mode"),
    [(5, "before"), (6, "during"), (8, "before"), (9, "during"), (15, "during"), (16, "before")],
)
def test_a_run_killed_at_any_write_resumes_and_loses_at_most_one_interval(
    tmp_path, kill_at, mode, capsys
):
    run = tmp_path / "run"
    assert _train_killed_at(run, kill_at, mode) == 137
    saved = [s for s, _ in complete_checkpoints(run)]
    assert _check_every_save_loads(run) == len(saved)  # nothing half written counts as a save
    resume = ["--resume", str(run), "--no-progress", "--eval-freq", "0"]
    assert train_agent.main(resume) == 0
    out = capsys.readouterr().out
    own_save = kill_at == 16  # killed between the final model.zip and its manifest
    resumed_from = 768 if own_save else saved[-1]
    assert _step_of_write(kill_at) - resumed_from <= SAVE_FREQ  # lost: at most one interval
    if not own_save:
        assert f"resuming from {run / 'checkpoints' / f'step_{saved[-1]}'}" in out
    assert PPO.load(run / "model.zip", device="cpu").num_timesteps >= 768
    assert _check_every_save_loads(run) >= 2
    assert not list(run.rglob(".*.partial-*"))  # the killed write's temporary file is gone


def test_a_run_killed_before_its_first_save_says_there_is_nothing_to_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train_killed_at(run, 4, "during") == 137  # the first checkpoint's manifest
    assert complete_checkpoints(run) == []
    assert train_agent.main(["--resume", str(run), "--no-progress"]) == 2
    assert "nothing to resume from" in capsys.readouterr().err


def test_a_final_save_onto_a_read_only_folder_fails_clearly_and_keeps_the_last_one(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    assert train_agent.main([*RUN[:2], "-n", "256", *RUN[4:], "-f", str(run)]) == 0
    before = (run / "model.zip").read_bytes()

    def read_only(src, dst):  # what renaming into a read-only folder does (root ignores chmod)
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(run_folder.os, "replace", read_only)
    with pytest.warns(UserWarning, match="checkpoint at 384 steps failed"):
        code = train_agent.main(
            ["--resume", str(run), "-n", "512", "--save-freq", "128", "--no-progress"]
        )
    assert code == 1 and "could not write the run's files" in capsys.readouterr().err
    monkeypatch.undo()
    assert (run / "model.zip").read_bytes() == before and not list(run.rglob(".*.partial-*"))
    assert [s for s, _ in complete_checkpoints(run)] == [128, 256]


def test_a_checkpoint_into_a_full_or_read_only_folder_is_skipped_and_training_goes_on(tmp_path):
    run = tmp_path / "run"
    assert train_agent.main([*RUN[:2], "-n", "256", *RUN[4:], "-f", str(run)]) == 0
    kept = complete_checkpoints(run)
    blocked = run / "checkpoints" / "step_384"
    blocked.write_text("a file where the next checkpoint's folder goes")  # mkdir fails
    resume = ["--resume", str(run), "-n", "512", "--save-freq", "128", "--no-progress"]
    with pytest.warns(UserWarning, match="checkpoint at 384 steps failed"):
        code = train_agent.main([*resume, "--keep-checkpoints", "3"])  # none pruned away
    assert code == 0 and PPO.load(run / "model.zip", device="cpu").num_timesteps >= 512
    assert [s for s, _ in kept] == [s for s, _ in complete_checkpoints(run)][: len(kept)]


def test_truncated_and_foreign_files_get_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--algo", "sac", "--env", "hyperrl/ContextualPendulum-v0", "-n", "300",
            "--hyperparams", "learning_starts:100", "normalize:true", "--save-freq", "0",
            "--eval-freq", "0", "--no-progress", "-f", str(run)]  # fmt: skip
    assert train_agent.main(args) == 0
    original = {n: (run / n).read_bytes() for n in ("vecnormalize.pkl", "replay_buffer.pkl")}
    cases = [
        ("vecnormalize.pkl", original["vecnormalize.pkl"][:50], "not a usable normalisation"),
        ("vecnormalize.pkl", json.dumps({"foreign": 1}).encode(), "not a usable normalisation"),
        ("replay_buffer.pkl", original["replay_buffer.pkl"][:100], "replay_buffer.pkl is corrupt"),
        ("model.zip", b"PK\x03\x04 truncated", "is corrupt or not an SB3 model"),
    ]
    for name, data, message in cases:
        good = (run / name).read_bytes()
        (run / name).write_bytes(data)
        resume = ["--resume", str(run), "-n", "400", "--no-progress", "--eval-freq", "0"]
        assert train_agent.main(resume) == 2
        assert message in capsys.readouterr().err, name
        if name != "replay_buffer.pkl":  # evaluation and fine-tuning do not read it
            assert evaluate_script.main([str(run), "-n", "1"]) == 2
            assert message in capsys.readouterr().err, name
            tune = [*args[:-1], str(tmp_path / "tuned"), "--init-from", str(run)]
            assert train_agent.main(tune) == 2
            assert message in capsys.readouterr().err, name
            assert not (tmp_path / "tuned").exists()
        (run / name).write_bytes(good)
    SAC.load(run / "model.zip", device="cpu")


@pytest.mark.slow
def test_sigkill_at_random_times_then_resume(tmp_path):
    """Kill -9 at 5 random moments of a run (seeded), resuming after each; the run finishes with
    every save loadable."""
    rng = random.Random(0)
    run = tmp_path / "run"
    command = [sys.executable, "scripts/train_agent.py", *RUN, "-n", "3072", "-f", str(run)]
    resume = [sys.executable, "scripts/train_agent.py", "--resume", str(run), "--no-progress",
              "--eval-freq", "0"]  # fmt: skip
    for attempt in range(5):
        proc = subprocess.Popen(command if attempt == 0 else resume, cwd=ROOT)
        time.sleep(rng.uniform(4.0, 10.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _check_every_save_loads(run)
    assert subprocess.run(resume, cwd=ROOT).returncode == 0
    assert PPO.load(run / "model.zip", device="cpu").num_timesteps >= 3072
