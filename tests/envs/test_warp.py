"""MuJoCo Warp locomotion and Fetch (envs.locomotion.warp, envs.manipulation.warp) against the CPU
envs they mirror, on Warp's CPU.

Parity is checked step by step: before every step the CPU env's state is rounded to float32 and
written into both simulators, then both take the same action. Free-running rollouts are not
compared: contacts are chaotic, and the float32 / float64 gap grows past any useful tolerance
within a few steps (from 1e-6 to 1e-2 within six steps in one HalfCheetah run). From a shared
state the largest differences seen over these rollouts were 5e-4 in observations (joint
velocities on contact steps: MuJoCo Warp's solver stops at a tolerance of 1e-6, MuJoCo's at
1e-8) and 4e-6 in rewards; leaving out one context feature, or the derived masses
(``set_const``), moves them by 0.7 or more. FetchReach agrees within 4e-5; FetchPush's object
under the pusher needs a looser bound on its angles and spin (see ``SPIN_ATOL``).
"""

import os
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch

pytest.importorskip("mujoco_warp")

from envs.batched import scale_contexts  # noqa: E402
from envs.batched.warp import DERIVED_FIELDS  # noqa: E402
from envs.locomotion import PHYSICS_FEATURES, ContextualLocomotion  # noqa: E402
from envs.locomotion.warp import WarpLocomotion  # noqa: E402

#: where the worlds run: Warp's CPU here and in CI; HYPERRL_WARP_DEVICE=cuda on a GPU machine
DEVICE = os.environ.get("HYPERRL_WARP_DEVICE", "cpu")

OBS_ATOL = 1e-3
# float32 x positions (~5e-7 m resolution at a few metres) over dt = 0.05 give ~1e-5 alone
REWARD_ATOL = 1e-4

FEATURES = tuple(PHYSICS_FEATURES)  # gravity, mass, friction, damping, actuator
# nominal, then two worlds with every feature off nominal (float32-exact where possible)
CONTEXTS = np.array(
    [
        [9.81, 1.0, 1.0, 1.0, 1.0],
        [6.5, 1.375, 0.625, 1.25, 0.75],
        [13.0, 0.75, 1.5, 0.625, 1.25],
    ],
    dtype=np.float32,
)


@pytest.fixture(scope="module")
def cheetah():
    """One HalfCheetah Warp env for the module (the first one compiles MuJoCo Warp's kernels)."""
    return WarpLocomotion("HalfCheetah-v5", len(CONTEXTS), device=DEVICE, seed=0)


def named(context, features=FEATURES):
    return {name: float(v) for name, v in zip(features, context, strict=True)}


def cpu_envs(env_id, contexts, features=FEATURES, **kwargs):
    """One CPU env per world, reset to that world's context."""
    out = []
    for i, context in enumerate(contexts):
        env = ContextualLocomotion(env_id, features, **kwargs)
        env.reset(seed=i, options={"context": named(context, features)})
        out.append(env)
    return out


def set_cpu_state(env, qpos, qvel):
    """``MujocoEnv.set_state``, also for gymnasium-robotics envs (which have none)."""
    env = env.unwrapped
    if hasattr(env, "set_state"):
        env.set_state(qpos, qvel)
        return
    env.data.qpos[:], env.data.qvel[:] = qpos, qvel
    mujoco.mj_forward(env.model, env.data)


