"""The batched CPU Fetch tasks (envs.manipulation.native) against the gymnasium-robotics envs they
mirror.

Parity is checked step by step: before every step the CPU env's state is written into both
simulators, then both take the same action. Same engine in float64, so what is left is the
constraint solver's warm start (estimated in the worlds, exact in the CPU env) and float32
observations: over these rollouts Reach, Push and PickAndPlace differed by at most 1.2e-7.
Slide's puck is the exception: struck by the gripper it depends on the warm start itself (the
CPU env with its own warm start zeroed moves by up to 6e-3 on the same rollout; given the CPU
env's warm start the worlds match it to 1.1e-7); its position differed by up to 1.2e-4 m, its
Euler angles by 3e-3 rad and its dt-scaled angular velocity by 0.045 (Warp's Push tests allow
0.05 there). Leaving out the context, the finger controls or PickAndPlace's lagging Jacobians
moves observations by 1e-3 or more.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium_robotics")

from envs.manipulation import FETCH_FEATURES, REACH_FEATURES, ContextualFetch, ContextualFetchReach
from envs.manipulation.native import NativeFetch

OBJECT_TASKS = ("FetchPush-v4", "FetchSlide-v4", "FetchPickAndPlace-v4")
#: nominal, two train contexts, one beyond the train range (extrapolation); float32-exact, as
#: the batched env keeps contexts in float32 (a sliding puck turns a 1e-7 relative change of
#: its mass into millimetres within a step)
PHYSICS = np.array(
    [[1.0, 1.0, 1.0], [1.375, 0.625, 1.25], [0.625, 1.5, 0.75], [2.25, 0.3125, 1.75]]
)
GOALS = np.array([[0.0, 0.0, 0.0], [0.125, -0.125, 0.0625], [-0.14, 0.0625, 0.2], [0.22, 0, 0]])
ATOL = np.full(25, 1e-6)
#: Slide: the puck's position, relative position, Euler angles, velocity, angular velocity
SLIDE_ATOL = ATOL.copy()
SLIDE_ATOL[3:9], SLIDE_ATOL[11:17], SLIDE_ATOL[17:20] = 1e-3, 1e-2, 0.05


def named(context, features):
    return {name: float(v) for name, v in zip(features, context, strict=True)}


def cpu_envs(env_id, contexts):
    out = []
    for i, context in enumerate(contexts):
        if env_id == "FetchReach-v4":
            env = ContextualFetchReach()
            env.reset(seed=i, options={"context": named(context, tuple(REACH_FEATURES))})
        else:
            env = ContextualFetch(env_id)
            env.reset(seed=i, options={"context": named(context, tuple(FETCH_FEATURES))})
        out.append(env)
    return out


def set_cpu_state(env, qpos, qvel):
    import mujoco

    env = env.unwrapped
    env.data.qpos[:], env.data.qvel[:] = qpos, qvel
    mujoco.mj_forward(env.model, env.data)


def towards_the_object(obs, t, rng):
    """Random moves around the object, closing and opening the fingers: contacts with the object
    on most steps (uniform actions alone rarely touch it)."""
    grip, obj = obs[:, :3], obs[:, 3:6]
    move = np.clip((obj - grip) * 8 + rng.normal(scale=0.5, size=grip.shape), -1, 1)
    fingers = np.full((len(obs), 1), 1.0 if t % 8 < 4 else -1.0)
    return np.concatenate([move, fingers], -1).astype(np.float32)


def check_parity(env_id, contexts, steps=20, seed=0, nthread=2):
    """Step every CPU env and its batched world from the same state with the same action;
    returns the batched observations ``(steps, N, obs_dim)``."""
    native = NativeFetch(env_id, len(contexts), seed=0, nthread=nthread)
    cpus = cpu_envs(env_id, contexts)
    native.reset(contexts=torch.as_tensor(contexts))
    if native.has_object:  # goals are drawn per episode: the CPU envs'
        native.goals.copy_(torch.from_numpy(np.stack([env.unwrapped.goal for env in cpus])))
    rng = np.random.default_rng(seed)
    atol = SLIDE_ATOL if env_id == "FetchSlide-v4" else ATOL
    seen = []
    for t in range(steps):
        qpos = np.stack([env.unwrapped.data.qpos for env in cpus])
        qvel = np.stack([env.unwrapped.data.qvel for env in cpus])
        for env, q, v in zip(cpus, qpos, qvel, strict=True):
            set_cpu_state(env, q, v)
        native.set_state(torch.from_numpy(qpos), torch.from_numpy(qvel))
        if native.has_object:
            actions = towards_the_object(native._observe().numpy(), t, rng)
        else:
            actions = rng.uniform(-1, 1, (len(cpus), 4)).astype(np.float32)
        _, reward, terminated, _, info = native.step(torch.from_numpy(actions))
        final = {k: v.numpy() for k, v in info["final_observation"].items()}
        assert set(final) == set(native.observation_space.spaces)
        for i, env in enumerate(cpus):
            obs, cpu_reward, cpu_terminated, _, cpu_info = env.step(actions[i])
            where = f"{env_id} step {t}, world {i}"
            for key, value in obs.items():
                tolerance = atol[: len(value)] if key == "observation" else atol[3:6]
                gap = np.abs(final[key][i] - value)
                assert (gap <= tolerance).all(), f"{where}, {key}: gaps {gap}"
            assert float(reward[i]) == pytest.approx(cpu_reward, abs=1e-6), where
            assert float(info["is_success"][i]) == float(cpu_info["is_success"]), where
            assert not terminated[i] and not cpu_terminated
        seen.append(final["observation"])
    native.close()
    return np.stack(seen)


def test_reach_matches_gymnasium_robotics_step_by_step():
    obs = check_parity("FetchReach-v4", GOALS)
    assert np.abs(obs[..., 5:8]).max() > 1e-3  # the grip moved: velocities were compared


@pytest.mark.parametrize("env_id", OBJECT_TASKS)
def test_object_tasks_match_gymnasium_robotics_step_by_step(env_id):
    obs = check_parity(env_id, PHYSICS)
    moved = np.abs(obs[-1, :, 3:6] - obs[0, :, 3:6]).max()
    assert moved > 1e-3, f"the object never moved ({moved}): contacts were not compared"
    if env_id == "FetchPickAndPlace-v4":  # the fingers follow their controls
        assert np.ptp(obs[:, :, 9:11]) > 1e-2


def test_the_object_context_changes_each_worlds_dynamics():
    """The same push on a light and a heavy, slippery and grippy object: the worlds part."""
    native = NativeFetch("FetchPush-v4", 2, seed=0, nthread=1)
    contexts = torch.tensor([[0.5, 1.5, 1.5], [2.0, 0.5, 0.5]])
    obs = native.reset(contexts=contexts)
    native.goals[:] = native.goals[:1]
    start = native.worlds.state[:1].copy()
    native.worlds.state[:] = start  # the same object start in both worlds
    native.set_state(native.worlds.qpos.clone(), native.worlds.qvel.clone())
    rng = np.random.default_rng(0)
    for t in range(15):
        obs, *_ = native.step(
            torch.from_numpy(towards_the_object(native._observe().numpy(), t, rng)[:1].repeat(2, 0))
        )
    gap = (obs["observation"][0, 3:6] - obs["observation"][1, 3:6]).abs().max()
    assert gap > 1e-3
    mass = [
        native.worlds.models[i].body_mass[native.physics_table.rows["object"][0]] for i in range(2)
    ]
    assert mass[1] == pytest.approx(4 * mass[0])


@pytest.mark.parametrize("split", ["train", "interpolation", "extrapolation"])
def test_auto_resets_draw_contexts_from_their_split(split):
    native = NativeFetch("FetchPush-v4", 16, split=split, seed=1, max_episode_steps=3)
    native.reset()
    space = native.context_space
    for _ in range(7):
        *_, info = native.step(torch.rand(16, 4) * 2 - 1)
        for context in native.contexts.tolist():
            assert space.split_of(named(context, native.context_names)) == split


@pytest.mark.parametrize(
    ("env_id", "offset", "lifted"),
    [
        ("FetchPush-v4", 0.0, False),
        ("FetchSlide-v4", 0.4, False),
        ("FetchPickAndPlace-v4", 0.0, True),
    ],
)
def test_objects_and_goals_are_drawn_as_gymnasium_robotics_draws_them(env_id, offset, lifted):
    native = NativeFetch(env_id, 512, seed=3)
    obs = native.reset()
    twin = ContextualFetch(env_id).unwrapped
    start = torch.from_numpy(twin.initial_gripper_xpos[:3]).float()
    object_offset = obs["achieved_goal"][:, :2] - start[:2]
    distance = torch.linalg.vector_norm(object_offset, dim=-1)
    assert (distance >= 0.1 - 1e-6).all() and (object_offset.abs() <= twin.obj_range + 1e-6).all()
    goals = obs["desired_goal"]
    x = goals[:, 0] - start[0] - offset
    assert (x.abs() <= twin.target_range + 1e-6).all() and x.std() > twin.target_range / 3
    above = goals[:, 2] - twin.height_offset
    assert (above >= -1e-6).all() and (above <= 0.45 + 1e-6).all()
    share = float((above > 1e-6).float().mean())
    assert (0.4 < share < 0.6) if lifted else share == 0.0
    again = native.reset(seed=3)
    assert torch.equal(again["desired_goal"], goals)


def test_auto_reset_hands_back_the_last_observation_and_a_fresh_episode():
    native = NativeFetch("FetchReach-v4", 4, seed=0)
    first = native.reset()
    for t in range(50):
        obs, reward, terminated, truncated, info = native.step(torch.ones(4, 4))
        assert bool(truncated.all()) == (t == 49) and not terminated.any()
    final = info["final_observation"]["observation"]
    assert (final[:, :3] - first["observation"][:, :3]).abs().max() > 0.05  # moved away
    torch.testing.assert_close(obs["observation"], first["observation"])  # back at the start
    assert (native.episode_steps == 0).all()


def test_results_do_not_depend_on_the_thread_count():
    runs = []
    for nthread in (1, 2):
        native = NativeFetch("FetchPickAndPlace-v4", 6, seed=0, nthread=nthread)
        obs = native.reset()
        generator = torch.Generator().manual_seed(0)
        for _ in range(12):
            obs, *_ = native.step(torch.rand(6, 4, generator=generator) * 2 - 1)
        runs.append(obs["observation"])
        native.close()
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_batched_reward_relabels_like_the_twin():
    """``compute_reward`` (what HER relabels with) equals gymnasium-robotics' on any goals."""
    rng = np.random.default_rng(0)
    achieved, desired = rng.normal(scale=0.05, size=(2, 64, 3))
    for reward_type in ("sparse", "dense"):
        native = NativeFetch("FetchPush-v4", 1, reward_type=reward_type)
        twin = ContextualFetch("FetchPush-v4", reward_type=reward_type)
        got = native.compute_reward(torch.from_numpy(achieved), torch.from_numpy(desired))
        want = twin.compute_reward(achieved, desired, {})
        np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
        assert reward_type == "dense" or 0 < (want == 0).sum() < 64


