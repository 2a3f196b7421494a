"""The on-device path: batched envs (contract, parity with the CPU env), the device PPO trainer
(GAE, layout, normalisation, head reuse, learning) and its run folder (SB3 loads it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import envs
from agents.batched.distributed import average_gradients
from agents.batched.normalization import RunningNorm
from agents.batched.ppo import DevicePPO, DevicePPOConfig
from agents.batched.storage import env_major as _env_major
from agents.batched.storage import gae
from agents.batched.trainer import EpisodeStats, use_tf32
from agents.evaluation import evaluate_run
from agents.train import TrainArgs, train
from envs.batched import sample_contexts, scale_contexts
from envs.classic import PENDULUM_CONTEXT, ContextualPendulum
from envs.classic.batched import TorchPendulum
from hyperrl.conditioning import HyperHead


@pytest.mark.parametrize("split", envs.SPLITS)
def test_sampled_contexts_fall_in_their_split_and_cover_it(split):
    g = torch.Generator().manual_seed(0)
    values = sample_contexts(PENDULUM_CONTEXT, 3000, split, g, torch.device("cpu"))
    names = PENDULUM_CONTEXT.names
    rows = [dict(zip(names, map(float, row), strict=True)) for row in values]
    assert {PENDULUM_CONTEXT.split_of(r) for r in rows} == {split}
    if split == "train":  # both train pieces of every feature, around the hole
        for i, f in enumerate(PENDULUM_CONTEXT.features):
            assert (values[:, i] < f.holdout[0]).any() and (values[:, i] > f.holdout[1]).any()
    if split == "extrapolation":  # below and above train, by the pieces' lengths
        feats = PENDULUM_CONTEXT.features
        low = (values < torch.tensor([f.train[0] for f in feats])).any(1).float().mean()
        expected = np.mean(
            [
                (f.train[0] - f.bounds[0]) / (f.bounds[1] - f.train[1] + f.train[0] - f.bounds[0])
                for f in feats
            ]
        )
        assert float(low) == pytest.approx(expected, abs=0.03)


def test_scaled_contexts_match_the_cpu_convention():
    g = torch.Generator().manual_seed(1)
    values = sample_contexts(PENDULUM_CONTEXT, 5, "extrapolation", g, torch.device("cpu"))
    ours = scale_contexts(PENDULUM_CONTEXT, values)
    for row, scaled in zip(values, ours, strict=True):
        ref = PENDULUM_CONTEXT.to_array(
            dict(zip(PENDULUM_CONTEXT.names, map(float, row), strict=True))
        )
        np.testing.assert_allclose(scaled.numpy(), ref, rtol=1e-5)


def test_torch_pendulum_matches_gymnasium_and_auto_resets():
    cpu = ContextualPendulum()
    obs, info = cpu.reset(
        seed=3, options={"context": {"gravity": 14.0, "mass": 0.6, "length": 1.3}}
    )
    ctx = [info["context"][n] for n in PENDULUM_CONTEXT.names]
    batched = TorchPendulum(3, seed=0)
    batched.reset(contexts=torch.tensor([ctx] * 3))
    batched.state[:] = torch.tensor(cpu.unwrapped.state, dtype=torch.float32)
    rng = np.random.default_rng(0)
    for t in range(200):
        action = rng.uniform(-2.5, 2.5, (1,)).astype(np.float32)  # beyond the bounds: both clip
        cpu_obs, cpu_reward, _, cpu_truncated, _ = cpu.step(action)
        out, reward, terminated, truncated, info = batched.step(torch.tensor(action).expand(3, 1))
        final = info["final_observation"]
        np.testing.assert_allclose(
            final["observation"][0].numpy(), cpu_obs["observation"], atol=2e-4
        )
        np.testing.assert_allclose(final["context"][0].numpy(), cpu_obs["context"], atol=1e-6)
        assert reward[0].item() == pytest.approx(cpu_reward, abs=2e-3)
        assert not terminated.any()
        assert bool(truncated[0]) == cpu_truncated == (t == 199)
    # after the truncation every world started over with a new context from the train split
    assert (batched.episode_steps == 0).all()
    assert not torch.allclose(batched.contexts[0], torch.tensor(ctx))
    assert not torch.allclose(out["observation"], final["observation"])
    for row in batched.contexts:
        context = dict(zip(PENDULUM_CONTEXT.names, map(float, row), strict=True))
        assert PENDULUM_CONTEXT.split_of(context) == "train"


def test_staggered_episodes_truncate_spread_over_the_horizon():
    env = TorchPendulum(2000, seed=0)
    env.reset()
    env.stagger_episodes()
    start = env.episode_steps.clone()
    assert start.min() >= 0 and start.max() < 200
    assert abs(start.float().mean().item() - 99.5) < 5  # uniform over [0, 200)
    truncated_after = []
    for _ in range(20):
        _, _, _, truncated, _ = env.step(torch.zeros(2000, 1))
        truncated_after.append(int(truncated.sum()))
    # about 2000 / 200 = 10 worlds per step, not all 2000 at step 200
    assert sum(truncated_after) == int((start >= 180).sum()) and 100 < sum(truncated_after) < 300
    assert (env.episode_steps[start >= 180] < 20).all()
    env.reset()
    env.stagger_episodes(granularity=32)  # truncations on one step in 32: steps 8, 40, 72...
    assert set(env.episode_steps.tolist()) == set(range(0, 200, 32))
    when = [int(env.step(torch.zeros(2000, 1))[3].sum()) for _ in range(64)]
    assert [t for t, n in enumerate(when) if n] == [7, 39]


def test_batched_env_errors_name_the_fix():
    with pytest.raises(ValueError, match="num_envs"):
        TorchPendulum(0)
    with pytest.raises(ValueError, match="split"):
        TorchPendulum(2, split="test")
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        TorchPendulum(2).reset(contexts=torch.ones(2, 2))
    with pytest.raises(ValueError, match="TorchPendulum-v0"):
        envs.make_batched("hyperrl/TorchPendulum-v1", 2)


def test_cpu_twin_gets_the_run_env_kwargs_less_warp_buffer_sizes():
    kwargs = {"nconmax": 64, "njmax": 128, "ctrl_cost_weight": 0.2}
    assert envs.cpu_twin("hyperrl/WarpAnt-v0") == "hyperrl/ContextualAnt-v0"
    assert envs.twin_kwargs("hyperrl/WarpAnt-v0", kwargs) == {"ctrl_cost_weight": 0.2}
    assert envs.twin_kwargs("hyperrl/ContextualAnt-v0", kwargs) == kwargs


def test_gae_matches_a_direct_sum():
    g = torch.Generator().manual_seed(0)
    T, N, gamma, lam = 7, 3, 0.9, 0.8
    rewards, values = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    dones = (torch.rand(T, N, generator=g) < 0.3).float()
    last = torch.randn(N, generator=g)
    ours = gae(rewards, values, dones, last, gamma, lam)
    for n in range(N):
        for t in range(T):
            expected, weight = 0.0, 1.0
            for k in range(t, T):  # sum of (gamma lam)^j delta_{t+j} until the episode ends
                nxt = values[k + 1, n] if k + 1 < T else last[n]
                delta = rewards[k, n] + gamma * nxt * (1 - dones[k, n]) - values[k, n]
                expected += weight * delta
                if dones[k, n]:
                    break
                weight *= gamma * lam
            assert ours[t, n].item() == pytest.approx(float(expected), abs=1e-5)


def test_minibatches_hold_whole_worlds_env_major():
    x = torch.arange(4 * 3).reshape(4, 3)  # (T=4, N=3): x[t, n] = 3 t + n
    out = _env_major(x, torch.tensor([2, 0]))
    assert out.tolist() == [2, 5, 8, 11, 0, 3, 6, 9]


def test_episode_stats_average_finished_episodes_and_their_success():
    stats = EpisodeStats(3, torch.device("cpu"))
    steps = [  # reward, done, is_success per world
        ([1.0, 2.0, 3.0], [False, True, False], [0.0, 1.0, 0.0]),
        ([1.0, 2.0, 3.0], [True, False, False], [0.0, 1.0, 1.0]),
        ([1.0, 2.0, 3.0], [False, True, False], [1.0, 0.0, 1.0]),
    ]
    for reward, done, success in steps[:2]:
        info = {"is_success": torch.tensor(success)}
        stats.add(torch.tensor(reward), torch.tensor(done), info)
    # finished: world 1 with 2 (success), world 0 with 2 (no success); world 2 goes on
    assert stats.read() == {"rollout/ep_rew_mean": 2.0, "rollout/success_rate": 0.5}
    assert stats.read() == {}  # nothing finished since
    reward, done, success = steps[2]
    stats.add(torch.tensor(reward), torch.tensor(done), {"is_success": torch.tensor(success)})
    assert stats.read() == {"rollout/ep_rew_mean": 4.0, "rollout/success_rate": 0.0}
    plain = EpisodeStats(1, torch.device("cpu"))
    plain.add(torch.tensor([5.0]), torch.tensor([True]), {})
    assert plain.read() == {"rollout/ep_rew_mean": 5.0}  # no success key without is_success
    staggered = EpisodeStats(2, torch.device("cpu"))
    staggered.skip_current()  # episodes already under way: not counted when they end
    staggered.add(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), {})
    assert staggered.read() == {}
    staggered.add(torch.tensor([2.0, 2.0]), torch.tensor([True, True]), {})
    assert staggered.read() == {"rollout/ep_rew_mean": 2.0}  # world 0's second episode only


def test_running_norm_equals_the_statistics_of_everything_seen():
    g = torch.Generator().manual_seed(0)
    norm = RunningNorm((2,), torch.device("cpu"), epsilon=0.0)
    batches = [torch.randn(n, 2, generator=g) * 3 + 1 for n in (5, 17, 64)]
    for b in batches:
        norm.update(b)
    data = torch.cat(batches).double()
    torch.testing.assert_close(norm.mean, data.mean(0))
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False))


def _trainer(num_envs=16, n_steps=8, seed=0, generator_input="context", **config) -> DevicePPO:
    cfg = DevicePPOConfig(n_steps=n_steps, n_minibatches=4, **config)
    policy_kwargs = {
        "conditioning": "hyper",
        "context_keys": ("context",),
        "generator_input": generator_input,
    }
    return DevicePPO(TorchPendulum(num_envs, seed=seed), policy_kwargs=policy_kwargs, config=cfg)


def test_truncations_bootstrap_from_the_final_observation_and_only_then(monkeypatch):
    import agents.batched.ppo as device_ppo

    cfg = {"normalize_reward": False, "normalize_obs": False, "stagger_episodes": False}
    algo = _trainer(num_envs=4, n_steps=8, **cfg)
    algo.env.max_episode_steps = 12  # every world truncates at step 3 of the second rollout
    value, step, gae = algo.policy.predict_values, algo.env.step, device_ppo.gae
    calls, steps, rewards = [], [], []

    def spy_value(obs):
        calls.append(obs)
        return value(obs)

    def spy_step(actions):
        steps.append(step(actions))
        return steps[-1]

    def spy_gae(reward_buf, *args):
        rewards.append(reward_buf.clone())
        return gae(reward_buf, *args)

    monkeypatch.setattr(algo.policy, "predict_values", spy_value)
    monkeypatch.setattr(algo.env, "step", spy_step)
    monkeypatch.setattr(device_ppo, "gae", spy_gae)
    algo.collect()
    assert len(calls) == 1  # the last observations' values only: no world finished
    calls.clear()
    algo.collect()
    assert len(calls) == 2  # and the bootstrap of the one step where every world truncated
    _, reward, _, truncated, info = steps[8 + 3]
    assert truncated.all()
    final = info["final_observation"]
    expected = reward + algo.config.gamma * value(final).flatten()
    torch.testing.assert_close(rewards[1][3], expected)
    torch.testing.assert_close(rewards[1][2], steps[8 + 2][1])  # no bootstrap before it


def test_rollout_generates_heads_once_while_contexts_stay():
    algo = _trainer(n_steps=8, stagger_episodes=False)
    heads = [m for m in algo.policy.modules() if isinstance(m, HyperHead)]
    assert heads
    calls = []
    for head in heads:
        head.generator.register_forward_hook(lambda *_: calls.append(1))
    batch = algo.collect()  # 8 steps, no episode ends: one generation per head
    assert batch["obs"]["observation"].shape == (8, 16, 3)
    assert batch["actions"].shape == (8, 16, 1)
    assert len(calls) == len(heads)  # without reuse: 25 calls


def test_saved_vecnormalize_normalises_like_the_trainer():
    algo = _trainer(n_steps=8)
    algo.collect()
    cpu = ContextualPendulum()
    vec = algo.vecnormalize(cpu)
    obs = algo.env.reset(seed=9)
    ours = algo._normalize(obs, update=False)
    theirs = vec.normalize_obs({k: v.numpy() for k, v in obs.items()})
    for key in obs:  # the context passes through both untouched
        np.testing.assert_allclose(ours[key].numpy(), theirs[key], atol=1e-5)
    assert not np.allclose(theirs["observation"], obs["observation"].numpy())


def test_trainer_rejects_minibatches_that_split_worlds():
    with pytest.raises(ValueError, match="multiple of n_minibatches"):
        _trainer(num_envs=10)
    with pytest.raises(ValueError, match="unknown device-PPO keys"):
        DevicePPOConfig.from_dict({"n_step": 3})


@pytest.mark.parametrize("asked", [False, True])
def test_distributions_check_their_arguments_only_when_asked(asked):
    from torch.distributions import Distribution

    before = Distribution._validate_args
    algo = _trainer(check_distributions=asked)
    with torch.no_grad():
        algo.policy.log_std.fill_(float("nan"))
    if asked:  # the first NaN is caught where it enters, by the check's host sync
        with pytest.raises(ValueError, match="scale"):
            algo.learn(64)
    else:
        algo.learn(64)
    assert Distribution._validate_args is before


def test_tf32_is_switched_for_cuda_trainers_only():
    matmul, before = torch.backends.cuda.matmul, torch.backends.cuda.matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        use_tf32(torch.device("cpu"), True)
        assert matmul.allow_tf32 is False
        if torch.cuda.is_available():
            for wanted in (True, False):
                env = TorchPendulum(8, device="cuda", seed=0)
                DevicePPO(env, config=DevicePPOConfig(n_minibatches=1, tf32=wanted))
                assert matmul.allow_tf32 is wanted
    finally:
        matmul.allow_tf32 = before


def _mean_return(algo: DevicePPO, split: str, worlds: int = 64) -> float:
    from agents.batched.evaluation import evaluate_batched

    return evaluate_batched(algo, TorchPendulum(worlds, split=split), seed=123)["return"]


def test_device_ppo_learns_contextual_pendulum():
    torch.set_num_threads(1)
    algo = _trainer(num_envs=256, n_steps=32, n_epochs=10, learning_rate=3e-3, gamma=0.95, seed=0)
    before = _mean_return(algo, "train")
    algo.learn(200_000)
    after = _mean_return(algo, "train")
    # a random policy scores about -1200; swinging up and balancing in most contexts, > -600
    assert before < -900
    assert after > -600, (before, after)


def test_run_folder_loads_in_sb3_evaluates_on_the_cpu_twin_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = dict(
        env="hyperrl/TorchPendulum-v0",
        n_envs=8,
        hyperparams=["n_steps:8", "n_minibatches:2", "n_epochs:1"],
        eval_freq=64,
        save_freq=128,
        progress_bar=False,
        device="cpu",
    )
    train(TrainArgs(timesteps=192, run_dir=str(run_dir), **args))
    for name in ("config.yml", "contexts.yml", "model.zip", "best_model.zip", "vecnormalize.pkl"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "checkpoints").iterdir())
    model = PPO.load(run_dir / "model.zip", device="cpu")
    assert model.num_timesteps == 192
    assert type(model.policy).__name__ == "HyperActorCriticPolicy"
    result = evaluate_run(run_dir, episodes=1)
    assert result["env"] == "hyperrl/ContextualPendulum-v0"
    assert set(result["summary"]) == set(envs.SPLITS)
    # resume: the budget in config.yml grows by nothing, so raise it through a new run length
    import yaml

    config = yaml.safe_load((run_dir / "config.yml").read_text())
    config["n_timesteps"] = 320
    (run_dir / "config.yml").write_text(yaml.safe_dump(config))
    train(TrainArgs(resume=str(run_dir), progress_bar=False, device="cpu", eval_freq=0))
    assert PPO.load(run_dir / "model.zip", device="cpu").num_timesteps == 320


def test_batched_env_trains_only_with_the_device_trainers(tmp_path):
    with pytest.raises(ValueError, match="--algo ppo, sac or her"):
        train(TrainArgs(algo="td3", env="hyperrl/TorchPendulum-v0", run_dir=str(tmp_path / "r")))
    with pytest.raises(ValueError, match="unknown config key"):
        train(
            TrainArgs(
                env="hyperrl/TorchPendulum-v0",
                hyperparams=["n_stepz:8"],
                run_dir=str(tmp_path / "r"),
            )
        )


def _data_parallel_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        algo = _trainer(num_envs=16, n_steps=8, seed=0)
        algo.learn(2 * 2 * 8 * 16)  # two updates: each counts both ranks' steps
        params = torch.nn.utils.parameters_to_vector(algo.policy.parameters()).detach()
        probe = torch.nn.Linear(3, 2)
        for p in probe.parameters():
            p.grad = torch.full_like(p, float(rank + 1))
        average_gradients(probe)
        grads = torch.cat([p.grad.flatten() for p in probe.parameters()])
        torch.save(
            {"params": params, "obs_mean": algo.obs_norm["observation"].mean, "grads": grads},
            f"{out}{rank}",
        )
    finally:
        dist.destroy_process_group()


def test_data_parallel_ranks_stay_in_step(tmp_path):
    """Two gloo ranks step different worlds; averaged gradients keep their parameters equal, and
    they differ from a single process's (each rank learned from the other's data too)."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "rank")
    mp.spawn(_data_parallel_worker, args=(str(tmp_path / "store"), out), nprocs=2)
    rank0, rank1 = torch.load(f"{out}0"), torch.load(f"{out}1")
    assert torch.equal(rank0["params"], rank1["params"])
    assert torch.equal(rank0["obs_mean"], rank1["obs_mean"])
    # gradients of 1 and 2 average to 1.5 on both ranks (a sum would give 3)
    assert torch.equal(rank0["grads"], torch.full((8,), 1.5)) and torch.equal(
        rank1["grads"], rank0["grads"]
    )
    alone = _trainer(num_envs=16, n_steps=8, seed=0)
    initial = torch.nn.utils.parameters_to_vector(alone.policy.parameters()).detach().clone()
    alone.learn(2 * 8 * 16)
    single = torch.nn.utils.parameters_to_vector(alone.policy.parameters()).detach()
    assert not torch.equal(rank0["params"], initial)
    assert not torch.allclose(rank0["params"], single)