def check_parity(warp, cpus, contexts, steps, seed=0, policy=None, atol=OBS_ATOL):
    """Step every CPU env and its Warp world from the same state with the same action; return
    the Warp observations ``(steps, N, obs_dim)``.

    :param policy: ``policy(observations (N, obs_dim), t) -> actions (N, act_dim)``, fed the
        Warp worlds' observations of the shared state (uniform random actions when ``None``).
    :param atol: the observation tolerance, a scalar or one per dimension.
    """
    warp.reset(contexts=torch.as_tensor(contexts))
    if "desired_goal" in warp.observation_space.spaces:  # goals drawn per episode: the CPU envs'
        goals = np.stack([env.unwrapped.goal for env in cpus]).astype(np.float32)
        warp.goals.copy_(torch.from_numpy(goals))
    rng = np.random.default_rng(seed)
    low, high = warp.action_space.low, warp.action_space.high
    seen = []
    for t in range(steps):
        qpos = np.stack([env.unwrapped.data.qpos for env in cpus]).astype(np.float32)
        qvel = np.stack([env.unwrapped.data.qvel for env in cpus]).astype(np.float32)
        for env, q, v in zip(cpus, qpos, qvel, strict=True):
            set_cpu_state(env, q.astype(np.float64), v.astype(np.float64))
        warp.set_state(torch.from_numpy(qpos), torch.from_numpy(qvel))
        if policy is None:
            actions = rng.uniform(low, high, (len(cpus), len(low))).astype(np.float32)
        else:
            actions = policy(warp._observe().cpu().numpy(), t).astype(np.float32)
        _, reward, terminated, _, info = warp.step(torch.from_numpy(actions))
        final = {k: v.cpu().numpy() for k, v in info["final_observation"].items()}
        assert set(final) == set(warp.observation_space.spaces)
        for i, env in enumerate(cpus):
            obs, cpu_reward, cpu_terminated, _, cpu_info = env.step(actions[i])
            where = f"step {t}, world {i}"
            if "is_success" in cpu_info:
                assert float(info["is_success"][i]) == float(cpu_info["is_success"]), where
            assert set(obs) == set(final), where
            for key in obs:
                tol = {"observation": atol, "context": 1e-6}.get(key, OBS_ATOL)
                gap = np.abs(final[key][i] - obs[key])
                assert (gap <= tol).all(), f"{where}: {key} differs by {gap} (allowed {tol})"
            assert abs(float(reward[i]) - cpu_reward) <= REWARD_ATOL, where
            assert bool(terminated[i]) == cpu_terminated, where
        seen.append(final["observation"])
    return np.stack(seen)


def test_halfcheetah_matches_the_cpu_env_step_by_step(cheetah):
    check_parity(cheetah, cpu_envs("HalfCheetah-v5", CONTEXTS), CONTEXTS, steps=40)


def test_task_feature_replaces_the_forward_reward():
    contexts = np.array([[0.5], [2.75]], dtype=np.float32)
    features = ("target_velocity",)
    warp = WarpLocomotion("HalfCheetah-v5", len(contexts), features=features, device=DEVICE, seed=0)
    check_parity(warp, cpu_envs("HalfCheetah-v5", contexts, features), contexts, steps=10)


def test_context_is_written_into_the_model_and_the_derived_masses(cheetah):
    cheetah.reset(contexts=torch.from_numpy(CONTEXTS))
    fields = ("body_mass", "body_inertia", "geom_friction", "dof_damping", "actuator_gear")
    for i, context in enumerate(CONTEXTS):
        cpu = ContextualLocomotion("HalfCheetah-v5")
        cpu.apply_context(cpu.context_space.validate(named(context)))  # runs mj_setConst
        model = cpu.unwrapped.model
        got = cheetah.worlds.field("gravity")[i].cpu().numpy()
        np.testing.assert_allclose(got, model.opt.gravity, rtol=1e-6)
        for name in fields + DERIVED_FIELDS[:4]:
            got = cheetah.worlds.field(name)[i].cpu().cpu().numpy().reshape(-1)
            np.testing.assert_allclose(
                got, getattr(model, name).reshape(-1), rtol=1e-5, atol=1e-7, err_msg=name
            )


