"""``--policy recurrent`` on the batched PPO: the update replays the rollout's memory exactly, it
learns what only a memory can do, and its run folder is evaluated, resumed and refused where a
memory makes no sense (SB3's PPO, an adaptation module, a plain export)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from toy_envs import BatchedCue

from agents.adaptation import AdaptationConfig, evaluate_sources, train_adaptation
from agents.batched.evaluation import evaluate_batched
from agents.batched.ppo import DevicePPO, DevicePPOConfig
from agents.batched.storage import env_major
from agents.evaluation import evaluate_run
from agents.export import export_run
from agents.train import TrainArgs, train
from hyperrl.policies.recurrent import RecurrentActorCriticPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import evaluate_adaptation  # noqa: E402

CUE_CONFIG = dict(n_steps=16, n_minibatches=2, n_epochs=4, learning_rate=3e-3)


def _cue_trainer(policy_class, policy_kwargs, **config) -> DevicePPO:
    cfg = DevicePPOConfig(normalize_obs=False, normalize_reward=False, **(CUE_CONFIG | config))
    return DevicePPO(BatchedCue(64, seed=0), policy_class, policy_kwargs, cfg, seed=0)


def test_the_update_replays_each_rollout_from_the_memory_it_started_with():
    algo = _cue_trainer(RecurrentActorCriticPolicy, {"context_keys": (), "memory_size": 16},
                        n_steps=10)  # fmt: skip
    worlds = torch.arange(algo.env.num_envs)
    for rollout in range(3):  # episodes of 8 steps end inside rollouts of 10
        batch = algo.collect()
        assert batch["dones"][:-1].any()
        if rollout:
            assert batch["memory"].hidden.abs().sum() > 0  # carried over, mid-episode
        starts = torch.cat([torch.zeros_like(batch["dones"][:1]), batch["dones"][:-1]])
        with torch.no_grad():
            values, log_prob, _ = algo.policy.evaluate_sequences(
                {k: env_major(v, worlds) for k, v in batch["obs"].items()},
                env_major(batch["actions"], worlds),
                batch["memory"],
                env_major(starts, worlds),
            )
        assert torch.allclose(log_prob, env_major(batch["logp"], worlds), atol=1e-4)
        assert torch.allclose(values.flatten(), env_major(batch["values"], worlds), atol=1e-4)


def test_the_update_sees_the_rollouts_probabilities_in_shuffled_minibatches():
    """With a zero learning rate every minibatch of every epoch (worlds shuffled) must recompute
    the log-probabilities the rollout stored: a clip range of 1e-4 then clips nothing. A memory
    taken from the wrong world or step, or episode starts off by one, would."""
    algo = _cue_trainer(RecurrentActorCriticPolicy, {"context_keys": (), "memory_size": 16},
                        n_steps=10, n_minibatches=4, n_epochs=2, learning_rate=0.0,
                        clip_range=1e-4)  # fmt: skip
    for _ in range(3):
        batch = algo.collect()
        assert batch["dones"][:-1].any()
        assert float(algo.update(batch)["clip"]) == 0.0


def test_it_learns_to_remember_a_cue_that_a_feed_forward_policy_cannot():
    torch.set_num_threads(1)
    returns = {}
    for name, policy_class, kwargs in (
        ("recurrent", RecurrentActorCriticPolicy, {"context_keys": (), "memory_size": 32}),
        ("feed_forward", MultiInputActorCriticPolicy, {}),
    ):
        algo = _cue_trainer(policy_class, kwargs)
        algo.learn(24_000)
        returns[name] = evaluate_batched(algo, BatchedCue(64, seed=1), seed=5)["return"]
    # 8 steps of -|action - cue|: without memory only the first step can match (about -7)
    assert returns["recurrent"] > -1.0, returns
    assert returns["feed_forward"] < -5.0, returns


@pytest.fixture(scope="module")
def recurrent_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "recurrent"
    args = TrainArgs(
        algo="ppo", env="hyperrl/TorchPendulum-v0", policy="recurrent",
        hyperparams=["n_steps:16", "n_minibatches:2", "policy_kwargs:{memory_size: 8}"],
        timesteps=256, n_envs=8, eval_freq=128, eval_episodes=2, save_freq=0,
        progress_bar=False, tensorboard=False, run_dir=str(run_dir),
    )  # fmt: skip
    train(args)
    return run_dir


def test_a_recurrent_run_loads_evaluates_and_resumes(recurrent_run, capsys):
    model = PPO.load(recurrent_run / "model.zip", device="cpu")
    assert isinstance(model.policy, RecurrentActorCriticPolicy)
    assert model.policy.memory_size == 8
    state = torch.load(recurrent_run / "trainer_state.pt", weights_only=True)
    assert len(state["memory"]) == 2
    result = evaluate_run(recurrent_run, episodes=1)  # the CPU twin, through predict's state
    assert result["summary"]["train"]["episodes"] == 1
    table = evaluate_sources(recurrent_run, ["train"], sources=["true"], worlds=4)
    assert set(table["train"]) == {"true_return"}
    assert evaluate_adaptation.main([str(recurrent_run), "--worlds", "4", "--splits",
                                     "train", "--sources", "true"]) == 0  # fmt: skip
    assert "| train |" in capsys.readouterr().out
    train(TrainArgs(resume=str(recurrent_run), timesteps=384, progress_bar=False,
                    tensorboard=False))  # fmt: skip
    assert PPO.load(recurrent_run / "model.zip", device="cpu").num_timesteps == 384


def test_where_a_memory_makes_no_sense_it_is_refused(recurrent_run, tmp_path):
    with pytest.raises(ValueError, match="batched PPO only; use --env hyperrl/TorchPendulum-v0"):
        train(TrainArgs(algo="ppo", env="hyperrl/ContextualPendulum-v0", policy="recurrent",
                        timesteps=64, run_dir=str(tmp_path / "sb3"), progress_bar=False,
                        tensorboard=False))  # fmt: skip
    with pytest.raises(ValueError, match="not available for SAC"):
        train(TrainArgs(algo="sac", env="hyperrl/TorchPendulum-v0", policy="recurrent",
                        timesteps=64, run_dir=str(tmp_path / "sac"), progress_bar=False,
                        tensorboard=False))  # fmt: skip
    with pytest.raises(ValueError, match="recurrent policy, which reads no context"):
        train_adaptation(recurrent_run, AdaptationConfig(n_timesteps=16, n_envs=4))
    with pytest.raises(ValueError, match="recurrent policy"):
        export_run(recurrent_run, out_dir=tmp_path / "export")
