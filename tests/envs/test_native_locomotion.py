"""The batched CPU backend (envs.batched.native, envs.locomotion.native) against the gymnasium envs
it mirrors.

Parity is checked step by step: before every step the CPU env's state is written into both
simulators, then both take the same action. It is the same engine in float64, so what is left
is the constraint solver's tolerance (the worlds' warm start is estimated, the CPU env's is
exact): over these rollouts observations differed by float32 rounding (HalfCheetah, Hopper,
Walker2d), by up to 1e-3 in Ant's clipped contact forces (pyramidal friction cones) and by up to
1e-3 relative in Humanoid's contact forces (its PGS solver stops after 50 iterations); rewards by
at most 1e-4. Leaving out a context feature or ``mj_setConst``, or reading contact forces one
Runge-Kutta stage off, moves them by 1e-2 or more.
"""

import numpy as np
import pytest
import torch

import envs
from envs.locomotion import PHYSICS_FEATURES, ContextualLocomotion
from envs.locomotion.native import NativeLocomotion

FEATURES = tuple(PHYSICS_FEATURES)  # gravity, mass, friction, damping, actuator
#: nominal, two train contexts with every feature off nominal, one held out beyond the train range
CONTEXTS = np.array(
    [
        [9.81, 1.0, 1.0, 1.0, 1.0],
        [6.5, 1.375, 0.625, 1.25, 0.75],
        [13.0, 0.75, 1.5, 0.625, 1.25],
        [16.0, 1.9, 0.3, 1.8, 0.45],
    ]
)
#: (rtol, atol) of observations and the reward tolerance per env: the solver's, see the module
#: docstring (float32 observations alone need rtol 1e-7)
TOLERANCE = {"Ant-v5": (1e-6, 3e-3, 1e-5), "Humanoid-v5": (2e-3, 1e-3, 1e-3)}
DEFAULT_TOLERANCE = (1e-6, 1e-6, 1e-5)


def named(context, features):
    return {name: float(v) for name, v in zip(features, context, strict=True)}


def cpu_envs(env_id, contexts, features):
    out = []
    for i, context in enumerate(contexts):
        env = ContextualLocomotion(env_id, features)
        env.reset(seed=i, options={"context": named(context, features)})
        out.append(env)
    return out


def check_parity(env_id, contexts, features=FEATURES, steps=25, seed=0):
    """Step every CPU env and its batched world from the same state with the same in-bounds
    action; returns the largest observation gap."""
    native = NativeLocomotion(env_id, len(contexts), features, seed=0, nthread=2)
    cpus = cpu_envs(env_id, contexts, features)
    native.reset(contexts=torch.as_tensor(contexts))
    rtol, atol, reward_atol = TOLERANCE.get(env_id, DEFAULT_TOLERANCE)
    rng = np.random.default_rng(seed)
    low, high = native.action_space.low, native.action_space.high
    worst = 0.0
    for t in range(steps):
        qpos = np.stack([env.unwrapped.data.qpos for env in cpus])
        qvel = np.stack([env.unwrapped.data.qvel for env in cpus])
        for env, q, v in zip(cpus, qpos, qvel, strict=True):
            env.unwrapped.set_state(q, v)
        native.set_state(torch.from_numpy(qpos), torch.from_numpy(qvel))
        actions = rng.uniform(low, high, (len(cpus), len(low))).astype(np.float32)
        _, reward, terminated, _, info = native.step(torch.from_numpy(actions))
        final = info["final_observation"]
        for i, env in enumerate(cpus):
            obs, cpu_reward, cpu_terminated, _, _ = env.step(actions[i])
            where = f"{env_id} step {t}, world {i}"
            ours = final["observation"][i].numpy()
            gap = np.abs(ours - obs["observation"])
            worst = max(worst, gap.max())
            assert np.allclose(ours, obs["observation"], rtol, atol), f"{where}: gaps {gap}"
            assert np.allclose(final["context"][i].numpy(), obs["context"], atol=1e-6), where
            assert abs(float(reward[i]) - cpu_reward) <= reward_atol, where
            assert bool(terminated[i]) == cpu_terminated, where
        if terminated.any():  # a terminated CPU env would need a reset: stop here
            break
    native.close()
    return worst


@pytest.mark.parametrize(
    "env_id", ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5"]
)
def test_every_locomotion_env_matches_gymnasium_step_by_step(env_id):
    check_parity(env_id, CONTEXTS)


@pytest.mark.parametrize(
    ("env_id", "feature", "values"),
    [
        ("HalfCheetah-v5", "target_velocity", [[0.5], [1.5], [3.5]]),  # 3.5: extrapolation
        ("Ant-v5", "direction", [[0.0], [1.2], [-2.5]]),
    ],
)
def test_task_contexts_match_gymnasium(env_id, feature, values):
    check_parity(env_id, np.array(values), features=(feature,), steps=15)