def test_shapes_dtypes_devices_and_spaces(cheetah):
    n = cheetah.num_envs
    cpu = ContextualLocomotion("HalfCheetah-v5")
    assert cheetah.observation_space == cpu.observation_space
    assert cheetah.action_space == cpu.action_space
    obs = cheetah.reset(seed=3)
    actions = torch.zeros(n, 6)
    obs, reward, terminated, truncated, info = cheetah.step(actions)
    for o in (obs, info["final_observation"]):
        assert set(o) == {"observation", "context"}
        assert o["observation"].shape == (n, 17) and o["context"].shape == (n, len(FEATURES))
    tensors = [*obs.values(), reward, terminated, truncated, info["context"]]
    assert all(t.device.type == torch.device(DEVICE).type for t in tensors)
    assert obs["observation"].dtype == obs["context"].dtype == reward.dtype == torch.float32
    assert reward.shape == terminated.shape == truncated.shape == (n,)
    assert terminated.dtype == truncated.dtype == torch.bool
    assert info["context"].shape == (n, len(FEATURES))
    # the state is shared with Warp, the observation is a copy of it
    assert cheetah.worlds.qpos.data_ptr() == cheetah.worlds.data.qpos.ptr
    assert cheetah.worlds.ctrl.data_ptr() == cheetah.worlds.data.ctrl.ptr
    assert cheetah.worlds.field("body_mass").data_ptr() == cheetah.worlds.model.body_mass.ptr
    before = obs["observation"].clone()
    cheetah.step(actions)
    assert torch.equal(obs["observation"], before)


def test_reset_draws_states_from_the_gymnasium_noise_and_is_seeded():
    warp = WarpLocomotion("HalfCheetah-v5", 512, features=("gravity",), device=DEVICE, seed=0)
    obs = warp.reset(seed=5)
    qpos, qvel = (
        warp.worlds.qpos.cpu() - torch.from_numpy(warp.mj_model.qpos0).float(),
        warp.worlds.qvel.cpu(),
    )
    # HalfCheetah-v5: qpos + U(-0.1, 0.1), qvel + 0.1 N(0, 1)
    assert qpos.abs().max() <= 0.1 + 1e-6
    assert abs(qpos.std().item() - 0.1 / np.sqrt(3)) < 0.05 * 0.1 / np.sqrt(3)
    assert abs(qvel.std().item() - 0.1) < 0.05 * 0.1
    assert torch.equal(
        obs["observation"], torch.cat([warp.worlds.qpos[:, 1:], warp.worlds.qvel], -1)
    )
    again = warp.reset(seed=5)
    assert torch.equal(again["observation"], obs["observation"])
    assert torch.equal(again["context"], obs["context"])


@pytest.mark.parametrize("split", ["interpolation", "extrapolation"])
def test_auto_reset_draws_new_contexts_from_the_split(split):
    warp = WarpLocomotion(
        "HalfCheetah-v5", 8, split=split, device=DEVICE, seed=1, max_episode_steps=2
    )
    space = warp.context_space
    obs = warp.reset()
    first = warp.contexts.clone()
    assert all(space.split_of(named(c)) == split for c in first.tolist())
    actions = torch.zeros(8, 6)
    _, _, terminated, truncated, _ = warp.step(actions)
    assert not truncated.any() and (warp.episode_steps == 1).all()
    obs, _, terminated, truncated, info = warp.step(actions)
    assert truncated.all() and not terminated.any()
    assert (warp.episode_steps == 0).all()
    assert torch.equal(info["context"], first)
    assert not torch.equal(warp.contexts, first)
    assert all(space.split_of(named(c)) == split for c in warp.contexts.tolist())
    torch.testing.assert_close(obs["context"], scale_contexts(space, warp.contexts))
    assert not torch.equal(obs["observation"], info["final_observation"]["observation"])
    # the new contexts reached the physics
    gravity = warp.worlds.field("gravity")[:, 2]
    torch.testing.assert_close(gravity, -warp.contexts[:, 0], rtol=1e-6, atol=0)
    mass = warp.worlds.field("body_mass")
    torch.testing.assert_close(mass, mass[:1] / warp.contexts[:1, 1:2] * warp.contexts[:, 1:2])


def test_clear_errors():
    with pytest.raises(ValueError, match="supports .*HalfCheetah-v5.*not 'Humanoid-v5'.*PGS"):
        WarpLocomotion("Humanoid-v5", 2)
    with pytest.raises(ValueError, match="unknown locomotion features \\['gravityy'\\]"):
        WarpLocomotion("HalfCheetah-v5", 2, features=("gravityy",))
    with pytest.raises(ValueError, match="'direction' needs an env that reports y_velocity"):
        WarpLocomotion("HalfCheetah-v5", 2, features=("direction",))


