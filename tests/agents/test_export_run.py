"""``scripts/export_policy.py``: a run's policy for one context as plain files that act as the
policy does, and clear errors for what cannot be exported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.train import TrainArgs, train

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import export_policy  # noqa: E402


def test_the_exported_files_act_as_the_policy_in_that_context(pendulum_run, tmp_path, capsys):
    out = tmp_path / "export"
    argv = [str(pendulum_run), "--context", "gravity=14", "-o", str(out)]
    assert export_policy.main(argv) == 0
    assert "actions within" in capsys.readouterr().out
    summary = json.loads((out / "export.json").read_text())
    assert summary["context"]["gravity"] == 14.0 and summary["action"] == "clip"
    assert summary["max_action_gap"] < 1e-5 and summary["checked_steps"] == 200
    assert summary["params"]["exported"] < summary["params"]["full_policy_actor"]
    actor = torch.load(out / "actor.pt", weights_only=False)
    scripted = torch.jit.load(str(out / "actor.ts"))
    obs = np.random.default_rng(0).normal(0, 1, (16, summary["obs_dim"])).astype(np.float32)
    expected = actor(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(scripted(torch.as_tensor(obs)).numpy(), expected, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / "actor.onnx"))
    np.testing.assert_allclose(session.run(None, {"obs": obs})[0], expected, atol=1e-5)
    # another context gives another policy
    assert export_policy.main([str(pendulum_run), "--context", "gravity=6", "-o", str(out)]) == 0
    other = torch.load(out / "actor.pt", weights_only=False)
    assert not np.allclose(other(torch.as_tensor(obs)).numpy(), expected)


def test_what_cannot_be_exported_is_refused_with_one_clear_line(pendulum_run, tmp_path, capsys):
    out = ["-o", str(tmp_path / "x")]
    for argv, expected in [
        (["--context", "gravity=99"], "'gravity'=99.0 is outside its allowed range"),
        (["--context", "gravitty=9"], "unknown context features ['gravitty']"),
        (["--context", "gravity"], "--context takes NAME=VALUE pairs"),
    ]:
        assert export_policy.main([str(pendulum_run), *argv, *out]) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, argv
    plain = tmp_path / "plain"
    args = TrainArgs(
        algo="ppo", env="CartPole-v1", policy="mlp", hyperparams=["n_steps:32", "batch_size:32"],
        timesteps=64, eval_freq=0, save_freq=0, progress_bar=False, tensorboard=False,
        run_dir=str(plain),
    )  # fmt: skip
    train(args)
    assert export_policy.main([str(plain), *out]) == 2
    assert "not one of hyperrl's policies" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written for a refused export
