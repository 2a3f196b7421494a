"""``train_agent.py --adapt RUN`` and ``evaluate.py --context-source``: the adaptation module is
trained on the run's batched twin, lands in the run folder, continues when unfinished, and the
policy then reads its estimate instead of the true context; with clear errors for what is
missing or broken."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from toy_envs import BatchedDrift

import envs
from agents.adaptation import (
    ADAPTATION_FILE,
    AdaptationConfig,
    SingleEnvSource,
    evaluate_sources,
    fit_adaptation,
    load_adaptation,
    new_module,
    save_adaptation,
    train_adaptation,
)
from agents.run_config import load_run
from agents.train import TrainArgs, train
from hyperrl.adaptation import AdaptationModule

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import evaluate  # noqa: E402
import evaluate_adaptation  # noqa: E402
import export_policy  # noqa: E402
import train_agent  # noqa: E402

SMALL = ["--hyperparams", "n_steps:16", "batch_size:256", "history:4", "hidden:[32]"]


def test_adapt_writes_a_module_that_evaluate_runs_on(pendulum_run, tmp_path, capsys):
    argv = ["--adapt", str(pendulum_run), "-n", "1024", "--n-envs", "16", *SMALL,
            "--no-tensorboard", "--no-progress"]  # fmt: skip
    assert train_agent.main(argv) == 0
    assert "last rollout's error" in capsys.readouterr().out
    state = torch.load(pendulum_run / ADAPTATION_FILE, weights_only=True)
    assert state["num_timesteps"] == 1024 and state["config"]["history"] == 4
    module = load_adaptation(pendulum_run)
    assert module.context_dim == 3 and not module.training
    for source in ("inferred", "nominal"):
        argv = [str(pendulum_run), "--context-source", source, "-n", "2", "--splits", "train",
                "-o", str(tmp_path)]  # fmt: skip
        assert evaluate.main(argv) == 0
        result = json.loads((tmp_path / f"eval_{source}.json").read_text())
        assert result["context_source"] == source
        assert result["summary"]["train"]["episodes"] == 2
    assert not (tmp_path / "eval.json").exists()  # the true-context results are not overwritten


def test_the_policy_reads_the_estimate_not_the_true_context(pendulum_run):
    """A module that always answers 0.5: the policy must act as it does for context 0.5."""
    model, _, run_dir, _ = load_run(pendulum_run)
    module = AdaptationModule(2 * 3 + 1 + 1, 3, history=4, hidden=(8,))
    with torch.no_grad():
        module.net[-1].weight.zero_()
        module.net[-1].bias.fill_(0.5)
    env = gym.make("hyperrl/ContextualPendulum-v0")
    source = SingleEnvSource("inferred", module, env)
    obs, _ = env.reset(seed=3)
    assert not np.allclose(obs["context"], 0.5)
    from agents.safe_pickle import load_vecnormalize

    normalize = load_vecnormalize(run_dir / "vecnormalize.pkl").normalize_obs
    for _ in range(5):
        given = source.given(obs)
        np.testing.assert_allclose(given["context"], 0.5)
        np.testing.assert_array_equal(given["observation"], obs["observation"])
        action, _ = model.predict(normalize(given), deterministic=True)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        source.observe(obs, action, reward, next_obs, terminated or truncated)
        obs = next_obs
    assert source.estimator.history.valid[0].sum() == 4


def test_an_unfinished_module_is_continued(pendulum_run, capsys):
    config = AdaptationConfig(n_timesteps=512, n_envs=8, n_steps=16, history=4, hidden=(32,))
    train_adaptation(pendulum_run, config)
    assert torch.load(pendulum_run / ADAPTATION_FILE, weights_only=True)["num_timesteps"] == 512
    longer = AdaptationConfig(**{**config.__dict__, "n_timesteps": 1024})
    train_adaptation(pendulum_run, longer)
    assert "continuing the adaptation module" in capsys.readouterr().out
    assert torch.load(pendulum_run / ADAPTATION_FILE, weights_only=True)["num_timesteps"] == 1024


def test_phase_two_learns_a_hidden_gain_from_the_history():
    """On :class:`BatchedDrift` the gain shows only in the transitions: the module must read it
    to within a fraction of the constant guess's error (0.5 in the observation's scale), which
    misaligned labels, a history that ignores resets or a module blind to its input miss."""
    torch.manual_seed(0)
    env = BatchedDrift(num_envs=64, episode_length=20, seed=0)
    config = AdaptationConfig(
        n_timesteps=64 * 20 * 60, n_steps=20, n_epochs=4, batch_size=256, history=4,
        hidden=(64, 64),
    )  # fmt: skip
    module = new_module(env, config)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    seen: list[dict[str, float]] = []

    def random_policy(obs):
        return torch.randint(0, 2, (obs["observation"].shape[0], 1)) * 2.0 - 1  # ±1

    steps = fit_adaptation(random_policy, env, module, optimizer, config, 0, 0,
                           lambda _, values: seen.append(values))  # fmt: skip
    assert steps == config.n_timesteps and len(seen) == 60
    assert seen[0]["adaptation/abs_error_gain"] > 0.25
    assert seen[-1]["adaptation/abs_error_gain"] < 0.1


def test_the_comparison_script_and_a_context_change(pendulum_run, tmp_path, capsys):
    config = AdaptationConfig(n_timesteps=512, n_envs=8, n_steps=16, history=4, hidden=(32,))
    train_adaptation(pendulum_run, config)
    out = tmp_path / "adaptation.json"
    argv = [str(pendulum_run), "--worlds", "4", "--splits", "train", "interpolation",
            "--change-at", "50", "--json", str(out), "--plot", str(tmp_path / "c.png")]  # fmt: skip
    assert evaluate_adaptation.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| train |" in printed and "| interpolation |" in printed
    assert "context changed after 50 steps" in printed
    assert (tmp_path / "c.png").stat().st_size > 0
    result = json.loads(out.read_text())[str(pendulum_run)]
    assert set(result["train"]) >= {"true_return", "inferred_return", "nominal_return"}
    assert set(result["train"]["abs_error"]) == {"gravity", "mass", "length"}
    change = result["context_change"]
    assert len(change["error"]) == 200
    assert change["peak"] == pytest.approx(max(change["error"][50:]))
    assert evaluate_adaptation.main([str(pendulum_run), "--change-at", "2"]) == 2
    assert "change_at must lie between" in capsys.readouterr().err


def test_the_policy_for_unknown_contexts_exports_with_its_adaptation_module(
    pendulum_run, tmp_path, capsys
):
    config = AdaptationConfig(n_timesteps=512, n_envs=8, n_steps=16, history=4, hidden=(32,))
    train_adaptation(pendulum_run, config)
    out = tmp_path / "export"
    assert export_policy.main([str(pendulum_run), "--inferred", "-o", str(out)]) == 0
    assert "for inferred contexts" in capsys.readouterr().out
    summary = json.loads((out / "export_inferred.json").read_text())
    assert summary["max_action_gap"] < 1e-5 and summary["checked_steps"] == 200
    assert summary["history"] == [4, 2 * 3 + 1 + 1]
    actor = torch.load(out / "actor_inferred.pt", weights_only=False)
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(rng.normal(0, 1, (5, 3)), dtype=torch.float32)
    transitions = torch.as_tensor(rng.normal(0, 1, (5, 4, 8)), dtype=torch.float32)
    valid = torch.ones(5, 4)
    valid[0] = 0.0  # a fresh episode: no history yet
    expected = actor(obs, transitions, valid)
    scripted = torch.jit.load(str(out / "actor_inferred.ts"))
    torch.testing.assert_close(scripted(obs, transitions, valid), expected)
    other = transitions.clone()
    other[:, :, 4] += 1.0  # other rewards: another estimate, another action
    assert not torch.allclose(actor(obs, other, valid), expected)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / "actor_inferred.onnx"))
    feeds = {"obs": obs.numpy(), "transitions": transitions.numpy(), "valid": valid.numpy()}
    np.testing.assert_allclose(session.run(None, feeds)[0], expected.numpy(), atol=1e-5)
    with pytest.raises(SystemExit):
        export_policy.main([str(pendulum_run), "--inferred", "--context", "gravity=9"])


def test_a_history_policy_trains_and_is_compared_on_its_returns(tmp_path, capsys):
    """The memory baseline: a plain policy on history observations (no context)."""
    run_dir = tmp_path / "history"
    args = TrainArgs(
        algo="ppo", env="hyperrl/TorchPendulum-v0", policy="none",
        hyperparams=["env_kwargs:{history: 4}", "n_steps:16"], timesteps=512, n_envs=16,
        eval_freq=256, eval_episodes=2, save_freq=0, progress_bar=False, tensorboard=False,
        run_dir=str(run_dir),
    )  # fmt: skip
    train(args)
    assert evaluate_adaptation.main([str(run_dir), "--worlds", "4", "--splits", "train"]) == 0
    assert "| train | " in capsys.readouterr().out
    assert evaluate.main([str(run_dir), "-n", "1"]) == 2
    assert "evaluate_adaptation.py" in capsys.readouterr().err
    table = evaluate_sources(run_dir, ["train"], sources=["true"], worlds=4)
    assert set(table["train"]) == {"true_return"}
    with pytest.raises(ValueError, match="shows no context"):
        train_adaptation(run_dir, AdaptationConfig(n_timesteps=16, n_envs=4))


def test_evaluate_still_runs_envs_without_a_context(tmp_path):
    run_dir = tmp_path / "cartpole"
    args = TrainArgs(
        algo="ppo", env="CartPole-v1", policy="mlp", hyperparams=["n_steps:32"], timesteps=64,
        n_envs=2, eval_freq=0, save_freq=0, progress_bar=False, tensorboard=False,
        run_dir=str(run_dir),
    )  # fmt: skip
    train(args)
    assert evaluate.main([str(run_dir), "-n", "1"]) == 0
    assert evaluate.main([str(run_dir), "-n", "1", "--context-source", "nominal"]) == 2


def test_clear_errors(pendulum_run, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yml", "model.zip", "vecnormalize.pkl"):
        (bare / name).write_bytes((pendulum_run / name).read_bytes())
    with pytest.raises(ValueError, match="has no adaptation module.*--adapt"):
        load_adaptation(bare)
    assert evaluate.main([str(bare), "--context-source", "inferred", "-n", "1"]) == 2
    assert "--adapt" in capsys.readouterr().err
    (bare / ADAPTATION_FILE).write_bytes(b"not a module")
    with pytest.raises(ValueError, match="is corrupt or not an adaptation module"):
        load_adaptation(bare)
    with pytest.raises(ValueError, match=r"unknown adaptation keys \['histroy'\]"):
        AdaptationConfig.from_dict({"histroy": 4})
    with pytest.raises(ValueError, match="history must be >= 1"):
        AdaptationConfig.from_dict({"history": 0})
    with pytest.raises(SystemExit):
        train_agent.main(["--adapt", str(bare), "--resume", str(bare)])
    with pytest.raises(ValueError, match="unknown context source"):
        SingleEnvSource("guessed", None, gym.make("hyperrl/ContextualPendulum-v0"))
    with pytest.raises(ValueError, match="shows no context"):
        SingleEnvSource("true", None, gym.make("Pendulum-v1"))


def test_save_and_load_round_trip(tmp_path):
    module = AdaptationModule(5, 2, history=3, hidden=(7,))
    module.update_statistics(torch.randn(20, 5))
    save_adaptation(tmp_path, module, None, AdaptationConfig(history=3, hidden=(7,)), 100)
    loaded = load_adaptation(tmp_path)
    history, valid = torch.randn(4, 3, 5), torch.ones(4, 3, dtype=torch.bool)
    torch.testing.assert_close(loaded(history, valid), module(history, valid))


def test_pendulum_has_a_batched_twin():
    assert envs.batched_twin("hyperrl/ContextualPendulum-v0") == "hyperrl/TorchPendulum-v0"