def test_train_agent_under_torchrun_writes_one_run_counting_every_rank(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--standalone", str(root / "scripts" / "train_agent.py"),
        "--env", "hyperrl/TorchPendulum-v0", "-n", "256", "--n-envs", "8",
        "--hyperparams", "n_steps:8", "n_minibatches:2", "n_epochs:1",
        "--eval-freq", "0", "--save-freq", "0", "--no-progress", "--device", "cpu",
        "-f", str(tmp_path / "run"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # two ranks x 8 worlds x 8 steps = 128 steps per update: two updates reach 256
    assert PPO.load(tmp_path / "run" / "model.zip", device="cpu").num_timesteps == 256
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.yml", "contexts.yml", "manifest.json", "model.zip", "tb", "trainer_state.pt",
        "vecnormalize.pkl",
    ]  # fmt: skip


def test_restore_brings_back_optimizer_and_statistics(tmp_path):
    algo = _trainer(n_steps=8)
    algo.learn(3 * 8 * 16)
    algo.save(tmp_path, ContextualPendulum())
    fresh = _trainer(n_steps=8, seed=1)
    fresh.restore(tmp_path)
    assert fresh.num_timesteps == algo.num_timesteps == 3 * 8 * 16
    torch.testing.assert_close(fresh.policy.state_dict(), algo.policy.state_dict())
    old, new = algo.policy.optimizer.state_dict(), fresh.policy.optimizer.state_dict()
    torch.testing.assert_close(new["state"], old["state"])
    torch.testing.assert_close(fresh.norm_state(), algo.norm_state())
    # a run killed before trainer_state.pt was written: statistics from vecnormalize.pkl
    (tmp_path / "trainer_state.pt").unlink()
    again = _trainer(n_steps=8, seed=2)
    again.restore(tmp_path)
    ours, theirs = again.obs_norm["observation"], algo.obs_norm["observation"]
    torch.testing.assert_close(ours.mean, theirs.mean)
    torch.testing.assert_close(ours.var, theirs.var)


@pytest.mark.parametrize("generator_input", ["context", "both"])
def test_update_groups_samples_by_episode_instead_of_deduplicating(monkeypatch, generator_input):
    """The update knows which samples share a context from where each world's context changed
    in the rollout: the same step as deduplicating every minibatch, without deduplicating. Heads
    generated from the observation too (``both``) are left to deduplicate."""
    import copy

    import hyperrl.conditioning as conditioning
    from hyperrl.functional import unique_rows

    algo = _trainer(num_envs=16, n_steps=8, stagger_episodes=False, generator_input=generator_input)
    algo.env.max_episode_steps = 12  # every world resets, with a new context, mid-rollout 2
    algo.collect()
    batch = algo.collect()
    segments = algo._context_runs(batch["obs"])
    assert segments.counts.tolist() == [2] * 16 and segments.width == 4
    calls = []
    monkeypatch.setattr(conditioning, "unique_rows", lambda c: calls.append(1) or unique_rows(c))
    policy, optimizer = algo.policy, algo.policy.optimizer
    before = copy.deepcopy((policy.state_dict(), optimizer.state_dict()))
    start = [p.detach().clone() for p in policy.parameters()]
    torch.manual_seed(5)
    algo.update(batch)
    assert bool(calls) == (generator_input == "both")
    heads = [m for m in policy.modules() if isinstance(m, HyperHead)]
    assert heads and all(head.given_groups is None for head in heads)  # only within the update
    grouped = [p.detach().clone() for p in policy.parameters()]
    policy.load_state_dict(before[0])
    optimizer.load_state_dict(before[1])
    algo.context_keys = ()  # as for a policy without hyper heads: deduplicate per minibatch
    calls.clear()
    torch.manual_seed(5)
    algo.update(batch)
    assert calls
    for got, want in zip(grouped, policy.parameters(), strict=True):
        torch.testing.assert_close(got, want)
    assert not all(map(torch.equal, grouped, start))  # and they did step


@pytest.mark.parametrize("env_id", ["hyperrl/TorchPendulum-v0", "hyperrl/BatchedHalfCheetah-v0"])
def test_a_restored_trainer_goes_on_exactly_as_the_uninterrupted_one(env_id, tmp_path):
    """Checkpoint, keep training, and compare with a fresh trainer restored from the checkpoint:
    same parameters bit for bit (env state, observation, episode sums and random state saved)."""

    def trainer() -> DevicePPO:
        kwargs = {"nthread": 1, "max_episode_steps": 40} if "Batched" in env_id else {}
        env = envs.make_batched(env_id, 8, "train", "cpu", seed=3, **kwargs)
        cfg = DevicePPOConfig(n_steps=16, n_minibatches=2, n_epochs=2)
        return DevicePPO(env, policy_kwargs={"net_arch": [16], "head_arch": (16,)}, config=cfg)

    def params(algo: DevicePPO) -> list[torch.Tensor]:
        return [p.detach().clone() for p in algo.policy.parameters()]

    straight = trainer()
    straight.learn(16 * 8 * 3)  # a reset or two happen in between (staggered episodes)
    straight.save(tmp_path)
    straight.learn(16 * 8 * 3)
    resumed = trainer()
    resumed.restore(tmp_path)
    assert resumed.num_timesteps == 16 * 8 * 3
    resumed.learn(16 * 8 * 3)
    for a, b in zip(params(straight), params(resumed), strict=True):
        assert torch.equal(a, b)
    # a save made by an interrupt in the middle of a rollout does not claim the env's state
    step, calls = straight.env.step, []

    def interrupted(actions):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return step(actions)

    straight.env.step = interrupted
    with pytest.raises(KeyboardInterrupt):
        straight.learn(16 * 8)
    assert straight.run_state() is None
    # without the run state (an older checkpoint), the run goes on, from fresh episodes
    state = torch.load(tmp_path / "trainer_state.pt", weights_only=True)
    state["run"] = None
    torch.save(state, tmp_path / "trainer_state.pt")
    fresh = trainer()
    fresh.restore(tmp_path)
    fresh.learn(16 * 8 * 3)
    assert not all(torch.equal(a, b) for a, b in zip(params(straight), params(fresh), strict=True))


def test_compiled_update_is_the_eager_update():
    """``compile: true`` compiles the minibatch's forward pass and loss: over rollouts whose
    minibatches hold different numbers of contexts (one, then two per world), the parameters
    step as the eager trainer's do, and the compiled step stays in use (no fallback)."""

    def run(compile: bool) -> tuple[DevicePPO, list[torch.Tensor]]:
        algo = _trainer(num_envs=16, n_steps=8, stagger_episodes=False, compile=compile)
        algo.env.max_episode_steps = 12  # rollout 2 resets every world mid-way: new contexts
        torch.manual_seed(5)
        for _ in range(3):
            algo.update(algo.collect())
        return algo, [p.detach().clone() for p in algo.policy.parameters()]

    eager, want = run(False)
    compiled, got = run(True)
    assert compiled._minibatch_step.compiled and not eager._minibatch_step.compiled
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not all(map(torch.equal, want, _trainer().policy.parameters()))  # they did step


def test_a_step_the_compiler_cannot_compile_runs_eagerly_with_a_warning(monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    import agents.batched.compiled as compiled

    def compiler(error: Exception):
        def compile(fn):
            def fail(*args, **kwargs):
                raise error

            return fail

        return compile

    no_gxx = TorchDynamoException("C++ compile error: g++ not found")
    monkeypatch.setattr(compiled.torch, "compile", compiler(no_gxx))
    step = compiled.CompiledStep(lambda x: x + 1, enabled=True)
    with pytest.warns(RuntimeWarning, match="g\\+\\+ not found.*runs eagerly.*compile: false"):
        assert step(1) == 2
    assert not step.compiled
    assert step(2) == 3  # eagerly from then on, without another warning
    # an error of the step's own is raised as it is, and the compiled step is kept
    monkeypatch.setattr(compiled.torch, "compile", compiler(TypeError("bad input")))
    step = compiled.CompiledStep(lambda x: x + 1, enabled=True)
    with pytest.raises(TypeError, match="bad input"):
        step(1)
    assert step.compiled