def test_pinned_context_out_of_bounds_names_the_feature(cheetah):
    contexts = torch.from_numpy(CONTEXTS).clone()
    contexts[1, 2] = 9.0
    with pytest.raises(ValueError, match="'friction_scale'=9.0 is outside its allowed range"):
        cheetah.reset(contexts=contexts)
    with pytest.raises(ValueError, match="contexts must be"):
        cheetah.reset(contexts=torch.from_numpy(CONTEXTS[:2]))


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5"])
def test_hopper_walker_match_the_cpu_env(env_id):
    # no termination, so every world keeps its context; the healthy reward is still compared
    kwargs = {"terminate_when_unhealthy": False}
    warp = WarpLocomotion(env_id, len(CONTEXTS), device=DEVICE, seed=0, **kwargs)
    check_parity(warp, cpu_envs(env_id, CONTEXTS, **kwargs), CONTEXTS, steps=40)


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5"])
def test_unhealthy_worlds_terminate_and_reset(env_id):
    warp = WarpLocomotion(env_id, 2, device=DEVICE, seed=0)
    (cpu,) = cpu_envs(env_id, CONTEXTS[1:2])
    warp.reset(contexts=torch.from_numpy(CONTEXTS[1:3]))
    pinned = warp.contexts.clone()
    qpos = np.tile(warp.mj_model.qpos0, (2, 1)).astype(np.float32)
    qpos[0, 2] = 1.2  # torso angle far outside both envs' healthy range
    qvel = np.zeros((2, warp.mj_model.nv), np.float32)
    warp.set_state(torch.from_numpy(qpos), torch.from_numpy(qvel))
    cpu.unwrapped.set_state(qpos[0].astype(np.float64), qvel[0].astype(np.float64))
    actions = np.zeros((2, warp.action_space.shape[0]), np.float32)
    obs, reward, terminated, truncated, info = warp.step(torch.from_numpy(actions))
    cpu_obs, cpu_reward, cpu_terminated, _, _ = cpu.step(actions[0])
    assert cpu_terminated and terminated.tolist() == [True, False] and not truncated.any()
    assert abs(float(reward[0]) - cpu_reward) <= REWARD_ATOL  # no healthy reward
    final = info["final_observation"]["observation"][0].cpu().numpy()
    np.testing.assert_allclose(final, cpu_obs["observation"], atol=OBS_ATOL)
    assert warp.episode_steps.tolist() == [0, 1]
    assert torch.equal(warp.contexts[1], pinned[1]) and not torch.equal(warp.contexts[0], pinned[0])
    assert warp.context_space.split_of(named(warp.contexts[0].tolist())) == "train"
    init = torch.from_numpy(warp.mj_model.qpos0).float().to(warp.device)
    assert (warp.worlds.qpos[0] - init).abs().max() <= 5e-3 + 1e-6  # a fresh reset state
    nq = warp.mj_model.nq
    assert torch.equal(obs["observation"][0, : nq - 1], warp.worlds.qpos[0, 1:])


def test_ant_matches_the_cpu_env_with_an_elliptic_cone(tmp_path):
    """Ant's obs (contact forces), contact cost, body-based velocity and health, step by step.

    With Ant's own pyramidal friction cone MuJoCo Warp 4.0 does not match MuJoCo: for a capsule
    touching the floor at more than 60 degrees from horizontal it takes a fixed tangent for the
    contact frame where MuJoCo follows the capsule's axis, and a pyramid's friction depends on
    that frame. An elliptic cone with isotropic friction is independent of it, so this test
    compares the env code on that variant of the model.
    """
    xml = Path(gym.make("Ant-v5").unwrapped.fullpath).read_text()
    xml = xml.replace('<option integrator="RK4"', '<option cone="elliptic" integrator="RK4"')
    assert 'cone="elliptic"' in xml
    path = tmp_path / "ant_elliptic.xml"
    path.write_text(xml)
    kwargs = {"terminate_when_unhealthy": False, "xml_file": str(path)}
    warp = WarpLocomotion("Ant-v5", len(CONTEXTS), device=DEVICE, seed=0, **kwargs)
    obs = check_parity(warp, cpu_envs("Ant-v5", CONTEXTS, **kwargs), CONTEXTS, steps=30)
    assert np.abs(obs[..., 27:]).max() > 0.5  # contact forces were compared, not just zeros


