"""The on-device SAC: replay buffer semantics, the update (against SB3's ``SAC.train``), target
networks, learning on the batched pendulum, and its run folder (SB3 loads it)."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import yaml
from stable_baselines3 import SAC
from stable_baselines3.common.logger import configure
from stable_baselines3.common.type_aliases import DictReplayBufferSamples

import envs
from agents.batched.evaluation import evaluate_batched
from agents.batched.replay import RUNNING, DeviceReplay, HerReplay, ReplaySample
from agents.batched.sac import DeviceSAC, DeviceSACConfig
from agents.evaluation import evaluate_run
from agents.train import TrainArgs, train
from envs.classic.batched import TorchPendulum
from hyperrl.conditioning import HyperHead

HYPER = {"conditioning": "hyper", "context_keys": ("context",)}


def _trainer(num_envs=8, seed=0, net_arch=(16, 16), env=None, **config) -> DeviceSAC:
    env = env if env is not None else TorchPendulum(num_envs, seed=seed)
    kwargs = HYPER | {"net_arch": list(net_arch)}
    return DeviceSAC(env, policy_kwargs=kwargs, config=DeviceSACConfig(**config), seed=seed)


def _rows(replay: DeviceReplay, ids: list[int]) -> None:
    """Add one transition per id, every field carrying the id (to check rows stay whole)."""
    ids_t = torch.tensor(ids, dtype=torch.float32)
    obs = {"observation": ids_t[:, None].expand(-1, 3), "context": -ids_t[:, None].expand(-1, 3)}
    next_obs = {k: v + 0.5 for k, v in obs.items()}
    replay.add(obs, next_obs, ids_t[:, None] / 100, ids_t * 10, ids_t.long() % 2 == 1)


def _check_whole(sample: ReplaySample) -> torch.Tensor:
    ids = sample.observations["observation"][:, 0]
    torch.testing.assert_close(sample.observations["context"][:, 0], -ids)
    torch.testing.assert_close(sample.next_observations["observation"][:, 1], ids + 0.5)
    torch.testing.assert_close(sample.actions[:, 0], ids / 100)
    torch.testing.assert_close(sample.rewards, ids[:, None] * 10)
    torch.testing.assert_close(sample.dones, (ids[:, None] % 2 == 1).float())
    return ids


def test_replay_wraps_around_and_samples_only_filled_rows():
    space = TorchPendulum(1).observation_space
    replay = DeviceReplay(5, space, 1, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="empty"):
        replay.sample(4, g)
    _rows(replay, [0, 1, 2])
    assert (replay.pos, replay.size) == (3, 3)
    assert set(_check_whole(replay.sample(300, g)).tolist()) == {0, 1, 2}
    _rows(replay, [3, 4, 5, 6])  # 5 and 6 overwrite the two oldest rows
    assert (replay.pos, replay.size) == (2, 5)
    assert replay.obs["observation"][:, 0].tolist() == [5, 6, 2, 3, 4]
    assert set(_check_whole(replay.sample(300, g)).tolist()) == {2, 3, 4, 5, 6}
    _rows(replay, list(range(10, 22)))  # more than the capacity at once: the newest survive
    assert sorted(replay.obs["observation"][:, 0].tolist()) == [17, 18, 19, 20, 21]
    assert replay.size == 5


class _EndingPendulum(TorchPendulum):
    """Episodes of 3 steps; world 0 terminates on its 2nd step instead (a terminal state)."""

    def __init__(self, num_envs: int, seed: int) -> None:
        super().__init__(num_envs, seed=seed)
        self.max_episode_steps = 3

    def _step_worlds(self, actions):
        reward, terminated = super()._step_worlds(actions)
        terminated[0] = self.episode_steps[0] == 1
        return reward, terminated


def test_collect_stores_final_observations_and_done_only_on_termination():
    N = 4
    env = _EndingPendulum(N, seed=0)
    returned = []
    step = env.step

    def recording(actions):
        out = step(actions)
        returned.append(out)
        return out

    env.step = recording
    algo = _trainer(env=env, learning_starts=10**6)
    algo.collect(6)
    assert algo.num_timesteps == 6 * N and algo.replay.size == 6 * N
    r = algo.replay
    assert r.actions.abs().max() <= 1  # stored squashed, not in the env's [-2, 2]
    saw_truncation = False
    for t, (obs, reward, terminated, truncated, info) in enumerate(returned):
        rows = slice(t * N, (t + 1) * N)
        for k in obs:
            # the next observation is the one before the auto-reset ...
            torch.testing.assert_close(r.next_obs[k][rows], info["final_observation"][k])
            if t + 1 < len(returned):  # ... and the next row starts from the reset one
                torch.testing.assert_close(r.obs[k][(t + 1) * N : (t + 2) * N], obs[k])
        torch.testing.assert_close(r.rewards[rows], reward)
        # truncation bootstraps: done is the termination flag only
        assert r.dones[rows].tolist() == terminated.float().tolist()
        if truncated.any():
            saw_truncation = True
            assert not torch.allclose(r.next_obs["observation"][rows], obs["observation"])
    assert saw_truncation and r.dones.sum() == 3  # world 0 ended at steps 2, 4 and 6


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown device-SAC keys \['batchsize'\].*batch_size"):
        DeviceSACConfig.from_dict({"batchsize": 3})
    with pytest.raises(ValueError, match="ent_coef"):
        DeviceSACConfig(ent_coef="learned")
    with pytest.raises(ValueError, match="policy_delay"):
        DeviceSACConfig(policy_delay=0)
    assert DeviceSACConfig.from_dict({"ent_coef": 0.1}).ent_coef == 0.1


def _fixed_batch(algo: DeviceSAC) -> ReplaySample:
    algo.collect(4)
    batch = algo.replay.sample(32, algo.generator)
    dones = (torch.arange(32) % 4 == 0).float()[:, None]  # some terminal transitions
    return batch._replace(dones=dones)


@pytest.mark.parametrize("ent_coef", ["auto", 0.05])
def test_update_matches_sb3_sac_train_step_for_step(ent_coef):
    """Three updates on one batch, from the same parameters and noise, give what SB3's
    ``SAC.train`` gives: losses, online and target networks, entropy coefficient."""
    algo = _trainer(learning_starts=0, batch_size=32, tau=0.1, ent_coef=ent_coef)
    batch = _fixed_batch(algo)
    ref = copy.deepcopy(algo.model)
    ref.set_logger(configure(None, []))
    samples = DictReplayBufferSamples(
        batch.observations, batch.actions, batch.next_observations, batch.dones, batch.rewards
    )
    ref.replay_buffer.sample = lambda *args, **kwargs: samples
    algo.policy.set_training_mode(True)
    for i in range(3):
        torch.manual_seed(i)
        ref.train(gradient_steps=1, batch_size=32)
        torch.manual_seed(i)
        ours = algo.train_step(batch)
        logged = ref.logger.name_to_value
        for key in ("critic_loss", "actor_loss"):
            assert float(ours[key]) == pytest.approx(logged[f"train/{key}"], rel=1e-5)
    ref_state = ref.policy.state_dict()
    for name, value in algo.policy.state_dict().items():
        torch.testing.assert_close(value, ref_state[name], atol=1e-6, rtol=1e-5, msg=name)
    if ent_coef == "auto":
        assert algo.log_ent_coef.item() != 0.0
        torch.testing.assert_close(algo.log_ent_coef, ref.log_ent_coef)


def test_compiled_update_is_the_eager_update(monkeypatch):
    """``compile: true`` compiles the actor's forward pass and both losses, and the generated
    heads go per sample: three updates give the eager trainer's losses and parameters, with the
    compiled steps in use (no fallback). Inductor draws its own random numbers unless told to
    take eager's, which the comparison needs."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)

    def run(compile: bool) -> tuple[DeviceSAC, list[float]]:
        algo = _trainer(learning_starts=0, batch_size=32, tau=0.1, compile=compile)
        batch = _fixed_batch(algo)
        algo.policy.set_training_mode(True)
        losses = []
        for i in range(3):
            torch.manual_seed(i)
            out = algo.train_step(batch)
            losses += [float(out["critic_loss"]), float(out["actor_loss"])]
        return algo, losses

    eager, want = run(False)
    compiled, got = run(True)
    steps = ("_actor_forward", "_critic_loss", "_actor_loss")
    assert all(getattr(compiled, s).compiled and not getattr(eager, s).compiled for s in steps)
    heads = [m for m in compiled.policy.modules() if isinstance(m, HyperHead)]
    assert heads and not any(h.dedup for h in heads)
    assert got == pytest.approx(want, rel=1e-4)
    fresh = _trainer().policy.state_dict()
    ours, theirs = compiled.policy.state_dict(), eager.policy.state_dict()
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not all(torch.equal(theirs[k], fresh[k]) for k in fresh)  # they did step


