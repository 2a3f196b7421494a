"""Run folders survive kills: atomic writes, and SIGTERM handled like Ctrl-C by every trainer."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents import run_folder
from agents.run_folder import (
    atomic_save,
    complete_checkpoints,
    read_manifest,
    resume_source,
    write_checkpoint,
    write_manifest,
    write_text,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import train_agent  # noqa: E402


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


def _fake_save(files: dict[str, bytes]):
    def save(folder: Path) -> None:
        for name, data in files.items():
            atomic_save(folder / name, lambda tmp, d=data: tmp.write_bytes(d))

    return save


def test_checkpoints_are_complete_sets_bounded_in_number_and_replay_buffers(tmp_path):
    files = {"model.zip": b"m" * 10, "replay_buffer.pkl": b"r" * 1000}
    for step in (100, 200, 300, 400):
        write_checkpoint(tmp_path, step, _fake_save(files), keep=2)
    kept = complete_checkpoints(tmp_path)
    assert [s for s, _ in kept] == [300, 400]  # the newest two
    old, new = (folder for _, folder in kept)
    assert sorted(p.name for p in new.iterdir()) == ["manifest.json", *sorted(files)]
    assert sorted(p.name for p in old.iterdir()) == ["manifest.json", "model.zip"]
    assert read_manifest(new)["files"] == {"model.zip": 10, "replay_buffer.pkl": 1000}
    # a save killed between its files has no manifest: it does not count, and goes once older
    half = tmp_path / "checkpoints" / "step_450"
    half.mkdir()
    (half / "model.zip").write_bytes(b"m")
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [300, 400]
    (new / "model.zip").write_bytes(b"truncated")  # a listed file of another size: incomplete
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [300]
    write_checkpoint(tmp_path, 500, _fake_save(files), keep=1)
    assert not half.exists() and [s for s, _ in complete_checkpoints(tmp_path)] == [500]


def test_a_checkpoint_that_fails_or_would_not_fit_leaves_the_earlier_ones(tmp_path, monkeypatch):
    files = {"model.zip": b"m" * 10, "replay_buffer.pkl": b"r" * 1000}
    write_checkpoint(tmp_path, 100, _fake_save(files))

    def full_disk(folder: Path) -> None:
        (folder / "model.zip").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.warns(UserWarning, match="at 200 steps failed .*No space left"):
        assert write_checkpoint(tmp_path, 200, full_disk) is None
    assert not (tmp_path / "checkpoints" / "step_200").exists()
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [100]
    assert read_manifest(tmp_path / "checkpoints" / "step_100")["files"]["replay_buffer.pkl"]

    usage = shutil.disk_usage(tmp_path)._replace(free=500)  # less than the last one took
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: usage)
    with pytest.warns(UserWarning, match="at 300 steps skipped: 0 MiB free"):
        assert write_checkpoint(tmp_path, 300, _fake_save(files)) is None
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [100]


def test_resume_takes_the_newest_complete_save(tmp_path):
    files = {"model.zip": b"m" * 10}
    with pytest.raises(ValueError, match="nothing to resume from"):
        resume_source(tmp_path)
    (tmp_path / "model.zip").write_bytes(b"legacy")  # saved before manifests existed
    assert resume_source(tmp_path) == (tmp_path, None)
    write_checkpoint(tmp_path, 100, _fake_save(files))
    write_checkpoint(tmp_path, 200, _fake_save(files))
    write_manifest(tmp_path, 300, ["model.zip"])
    assert resume_source(tmp_path) == (tmp_path, None)  # its own save is the newest
    write_manifest(tmp_path, 150, ["model.zip"])
    folder, note = resume_source(tmp_path)
    assert folder.name == "step_200" and "older or incomplete save" in note
    (tmp_path / "model.zip").unlink()
    folder, note = resume_source(tmp_path)
    assert folder.name == "step_200" and "has no model.zip" in note and "200 steps" in note
    shutil.rmtree(tmp_path / "checkpoints")
    (tmp_path / "model.zip").write_bytes(b"written, but the manifest was not")
    folder, note = resume_source(tmp_path)
    assert folder == tmp_path and "did not complete" in note


@pytest.mark.parametrize(
    "args",
    [
        ["--algo", "sac", "--env", "hyperrl/ContextualPendulum-v0", "-n", "600",
         "--hyperparams", "learning_starts:100", "--save-freq", "200"],
        ["--env", "hyperrl/TorchPendulum-v0", "-n", "768", "--n-envs", "8", "--device", "cpu",
         "--hyperparams", "n_steps:8", "n_minibatches:2", "n_epochs:1", "--save-freq", "128"],
    ],
    ids=["sb3_sac", "device_ppo"],
)  # fmt: skip
def test_resume_without_model_zip_continues_from_the_newest_checkpoint(tmp_path, args, capsys):
    run = tmp_path / "run"
    common = ["--eval-freq", "0", "--no-progress", "--keep-checkpoints", "2", "-f", str(run)]
    assert train_agent.main([*args, *common]) == 0
    kept = complete_checkpoints(run)
    assert len(kept) == 2 and all(n.startswith("step_") for n in os.listdir(run / "checkpoints"))
    if "sac" in args:  # the replay buffer only in the newest checkpoint
        assert not (kept[0][1] / "replay_buffer.pkl").exists()
        assert (kept[1][1] / "replay_buffer.pkl").is_file()
    newest = kept[-1][0]
    (run / "model.zip").unlink()  # lost: a crash before the final save, say
    capsys.readouterr()
    assert train_agent.main(["--resume", str(run), "--no-progress", "--eval-freq", "0"]) == 0
    assert f"resuming from {kept[-1][1]} ({newest} steps)" in capsys.readouterr().out
    assert read_manifest(run)["timesteps"] >= int(args[args.index("-n") + 1])


def test_a_crafted_statistics_file_is_refused_without_running_it(tmp_path, ppo_like_run):
    import pickle

    from agents.evaluation import evaluate_run
    from agents.safe_pickle import load_vecnormalize

    assert load_vecnormalize(ppo_like_run / "vecnormalize.pkl").obs_rms  # the real one loads
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (ppo_like_run / "vecnormalize.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match=r"posix.system is not allowed|os.system is not allowed"):
        evaluate_run(ppo_like_run, splits=["train"], episodes=1)
    (ppo_like_run / "vecnormalize.pkl").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match="not a usable normalisation file"):
        load_vecnormalize(ppo_like_run / "vecnormalize.pkl")
    assert not marker.exists()


@pytest.fixture
def ppo_like_run(tmp_path):
    run = tmp_path / "run"
    args = ["--env", "hyperrl/ContextualPendulum-v0", "--algo", "ppo", "-n", "256", "--n-envs",
            "2", "--hyperparams", "n_steps:64", "batch_size:64", "n_epochs:1", "normalize:true",
            "--eval-freq", "0", "--save-freq", "0", "--no-progress", "-f", str(run)]  # fmt: skip
    assert train_agent.main(args) == 0
    return run


@pytest.mark.parametrize(
    ("env", "extra"),
    [
        ("hyperrl/ContextualPendulum-v0", ["n_steps:32", "batch_size:64", "normalize:true"]),
        ("hyperrl/TorchPendulum-v0", ["n_steps:8", "n_minibatches:2"]),
    ],
    ids=["sb3", "batched"],
)
def test_the_best_model_keeps_the_statistics_it_was_trained_with(tmp_path, env, extra):
    """A run's final ``vecnormalize.pkl`` can be far from what the best model saw (a fine-tuned
    run drifts to its new task): ``best_model.zip`` is evaluated with its own."""
    from agents.run_config import load_run, statistics_dir
    from agents.safe_pickle import load_vecnormalize
    from agents.train import TrainArgs, train

    run_dir = tmp_path / "run"
    train(TrainArgs(algo="ppo", env=env, hyperparams=extra, timesteps=512, n_envs=8,
                    eval_freq=64, eval_episodes=1, save_freq=0, progress_bar=False,
                    tensorboard=False, run_dir=str(run_dir)))  # fmt: skip
    _, _, _, model_path = load_run(run_dir)
    assert model_path.name == "best_model.zip"
    assert statistics_dir(run_dir, model_path) == run_dir / "best"
    best = load_vecnormalize(run_dir / "best" / "vecnormalize.pkl").obs_rms["observation"]
    final = load_vecnormalize(run_dir / "vecnormalize.pkl").obs_rms["observation"]
    assert 0 < best.count <= final.count