def test_contexts_change_each_worlds_dynamics():
    """The same state and action in worlds of different contexts give different next states; the
    same context gives the same."""
    contexts = torch.tensor(np.vstack([CONTEXTS[:2], CONTEXTS[:1]]))
    native = NativeLocomotion("HalfCheetah-v5", 3, seed=0)
    native.reset(contexts=contexts)
    qpos = native.worlds.qpos[:1].repeat(3, 1)
    native.set_state(qpos, torch.zeros(3, native.mj_model.nv))
    for _ in range(5):
        obs, *_ = native.step(torch.full((3, 6), 0.5))
    x = obs["observation"]
    assert torch.equal(x[0], x[2])
    assert (x[0] - x[1]).abs().max() > 1e-2
    model = native.worlds.models[1]  # the derived masses follow the world's mass
    nominal = native.mj_model
    assert np.allclose(model.body_subtreemass, 1.375 * nominal.body_subtreemass)
    assert np.allclose(model.opt.gravity, nominal.opt.gravity * 6.5 / 9.81)


@pytest.mark.parametrize("split", ["train", "interpolation", "extrapolation"])
def test_auto_resets_draw_contexts_from_their_split_only(split):
    native = envs.make_batched("hyperrl/BatchedHopper-v0", 16, split, seed=3)
    space = native.context_space
    native.reset()
    seen, finished = [], 0
    for _ in range(200):
        _, _, terminated, truncated, info = native.step(torch.rand(16, 3) * 2 - 1)
        done = terminated | truncated
        finished += int(done.sum())
        seen.append(info["context"][done])
    contexts = torch.cat([native.contexts, *seen]).numpy()
    assert finished > 16  # random Hoppers fall within a few dozen steps
    for row in contexts:
        context = named(row, space.names)
        assert space.split_of(context) == split, context


def test_auto_reset_hands_back_the_last_observation_and_a_fresh_episode():
    native = envs.make_batched("hyperrl/BatchedHopper-v0", 8, seed=0)
    obs = native.reset()
    for _ in range(300):
        before = native.contexts.clone()
        obs, _, terminated, truncated, info = native.step(torch.ones(8, 3))
        if terminated.any():
            break
    done = terminated.nonzero().flatten()
    assert len(done) > 0
    final = info["final_observation"]["observation"]
    assert not torch.equal(final[done], obs["observation"][done])
    assert (native.episode_steps[done] == 0).all()
    assert not torch.equal(native.contexts[done], before[done])  # fresh contexts
    # the new episode starts near the initial pose: height ~1.25 (qpos[1] is observation 0)
    assert ((obs["observation"][done, 0] - 1.25).abs() < 0.01).all()


@pytest.mark.parametrize("env_id", ["hyperrl/BatchedAnt-v0", "hyperrl/BatchedHalfCheetah-v0"])
def test_results_do_not_depend_on_the_thread_count(env_id):
    runs = []
    for nthread in (1, 2):
        native = envs.make_batched(env_id, 6, seed=5, nthread=nthread, max_episode_steps=20)
        generator = torch.Generator().manual_seed(0)
        out = [native.reset()["observation"]]
        for _ in range(45):  # two auto-resets on the way
            actions = torch.rand(6, native.action_space.shape[0], generator=generator) * 2 - 1
            obs, reward, *_ = native.step(actions)
            out += [obs["observation"], reward[:, None]]
        native.close()
        runs.append(torch.cat(out, -1))
    assert torch.equal(runs[0], runs[1])


def test_threads_default_to_the_cores_shared_among_the_local_ranks(monkeypatch):
    import os

    from envs.batched.native import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun --nproc-per-node 2
    assert default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_threads() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # a worker held to one thread
    assert default_threads() == 1


def test_humanoid_observes_its_com_quantities_and_contact_forces():
    native = envs.make_batched("hyperrl/BatchedHumanoid-v0", 2, seed=0)
    obs = native.reset()["observation"]
    assert obs.shape == (2, 348) and obs.dtype == torch.float32
    assert native.observation_space["observation"].shape == (348,)
    assert not obs[:, -78:].any()  # no contact forces right after a reset, as in gymnasium
    for _ in range(30):
        step, reward, *_ = native.step(torch.zeros(2, 17))
        obs = step["observation"]
    assert obs[:, -78:].abs().max() > 1.0  # the feet stand on the floor
    assert torch.isfinite(obs).all() and torch.isfinite(reward).all()