def test_target_critics_move_by_exactly_tau():
    algo = _trainer(learning_starts=0, batch_size=32, tau=0.25, target_update_interval=2)
    batch = _fixed_batch(algo)
    algo.policy.set_training_mode(True)
    before = [p.detach().clone() for p in algo.target_params]
    algo.train_step(batch)  # update 0: the targets move
    online = [p.detach().clone() for p in algo.critic_params]
    assert any(not torch.equal(b, p) for b, p in zip(before, online, strict=True))
    for old, new, theta in zip(before, algo.target_params, online, strict=True):
        torch.testing.assert_close(new, old + 0.25 * (theta - old))
    moved = [p.detach().clone() for p in algo.target_params]
    algo.train_step(batch)  # update 1: not on the interval
    for old, new in zip(moved, algo.target_params, strict=True):
        assert torch.equal(old, new)
    # the targets never get gradients and stay out of the critic's optimizer
    optimized = {id(p) for g in algo.critic.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in algo.target_params}


def test_device_sac_with_the_hyper_policy_learns_contextual_pendulum():
    torch.set_num_threads(1)
    algo = _trainer(
        num_envs=64,
        net_arch=(64, 64),
        buffer_size=100_000,
        batch_size=512,
        learning_rate=1e-3,
        gamma=0.99,
        tau=0.02,
        learning_starts=2560,
        gradient_steps=8,
        log_interval=25,
    )
    evaluation = TorchPendulum(256, split="train")
    before = evaluate_batched(algo, evaluation, seed=123)["return"]
    logged = []
    start = time.perf_counter()
    algo.learn(22_528, callback=lambda _, values: logged.append(values))
    seconds = time.perf_counter() - start
    after = evaluate_batched(algo, evaluation, seed=123)["return"]
    print(f"return {before:.0f} -> {after:.0f}, {algo.n_updates} updates, {seconds:.0f} s")
    # 352 vector steps; updates from the 40th on (2560 = learning_starts), 8 per step
    assert algo.num_timesteps == 22_528 and algo.n_updates == 313 * 8
    assert {"rollout/ep_rew_mean", "train/actor_loss", "train/critic_loss", "train/ent_coef"} <= (
        set(logged[-1])
    )
    # random actions score about -1200 (the untrained actor worse); a policy that swings up and
    # balances the easy contexts, and pumps the heavy ones, is above -500 (it reaches ~-400)
    assert before < -1000
    assert after > -500, (before, after)