def test_ant_default_model_runs():
    warp = WarpLocomotion("Ant-v5", 2, device=DEVICE, seed=0)
    obs = warp.reset()
    assert obs["observation"].shape == (2, 105)
    assert not obs["observation"][:, 27:].any()  # like mj_resetData + mj_forward
    for _ in range(20):
        obs, reward, terminated, truncated, info = warp.step(torch.zeros(2, 8))
    assert torch.isfinite(obs["observation"]).all() and torch.isfinite(reward).all()
    forces = info["final_observation"]["observation"][:, 27:]
    assert forces.abs().max() <= 1.0 and forces.any()  # clipped contact forces of the feet


@pytest.mark.parametrize(
    ("algo", "env_id", "twin", "hyperparams", "length"),
    [
        (
            "ppo",
            "hyperrl/WarpHalfCheetah-v0",
            "hyperrl/ContextualHalfCheetah-v0",
            ["n_steps:8", "n_minibatches:2", "n_epochs:1"],
            1000,
        ),
        (
            "sac",
            "hyperrl/WarpFetchReach-v0",
            "hyperrl/ContextualFetchReach-v0",
            ["learning_starts:16", "batch_size:8", "gradient_steps:1"],
            50,
        ),
        (
            "ppo",
            "hyperrl/WarpFetchPush-v0",
            "hyperrl/ContextualFetchPush-v0",
            ["n_steps:8", "n_minibatches:2", "n_epochs:1"],
            50,
        ),
    ],
)
def test_train_agent_trains_on_warp_and_evaluates_on_the_cpu_twin(
    tmp_path, algo, env_id, twin, hyperparams, length
):
    if "Fetch" in env_id:
        pytest.importorskip("gymnasium_robotics")
    from stable_baselines3 import PPO, SAC

    from agents.evaluation import evaluate_run
    from agents.train import TrainArgs, train

    run_dir = tmp_path / "run"
    train(
        TrainArgs(
            algo=algo,
            env=env_id,
            n_envs=2,
            timesteps=32,
            hyperparams=hyperparams,
            eval_freq=0,
            save_freq=0,
            progress_bar=False,
            device=DEVICE,
            run_dir=str(run_dir),
        )
    )
    model = {"ppo": PPO, "sac": SAC}[algo].load(run_dir / "model.zip", device="cpu")
    assert model.num_timesteps == 32
    result = evaluate_run(run_dir, splits=["extrapolation"], episodes=1)
    assert result["env"] == twin
    (episode,) = result["episodes"]
    assert episode["length"] == length
    summary = result["summary"]["extrapolation"]
    if "Fetch" in env_id:  # goal-reaching: whether the episode ended within 5 cm of the goal
        assert summary["success_rate"] == float(episode["success"])
    else:
        assert "success_rate" not in summary and "success" not in episode


# -- FetchReach: the mocap-driven arm; the goal is the context -----------------------------------

REACH_GOALS = np.array([[0.0, 0.0, 0.0], [0.125, -0.125, 0.0625], [-0.14, 0.0625, 0.2]], np.float32)


@pytest.fixture(scope="module")
def reach():
    pytest.importorskip("gymnasium_robotics")
    from envs.manipulation.warp import WarpFetchReach

    return WarpFetchReach(len(REACH_GOALS), device=DEVICE, seed=0)


def reach_cpu_envs(goals, **kwargs):
    from envs.manipulation import REACH_FEATURES, ContextualFetchReach

    out = []
    for i, goal in enumerate(goals):
        env = ContextualFetchReach(**kwargs)
        env.reset(seed=i, options={"context": named(goal, tuple(REACH_FEATURES))})
        out.append(env)
    return out