def test_unknown_env_ids_and_features_are_named():
    with pytest.raises(ValueError, match="unknown Fetch env 'FetchPull-v4'"):
        NativeFetch("FetchPull-v4", 2)
    with pytest.raises(ValueError, match="unknown Fetch features \\['gravity'\\]"):
        NativeFetch("FetchPush-v4", 2, features=("gravity",))


def test_train_agent_batched_her_on_fetch_push_evaluates_and_films_on_the_twin(tmp_path):
    """``--batched --algo her`` trains the device SAC with hindsight relabelling on the batched
    twin; the run evaluates (with its success rate) and films on the gymnasium id."""
    from stable_baselines3 import SAC

    from agents.batched.replay import HerReplay
    from agents.evaluation import evaluate_run
    from agents.run_config import read_run_config
    from agents.train import TrainArgs, train

    run_dir = tmp_path / "run"
    hyperparams = ["learning_starts:64", "batch_size:32", "gradient_steps:1", "buffer_size:1000"]
    hyperparams.append("policy_kwargs:{net_arch:[16,16]}")
    args = TrainArgs(
        algo="her",
        env="hyperrl/ContextualFetchPush-v0",
        batched=True,
        n_envs=4,
        timesteps=200,
        hyperparams=hyperparams,
        eval_freq=100,
        eval_episodes=2,
        save_freq=0,
        progress_bar=False,
        device="cpu",
        run_dir=str(run_dir),
    )
    train(args)
    saved = read_run_config(run_dir)
    assert saved.env == "hyperrl/BatchedFetchPush-v0" and saved.algo == "her"
    assert SAC.load(run_dir / "model.zip", device="cpu").num_timesteps == 200
    result = evaluate_run(run_dir, splits=["train"], episodes=1, video=True)
    assert result["env"] == "hyperrl/ContextualFetchPush-v0"
    assert result["summary"]["train"]["success_rate"] in (0.0, 1.0)
    assert list(run_dir.glob("**/*.mp4"))
    from agents.batched.train import build

    algo = build(saved.env, saved.hyperparams, 4, "hyper", "cpu", 0, "her")
    assert isinstance(algo.replay, HerReplay) and algo.replay.her_ratio == 0.8


