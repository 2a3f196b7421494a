"""``scripts/train_continual.py``: a sequence of tasks trains in order, fills the forgetting
matrix, freezes what the regulariser needs fixed, continues after an interruption, and refuses a
bad config with the reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from stable_baselines3 import PPO

from agents.batched.ppo import DevicePPO
from agents.continual import SequenceConfig, train_sequence
from agents.run_folder import TrainingInterruptedError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import train_continual  # noqa: E402

SMALL = {
    "env": "hyperrl/TorchPendulum-v0",
    "steps_per_task": 256,
    "n_envs": 16,
    "eval_episodes": 4,
    "probes": 8,
    "hyperparams": {"n_steps": 16, "n_minibatches": 2, "n_epochs": 2},
    "tasks": [
        {"name": "low", "train_ranges": {"gravity": [3.0, 6.0]}},
        {"name": "high", "train_ranges": {"gravity": [16.0, 22.0]}},
    ],
}


def _trunk(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    state = PPO.load(run_dir / name / "model.zip", device="cpu").policy.state_dict()
    return {k: v for k, v in state.items() if ".trunk." in k}


def test_a_sequence_fills_the_forgetting_matrix_and_keeps_the_trunk(tmp_path):
    config = SequenceConfig.from_dict(SMALL | {"beta": 1.0})
    results = train_sequence(config, tmp_path / "run", seed=0)
    assert results["tasks"] == ["low", "high"]
    assert len(results["returns"]) == 2 and all(len(r) == 2 for r in results["returns"])
    assert len(results["before"]) == 2 and len(results["drift"]) == 2
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results
    first, second = (_trunk(tmp_path / "run", n) for n in ("after_0_low", "after_1_high"))
    assert first and all(torch.equal(first[k], second[k]) for k in first)
    norms = [
        torch.load(tmp_path / "run" / name / "trainer_state.pt", weights_only=True)["norms"]
        for name in ("after_0_low", "after_1_high")
    ]
    assert torch.equal(norms[0]["obs.observation"][0], norms[1]["obs.observation"][0])


def test_the_regulariser_holds_the_first_tasks_generated_heads(tmp_path):
    drift = {}
    for beta in (0.0, 100.0):
        config = SequenceConfig.from_dict(SMALL | {"beta": beta, "steps_per_task": 512})
        if beta == 0.0:  # drift is only measured where outputs are remembered: a tiny beta
            config.beta = 1e-12
        drift[beta] = train_sequence(config, tmp_path / f"b{beta}", seed=0)["drift"][0]
    assert drift[100.0] < 0.5 * drift[0.0], drift


def test_an_interrupted_sequence_continues_where_it_stopped(tmp_path, monkeypatch):
    config = SequenceConfig.from_dict(SMALL | {"beta": 1.0, "steps_per_task": 512})
    learn, calls = DevicePPO.learn, []

    def stop_in_the_second_task(self, steps, **kwargs):
        calls.append(steps)
        if len(calls) == 2:
            learn(self, steps // 2, **kwargs)
            raise KeyboardInterrupt
        return learn(self, steps, **kwargs)

    monkeypatch.setattr(DevicePPO, "learn", stop_in_the_second_task)
    with pytest.raises(TrainingInterruptedError):
        train_sequence(config, tmp_path / "run", seed=0)
    monkeypatch.setattr(DevicePPO, "learn", learn)
    # another --seed is ignored: the run goes on with its own
    assert train_continual.main(["--resume", str(tmp_path / "run"), "--seed", "7",
                                 "--no-progress"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["returns"]) == 2 and len(results["before"]) == 2
    assert len(results["drift"]) == 2  # the first task's anchors came back with the state
    # the second task went on for the steps it had left, not from its start
    model = PPO.load(tmp_path / "run" / "current" / "model.zip", device="cpu")
    assert model.num_timesteps == 2 * 512
    # and its trunk stayed frozen after the resume
    first, last = (_trunk(tmp_path / "run", n) for n in ("after_0_low", "current"))
    assert all(torch.equal(first[k], last[k]) for k in first)
    assert torch.load(tmp_path / "run" / "continual.pt", weights_only=True)["seed"] == 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"betta": 1.0}, "unknown sequence key 'betta' .did you mean 'beta'"),
        ({"env": "hyperrl/ContextualPendulum-v0"}, "is not a batched env"),
        ({"tasks": []}, "non-empty list"),
        ({"tasks": [{"name": "a", "train_ranges": {"gravty": [3, 4]}}]}, "unknown context"),
        ({"tasks": [{"name": "a", "train_ranges": {"gravity": [3, 4]}}] * 2}, "distinct"),
        ({"tasks": [{"name": "a"}]}, "exactly the keys name and train_ranges"),
        ({"steps_per_task": 0}, "steps_per_task must be a positive integer"),
        ({"beta": -1}, "beta must be a number >= 0"),
        ({"hyperparams": {"env_kwargs": {"train_ranges": {}}}}, "leave it out"),
        ({"policy": "architecture"}, "does not take --policy architecture"),
    ],
)
def test_a_bad_config_names_the_problem(change, match):
    with pytest.raises(ValueError, match=match):
        SequenceConfig.from_dict(SMALL | change)


def test_the_script_reports_bad_input_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("env: hyperrl/TorchPendulum-v0\ntasks: []\n")
    assert train_continual.main([str(bad)]) == 2
    assert "non-empty list" in capsys.readouterr().err
    assert train_continual.main([str(tmp_path / "missing.yml")]) == 2
    assert "cannot read the sequence config" in capsys.readouterr().err
    assert train_continual.main(["--resume", str(tmp_path)]) == 2
    assert "cannot read the sequence config" in capsys.readouterr().err
    config = SequenceConfig.from_dict(SMALL | {"policy": "concat"})
    with pytest.raises(ValueError, match="--policy hyper or lowrank_hyper"):
        train_sequence(config, tmp_path / "concat")
    assert not (tmp_path / "concat").exists()
    config = SequenceConfig.from_dict(SMALL | {"policy": "mlp", "beta": 0.0})
    with pytest.raises(ValueError, match="freeze_trunk needs a policy with trunk layers"):
        train_sequence(config, tmp_path / "mlp")