def test_run_folder_loads_in_sb3_evaluates_on_the_cpu_twin_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = dict(
        algo="sac",
        env="hyperrl/TorchPendulum-v0",
        n_envs=8,
        hyperparams=[
            "learning_starts:32",
            "batch_size:32",
            "gradient_steps:1",
            "log_interval:4",
            "policy_kwargs:{net_arch: [16, 16]}",
            "compile:false",  # the preset compiles: a minute, for 21 updates
        ],
        eval_freq=64,
        save_freq=128,
        progress_bar=False,
        device="cpu",
    )
    train(TrainArgs(timesteps=192, run_dir=str(run_dir), **args))
    for name in ("config.yml", "contexts.yml", "model.zip", "best_model.zip"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "vecnormalize.pkl").exists()
    assert list((run_dir / "checkpoints").iterdir())
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    assert config["algo"] == "sac" and config["trainer"] == "device"
    assert config["hyperparams"]["gradient_steps"] == 1
    assert config["hyperparams"]["buffer_size"] == 200_000  # from the preset
    model = SAC.load(run_dir / "model.zip", device="cpu")
    assert model.num_timesteps == 192
    assert type(model.policy).__name__ == "HyperSACPolicy"
    result = evaluate_run(run_dir, episodes=1)
    assert result["env"] == "hyperrl/ContextualPendulum-v0"
    assert set(result["summary"]) == set(envs.SPLITS)
    config["n_timesteps"] = 256
    (run_dir / "config.yml").write_text(yaml.safe_dump(config))
    train(TrainArgs(resume=str(run_dir), progress_bar=False, device="cpu", eval_freq=0))
    resumed = SAC.load(run_dir / "model.zip", device="cpu")
    assert resumed.num_timesteps == 256
    # 24 vector steps of 8 worlds, updating from the 4th (32 = learning_starts); the resumed run
    # refills its empty buffer for 4 of its 8 vector steps before updating again
    assert (model._n_updates, resumed._n_updates) == (21, 21 + 5)