def test_multi_task_worlds_each_run_their_task_with_its_descriptor():
    import envs
    from envs.manipulation.native import NativeFetchMultiTask

    suite = NativeFetchMultiTask(5, seed=0, nthread=1)  # train tasks Push, PickAndPlace
    obs = suite.reset()
    assert suite.task.tolist() == [0, 1, 0, 1, 0] and suite.all_tasks[:2] == (
        "Push",
        "PickAndPlace",
    )
    torch.testing.assert_close(obs["context"], torch.eye(3)[[0, 1, 0, 1, 0]])
    actions = torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    obs, reward, terminated, truncated, info = suite.step(actions)
    push, pick = suite.parts
    # world i is world i // 2 of its task's envs, which took world i's action
    torch.testing.assert_close(obs["observation"][[0, 2, 4]], push._observe())
    torch.testing.assert_close(obs["observation"][[1, 3]], pick._observe())
    torch.testing.assert_close(obs["desired_goal"][[1, 3]], pick.goals.float())
    assert torch.equal(info["task"], suite.task) and info["is_success"].shape == (5,)
    twin = envs.make_batched("hyperrl/BatchedFetchMultiTask-v0", 2, split="held_out", seed=0)
    assert twin.observation_space == suite.observation_space
    assert twin.split == "held_out" and [twin.all_tasks[t] for t in twin.task] == ["Slide"] * 2
    assert envs.batched_twin("hyperrl/FetchMultiTask-v0") == "hyperrl/BatchedFetchMultiTask-v0"
    with pytest.raises(ValueError, match="has no context space"):
        suite.reset(contexts=torch.zeros(5, 1))


def test_train_agent_batched_her_on_the_multi_task_suite_evaluates_per_task_split(tmp_path):
    from agents.evaluation import evaluate_run
    from agents.run_config import read_run_config
    from agents.train import TrainArgs, train

    run_dir = tmp_path / "run"
    hyperparams = ["learning_starts:32", "batch_size:16", "buffer_size:500"]
    hyperparams.append("policy_kwargs:{net_arch:[16]}")
    train(
        TrainArgs(
            algo="her",
            env="hyperrl/FetchMultiTask-v0",
            batched=True,
            n_envs=2,
            timesteps=100,
            hyperparams=hyperparams,
            eval_freq=50,
            eval_episodes=2,
            save_freq=0,
            progress_bar=False,
            device="cpu",
            run_dir=str(run_dir),
        )
    )
    assert read_run_config(run_dir).env == "hyperrl/BatchedFetchMultiTask-v0"
    result = evaluate_run(run_dir, episodes=1)
    assert result["env"] == "hyperrl/FetchMultiTask-v0"
    assert set(result["summary"]) == {"train", "held_out"}