def test_batched_twins_and_their_errors():
    assert envs.batched_twin("hyperrl/ContextualHumanoid-v0") == "hyperrl/BatchedHumanoid-v0"
    assert envs.batched_twin("hyperrl/AntDir-v0") == "hyperrl/BatchedAntDir-v0"
    assert envs.cpu_twin("hyperrl/BatchedHalfCheetahVel-v0") == "hyperrl/HalfCheetahVel-v0"
    kwargs = {"nthread": 1, "ctrl_cost_weight": 0.01}  # evaluation's CPU twin takes no threads
    assert envs.twin_kwargs("hyperrl/BatchedHopper-v0", kwargs) == {"ctrl_cost_weight": 0.01}
    with pytest.raises(ValueError, match="no batched CPU backend.*ContextualHalfCheetah"):
        envs.batched_twin("hyperrl/ContextualCartPole-v0")
    with pytest.raises(ValueError, match="nthread must be >= 1"):
        envs.make_batched("hyperrl/BatchedHopper-v0", 2, nthread=0)
    native = envs.make_batched("hyperrl/BatchedHopper-v0", 2)
    with pytest.raises(ValueError, match="'gravity'=40.0 is outside its allowed range"):
        native.reset(contexts=torch.tensor([[40.0, 1, 1, 1, 1]] * 2))
    # every batched env checks pinned contexts in the base class; a value at a bound passes
    pendulum = envs.make_batched("hyperrl/TorchPendulum-v0", 2)
    space = envs.context_space("hyperrl/TorchPendulum-v0")
    edge = torch.tensor([[f.bounds[1] for f in space.features]] * 2, dtype=torch.float64)
    pendulum.reset(contexts=edge)
    with pytest.raises(ValueError, match="'mass'=nan is outside its allowed range"):
        pendulum.reset(contexts=edge.index_fill(1, torch.tensor([1]), float("nan")))


def test_train_agent_batched_trains_the_gymnasium_id_and_evaluates_on_it(tmp_path):
    from stable_baselines3 import PPO

    from agents.evaluation import evaluate_run
    from agents.run_config import read_run_config
    from agents.train import TrainArgs, train

    run_dir = tmp_path / "run"
    args = dict(
        env="hyperrl/ContextualHopper-v0",
        batched=True,
        n_envs=4,
        hyperparams=["n_steps:8", "n_minibatches:2", "n_epochs:1"],
        eval_freq=32,
        save_freq=0,
        progress_bar=False,
        device="cpu",
    )
    train(TrainArgs(timesteps=64, run_dir=str(run_dir), **args))
    assert read_run_config(run_dir).env == "hyperrl/BatchedHopper-v0"
    assert PPO.load(run_dir / "model.zip", device="cpu").num_timesteps == 64
    assert (run_dir / "best_model.zip").is_file() and (run_dir / "vecnormalize.pkl").is_file()
    result = evaluate_run(run_dir, splits=["extrapolation"], episodes=1)
    assert result["env"] == "hyperrl/ContextualHopper-v0"
    import yaml

    config = yaml.safe_load((run_dir / "config.yml").read_text())
    config["n_timesteps"] = 96
    (run_dir / "config.yml").write_text(yaml.safe_dump(config))
    train(TrainArgs(resume=str(run_dir), progress_bar=False, device="cpu", eval_freq=0))
    assert PPO.load(run_dir / "model.zip", device="cpu").num_timesteps == 96


def test_device_ppo_learns_to_hop_on_the_batched_backend():
    """The batched preset's PPO settings on contextual Hopper, 64 worlds, 120k steps (~30 s on
    two cores). An untrained policy's mean action falls within a few hundred steps (a return of
    85 and 222 for seeds 1 and 0 here); trained, it hops on (444 and 502)."""
    from agents.batched.evaluation import evaluate_batched
    from agents.batched.ppo import DevicePPO, DevicePPOConfig
    from hyperrl import HyperActorCriticPolicy

    torch.manual_seed(0)
    env = envs.make_batched("hyperrl/BatchedHopper-v0", 64, seed=0)
    config = DevicePPOConfig(n_steps=32, n_minibatches=4, n_epochs=5, gamma=0.99)
    policy_kwargs = {"log_std_init": -1.0}
    algo = DevicePPO(env, HyperActorCriticPolicy, policy_kwargs, config, seed=0)
    evaluation = envs.make_batched("hyperrl/BatchedHopper-v0", 32, seed=1)
    before = evaluate_batched(algo, evaluation, seed=7)["return"]
    algo.learn(120_000)
    after = evaluate_batched(algo, evaluation, seed=7)["return"]
    assert after > 350 and after > 1.5 * before, (before, after)
