"""Run folders survive kills: atomic writes, and SIGTERM handled like Ctrl-C by every trainer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.run_folder import atomic_save, write_text

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(tmp_path):
    path = tmp_path / "model.zip"
    write_text(path, "old")

    def dies_halfway(tmp: Path) -> None:
        tmp.write_text("half a new fi")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_save(path, dies_halfway)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["model.zip"]
    atomic_save(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["model.zip"]


def test_the_temporary_file_keeps_the_suffix_writers_add_when_missing(tmp_path):
    seen = []
    atomic_save(tmp_path / "model.zip", lambda tmp: seen.append(tmp) or tmp.write_bytes(b"z"))
    assert seen[0].suffix == ".zip" and seen[0].parent == tmp_path


def _train_then_sigterm(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Start ``train_agent.py``, send SIGTERM once it has logged its first evaluation (the run
    is under way), and wait for it."""
    command = [sys.executable, "scripts/train_agent.py", *args, "-f", str(run_dir)]
    command += ["--no-progress", "--save-freq", "0"]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "best_model.zip").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never evaluated"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.parametrize(
    ("args", "model"),
    [
        (("--env", "hyperrl/ContextualCartPole-v0", "--n-envs", "2", "--eval-freq", "256"), "PPO"),
        (
            ("--env", "hyperrl/TorchPendulum-v0", "--device", "cpu", "--n-envs", "64"),
            "PPO",
        ),
    ],
    ids=["sb3", "device"],
)
def test_sigterm_saves_the_run_exits_143_and_resume_continues(tmp_path, args, model):
    import stable_baselines3

    run_dir = tmp_path / "run"
    args = (*args, "-n", "100000000")
    if "--eval-freq" not in args:
        args = (*args, "--eval-freq", "2048", "--eval-episodes", "4")
    done = _train_then_sigterm(run_dir, *args)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "stopped by SIGTERM" in done.stderr and f"--resume {run_dir}" in done.stderr
    loaded = getattr(stable_baselines3, model).load(run_dir / "model.zip", device="cpu")
    assert 0 < loaded.num_timesteps < 100_000_000
    assert not [p for p in run_dir.iterdir() if ".partial-" in p.name]
    import yaml

    from agents.train import TrainArgs, train

    config = yaml.safe_load((run_dir / "config.yml").read_text())
    config["n_timesteps"] = loaded.num_timesteps + 1024  # a short continuation
    (run_dir / "config.yml").write_text(yaml.safe_dump(config))
    train(TrainArgs(resume=str(run_dir), progress_bar=False, device="cpu", eval_freq=0))
    resumed = getattr(stable_baselines3, model).load(run_dir / "model.zip", device="cpu")
    assert resumed.num_timesteps >= loaded.num_timesteps + 1024