def test_fetch_reach_matches_the_cpu_env_step_by_step(reach):
    cpus = reach_cpu_envs(REACH_GOALS)
    for i, env in enumerate(cpus):  # the goal is the context, in both
        np.testing.assert_allclose(env.goal, env.unwrapped.initial_gripper_xpos + REACH_GOALS[i])
    # FetchReach resets to one fixed state: the reset observations agree too
    start = reach.reset(contexts=torch.from_numpy(REACH_GOALS))["observation"].cpu().numpy()
    want = np.stack([env.unwrapped._get_obs()["observation"] for env in cpus])
    np.testing.assert_allclose(start, want, rtol=0, atol=1e-5)
    obs = check_parity(reach, cpus, REACH_GOALS, steps=25)
    np.testing.assert_allclose(reach.goals.cpu().numpy(), [env.goal for env in cpus], atol=1e-6)
    assert np.abs(obs[..., 5:8]).max() > 1e-3  # the grip velocity was compared, not zeros


def test_fetch_reach_sparse_reward_matches_the_cpu_env():
    from envs.manipulation.warp import WarpFetchReach

    goals = np.zeros((2, 3), np.float32)  # the gripper starts on the goal: some steps succeed
    warp = WarpFetchReach(2, device=DEVICE, seed=0, reward_type="sparse")
    check_parity(warp, reach_cpu_envs(goals, reward_type="sparse"), goals, steps=6)


def test_fetch_reach_gripper_follows_the_actions_to_every_goal(reach):
    """A proportional controller on the observation reaches each world's own goal, and the
    episode truncates after FetchReach's 50 steps with new goals."""
    obs = reach.reset(contexts=torch.from_numpy(REACH_GOALS))
    goals = reach.goals.clone()
    start = obs["observation"][:, :3].clone()
    for _ in range(50):
        grip = obs["observation"][:, :3]
        actions = torch.cat([(goals - grip) / 0.05, torch.zeros_like(goals[:, :1])], -1)
        obs, reward, terminated, truncated, info = reach.step(actions.clamp(-1, 1))
    final = info["final_observation"]["observation"][:, :3]
    distance = torch.linalg.vector_norm(final - goals, dim=-1)
    assert (distance < reach.distance_threshold).all(), distance
    torch.testing.assert_close(reward, -distance)
    assert truncated.all() and not terminated.any() and (reach.episode_steps == 0).all()
    torch.testing.assert_close(obs["observation"][:, :3], start, atol=1e-5, rtol=0)  # reset
    assert not torch.equal(reach.contexts, torch.from_numpy(REACH_GOALS).to(reach.device))


class _Controller:
    """Stands in for a trainer in ``evaluate_batched``: drives the gripper of world ``i`` to its
    goal with gain ``gains[i]`` (0: stays put)."""

    def __init__(self, env, gains):
        self.env, self.gains = env, torch.tensor(gains, device=env.device).unsqueeze(-1)
        self.policy = self

    def set_training_mode(self, mode):
        pass

    def start_episodes(self):
        pass

    def act(self, obs, deterministic):
        move = (self.env.goals - obs["observation"][:, :3]) / 0.05 * self.gains
        return torch.cat([move.clamp(-1, 1), torch.zeros_like(move[:, :1])], -1)


def test_batched_evaluation_reports_the_success_rate(reach):
    from agents.batched.evaluation import evaluate_batched

    reach.reset(seed=0)  # what evaluate_batched starts from
    start = reach.worlds.site_xpos[:, reach._grip]
    assert (torch.linalg.vector_norm(reach.goals - start, dim=-1) > 0.05).all()
    reaching = evaluate_batched(_Controller(reach, [1.0, 1.0, 1.0]), reach, seed=0)
    assert reaching["success_rate"] == 1.0 and reaching["return"] > -3.0
    one = evaluate_batched(_Controller(reach, [0.0, 1.0, 0.0]), reach, seed=0)
    assert one["success_rate"] == pytest.approx(1 / 3)
    assert one["return"] < reaching["return"]