def test_device_sac_rejects_normalize_and_unknown_keys(tmp_path):
    base = dict(algo="sac", env="hyperrl/TorchPendulum-v0", device="cpu", progress_bar=False)
    with pytest.raises(ValueError, match="does not normalise"):
        train(TrainArgs(**base, hyperparams=["normalize:true"], run_dir=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="unknown config key 'n_steps'"):
        train(TrainArgs(**base, hyperparams=["n_steps:8"], run_dir=str(tmp_path / "b")))


def _data_parallel_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        algo = _trainer(learning_starts=32, batch_size=16, gradient_steps=2, log_interval=2)
        algo.learn(6 * 2 * 8)
        params = torch.nn.utils.parameters_to_vector(algo.policy.parameters()).detach()
        torch.save(
            {
                "params": params,
                "log_ent_coef": algo.log_ent_coef.detach(),
                "steps": algo.num_timesteps,
                "updates": algo.n_updates,
                "first_obs": algo.replay.obs["observation"][0],
            },
            f"{out}{rank}",
        )
    finally:
        dist.destroy_process_group()


def test_data_parallel_ranks_stay_in_step(tmp_path):
    """Two gloo ranks step different worlds into their own buffers; averaged gradients keep their
    parameters (and entropy coefficients) equal, and the step count covers both ranks."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "rank")
    mp.spawn(_data_parallel_worker, args=(str(tmp_path / "store"), out), nprocs=2)
    rank0, rank1 = torch.load(f"{out}0"), torch.load(f"{out}1")
    assert not torch.equal(rank0["first_obs"], rank1["first_obs"])  # different worlds
    assert torch.equal(rank0["params"], rank1["params"])
    assert torch.equal(rank0["log_ent_coef"], rank1["log_ent_coef"])
    # 6 vector steps of 2 x 8 worlds; updates from the 2nd (32 steps) on, 2 per vector step
    assert rank0["steps"] == 96 and rank0["updates"] == 10
    alone = _trainer(learning_starts=32, batch_size=16, gradient_steps=2, log_interval=2)
    initial = torch.nn.utils.parameters_to_vector(alone.policy.parameters()).detach().clone()
    assert not torch.equal(rank0["params"], initial)


# -- hindsight relabelling (HER) ------------------------------------------------------------------


def _goal_space():
    import gymnasium as gym

    box = gym.spaces.Box(-10.0, 10.0, (3,))
    return gym.spaces.Dict({"observation": box, "achieved_goal": box, "desired_goal": box})


def _far(achieved, desired):
    """A sparse reward: 0 within 0.5 of the goal, else -1."""
    return -(torch.linalg.vector_norm(achieved - desired, dim=-1) > 0.5).float()


def _her_steps(replay, steps, ends):
    """Add ``steps`` vector steps of 2 worlds; world ``n`` at step ``t`` achieves ``(t, n, 0)``
    (its next observation), wants ``(-1, -1, -1)``; ``ends[n]`` are the steps its episodes end
    at."""
    for t in steps:
        achieved = torch.tensor([[t, 0.0, 0.0], [t, 1.0, 0.0]])
        obs = {"observation": achieved - 1, "achieved_goal": achieved - 1}
        obs["desired_goal"] = torch.full((2, 3), -1.0)
        next_obs = {**obs, "observation": achieved, "achieved_goal": achieved}
        ended = torch.tensor([t in ends[0], t in ends[1]])
        replay.add(obs, next_obs, torch.zeros(2, 1), torch.full((2,), -1.0), ended & False, ended)


def test_her_relabels_with_goals_achieved_later_in_the_same_episode():
    replay = HerReplay(8, _goal_space(), 1, torch.device("cpu"), 2, _far, n_sampled_goal=4)
    ends = ({2, 5}, {3})  # world 0: episodes 0-2, 3-5, 6-...; world 1: 0-3, 4-...
    _her_steps(replay, range(7), ends)  # 4 steps kept: 3, 4, 5, 6
    assert replay.capacity == 8 and replay.steps == 7
    assert replay.episode_end.view(4, 2).tolist()[1] == [5, RUNNING]  # step 5: world 0 ended
    g = torch.Generator().manual_seed(0)
    batch = replay.sample(4000, g)
    step = batch.next_observations["achieved_goal"][:, 0].long()
    world = batch.next_observations["achieved_goal"][:, 1].long()
    goal = batch.observations["desired_goal"]
    torch.testing.assert_close(batch.next_observations["desired_goal"], goal)
    relabelled = goal[:, 0] >= 0
    assert 0.77 < float(relabelled.float().mean()) < 0.83  # 4 / (4 + 1)
    kept = goal[~relabelled]
    torch.testing.assert_close(kept, torch.full_like(kept, -1.0))
    torch.testing.assert_close(
        batch.rewards[~relabelled], torch.full((int((~relabelled).sum()), 1), -1.0)
    )
    goal_step, goal_world = goal[relabelled, 0].long(), goal[relabelled, 1].long()
    step, world = step[relabelled], world[relabelled]
    assert torch.equal(goal_world, world)  # the same world's episode
    assert (goal_step >= step).all()  # from this step on
    # ... up to the episode's last stored step: 5 for world 0's episode 3-5, 3 for world 1's
    # episode 0-3; the others run on (6 is the newest step)
    last = torch.where((world == 0) & (step <= 5), 5, torch.where((world == 1) & (step <= 3), 3, 6))
    assert (goal_step <= last).all()
    pairs = set(zip(step.tolist(), goal_step.tolist(), world.tolist(), strict=True))
    assert pairs == {
        (t, u, n)
        for n in (0, 1)
        for t in range(3, 7)
        for u in range(t, 7)
        if not (t <= (5, 3)[n] < u)
    }
    own = goal_step == step  # the goal reached by this very transition earns the reward
    assert (batch.rewards[relabelled][own] == 0).all() and (
        batch.rewards[relabelled][~own] == -1
    ).all()


def test_her_needs_a_goal_env_and_one_row_per_world():
    space = TorchPendulum(1).observation_space
    with pytest.raises(ValueError, match="'achieved_goal' and 'desired_goal'"):
        HerReplay(8, space, 1, torch.device("cpu"), 2, _far)
    with pytest.raises(ValueError, match="n_sampled_goal must be >= 0"):
        DeviceSACConfig(n_sampled_goal=-1)
    with pytest.raises(ValueError, match="needs an env with compute_reward"):
        _trainer(n_sampled_goal=4)
    replay = HerReplay(8, _goal_space(), 1, torch.device("cpu"), 2, _far)
    one = {k: torch.zeros(1, 3) for k in ("observation", "achieved_goal", "desired_goal")}
    ended = torch.ones(1, dtype=torch.bool)
    with pytest.raises(ValueError, match="one step of all 2 worlds"):
        replay.add(one, one, torch.zeros(1, 1), torch.zeros(1), ~ended, ended)


@pytest.mark.parametrize(("n_sampled_goal", "learns"), [(4, True), (0, False)])
def test_her_learns_a_sparse_goal_task_that_plain_replay_does_not(n_sampled_goal, learns):
    """Reaching 2-D goals with a sparse reward, 4,000 steps: with relabelling the SAC reaches
    every goal (it did: 1.0), without it almost none (0.04): random moves rarely end within
    0.1 of a goal, so plain replay holds no reward to learn from."""
    from stable_baselines3.sac.policies import MultiInputPolicy
    from toy_envs import BatchedGoalPoint

    torch.set_num_threads(1)
    config = DeviceSACConfig(
        n_sampled_goal=n_sampled_goal,
        buffer_size=100_000,
        batch_size=256,
        learning_rate=1e-3,
        gamma=0.95,
        tau=0.05,
        learning_starts=640,
        gradient_steps=8,
    )
    env = BatchedGoalPoint(16, seed=0)
    algo = DeviceSAC(env, MultiInputPolicy, {"net_arch": [64, 64]}, config, seed=0)
    algo.learn(4000)
    success = evaluate_batched(algo, BatchedGoalPoint(256, seed=5), seed=7)["success_rate"]
    assert success > 0.8 if learns else success < 0.3, success