def test_fetch_reach_spaces_and_registration(reach):
    from envs import cpu_twin, make_batched

    twin = gym.make(cpu_twin("hyperrl/WarpFetchReach-v0"))
    assert twin.observation_space == reach.observation_space
    assert twin.action_space == reach.action_space
    assert set(twin.observation_space) == {"observation", "context"}
    obs, info = twin.reset(seed=0, options={"context": {"goal_x": 0.2}})
    assert twin.unwrapped.goal[0] == pytest.approx(twin.unwrapped.initial_gripper_xpos[0] + 0.2)
    assert info["context"] == {"goal_x": 0.2, "goal_y": 0.0, "goal_z": 0.0}
    env = make_batched("hyperrl/WarpFetchReach-v0", 2, split="extrapolation", seed=0)
    env.reset()
    assert all(
        env.context_space.split_of(named(c, env.context_names)) == "extrapolation"
        for c in env.contexts.tolist()
    )
    with pytest.raises(ValueError, match="unknown FetchReach features \\['goal_w'\\]"):
        make_batched("hyperrl/WarpFetchReach-v0", 2, features=("goal_w",))


# -- FetchPush: the object's physics is the context ----------------------------------------------

PUSH_FEATURES = ("object_mass_scale", "object_friction_scale", "table_friction_scale")
PUSH_CONTEXTS = np.array([[1.0, 1.0, 1.0], [1.375, 0.625, 1.25], [0.625, 1.5, 0.75]], np.float32)
#: the object's Euler angles and angular velocity (obs 11:14, 17:20): a box rocking on the table
#: under the pusher is sensitive to the solver (tolerance 1e-8 in MuJoCo, 1e-6 in MuJoCo Warp);
#: the largest gaps seen over this push were 6e-3 rad and 0.022 (0.55 rad/s), all else < 3e-4.
#: The formulas themselves are compared exactly in the kinematics test below.
SPIN_ATOL = 0.05


@pytest.fixture(scope="module")
def push():
    pytest.importorskip("gymnasium_robotics")
    from envs.manipulation.warp import WarpFetchPush

    return WarpFetchPush(len(PUSH_CONTEXTS), device=DEVICE, seed=0)


def push_cpu_envs(contexts):
    from envs.manipulation import ContextualFetch

    out = []
    for i, context in enumerate(contexts):
        env = ContextualFetch("FetchPush-v4")
        env.reset(seed=i, options={"context": named(context, PUSH_FEATURES)})
        out.append(env)
    return out


def push_gently(obs, t):
    """Above and behind the object, down to the table, then slowly along +x: a sliding push
    (hard impacts tumble the box, whose spin then differs between the solvers)."""
    grip, obj = obs[:, :3], obs[:, 3:6]
    behind = obj + np.array([-0.06, 0.0, 0.0])
    if t < 10:
        move = np.clip((behind + np.array([0.0, 0.0, 0.08]) - grip) * 10, -1, 1)
    elif t < 16:
        move = np.clip((behind - grip) * 10, -1, 1)
    else:
        move = np.tile([0.09, 0.0, 0.0], (len(obs), 1))
    return np.concatenate([move, np.zeros((len(obs), 1))], -1)


def test_fetch_push_matches_the_cpu_env_step_by_step(push):
    atol = np.full(25, OBS_ATOL)
    atol[[11, 12, 13, 17, 18, 19]] = SPIN_ATOL
    cpus = push_cpu_envs(PUSH_CONTEXTS)
    obs = check_parity(push, cpus, PUSH_CONTEXTS, steps=30, policy=push_gently, atol=atol)
    pushed = obs[-1, :, 3] - obs[15, :, 3]  # the object's x over the push
    assert (pushed > 0.015).all(), pushed


def test_fetch_push_observation_formulas_match_on_spinning_objects(push):
    """From random states with the object tilted and spinning (no stepping: kinematics only),
    the Euler angles and site velocities equal gymnasium-robotics' (Jacobian-based) ones."""
    cpus = push_cpu_envs(PUSH_CONTEXTS)
    rng = np.random.default_rng(0)
    push.reset(contexts=torch.from_numpy(PUSH_CONTEXTS))
    nq, nv = push.mj_model.nq, push.mj_model.nv
    for _ in range(5):
        qpos = np.stack([env.unwrapped.data.qpos for env in cpus]).astype(np.float32)
        quat = rng.normal(size=(len(cpus), 4))
        qpos[:, nq - 4 :] = quat / np.linalg.norm(quat, axis=1, keepdims=True)
        qvel = rng.normal(scale=0.5, size=(len(cpus), nv)).astype(np.float32)
        for env, q, v in zip(cpus, qpos, qvel, strict=True):
            set_cpu_state(env, q.astype(np.float64), v.astype(np.float64))
        push.set_state(torch.from_numpy(qpos), torch.from_numpy(qvel))
        got = push._observe().cpu().numpy()
        want = np.stack([env.unwrapped._get_obs()["observation"] for env in cpus])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert np.abs(want[:, 11:14]).max() > 0.5 and np.abs(want[:, 17:20]).max() > 0.01


def test_fetch_push_context_is_written_into_the_model_and_the_derived_masses(push):
    """Every batched field as ``ContextualFetch.apply_context`` (``mj_setConst``) leaves it,
    except one known gap: MuJoCo Warp's ``set_const`` gives bodies that cannot rotate (Fetch's
    base, on slide joints, and what is welded to it) a rotational inverse weight where MuJoCo
    gives 0. Rotational weights only scale constraint rows that rotate a body, so it is unused."""
    push.reset(contexts=torch.from_numpy(PUSH_CONTEXTS))
    for i, env in enumerate(push_cpu_envs(PUSH_CONTEXTS)):  # reset ran apply_context
        model = env.unwrapped.model
        for name in ("body_mass", "body_inertia", "geom_friction", "body_subtreemass"):
            got = push.worlds.field(name)[i].cpu().numpy()
            np.testing.assert_allclose(got, getattr(model, name), rtol=1e-5, err_msg=name)
        rotates = model.body_invweight0[:, 1] > 0
        for name, rows in (("dof_invweight0", slice(None)), ("body_invweight0", rotates)):
            got = push.worlds.field(name)[i].cpu().numpy()
            np.testing.assert_allclose(got[rows], getattr(model, name)[rows], rtol=1e-5)
        weights = push.worlds.field("body_invweight0")[i].cpu().numpy()
        np.testing.assert_allclose(weights[:, 0], model.body_invweight0[:, 0], rtol=1e-5)


def test_fetch_push_draws_objects_and_goals_as_fetch_push():
    pytest.importorskip("gymnasium_robotics")
    from envs.manipulation.warp import WarpFetchPush

    warp = WarpFetchPush(256, device=DEVICE, seed=3, split="extrapolation")
    obs = warp.reset()
    start = warp._start.cpu()
    offset = obs["achieved_goal"][:, :2].cpu() - start[:2]
    assert (torch.linalg.vector_norm(offset, dim=-1) >= 0.1).all()
    assert (offset.abs() <= 0.15 + 1e-6).all() and offset.std() > 0.05
    goals = obs["desired_goal"].cpu()
    assert ((goals[:, :2] - start[:2]).abs() <= 0.15 + 1e-6).all()
    torch.testing.assert_close(goals[:, 2], torch.full((256,), warp._height))
    space = warp.context_space
    assert all(
        space.split_of(named(c, PUSH_FEATURES)) == "extrapolation" for c in warp.contexts.tolist()
    )
    again = warp.reset(seed=3)
    assert torch.equal(again["achieved_goal"], obs["achieved_goal"])
    assert torch.equal(again["desired_goal"], obs["desired_goal"])


def test_mat2euler_matches_gymnasium_robotics():
    pytest.importorskip("gymnasium_robotics")
    from gymnasium_robotics.utils import rotations

    from envs.manipulation.batched import mat2euler

    rng = np.random.default_rng(0)
    quats = rng.normal(size=(64, 4))
    mats = rotations.quat2mat(quats / np.linalg.norm(quats, axis=1, keepdims=True))
    mats[0] = rotations.euler2mat(np.array([0.3, np.pi / 2, -0.2]))  # gimbal lock
    got = mat2euler(torch.from_numpy(mats)).numpy()
    np.testing.assert_allclose(got, rotations.mat2euler(mats), atol=1e-9)
