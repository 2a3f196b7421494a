"""Every registered env: checkers, the context convention, seeding, context effects, rendering."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.locomotion import PHYSICS_FEATURES
from envs.registration import ENVS, context_space

CLASSIC = {
    "hyperrl/ContextualPendulum-v0": "Pendulum-v1",
    "hyperrl/ContextualCartPole-v0": "CartPole-v1",
}
#: its context is the goal, a task context: it changes only the reward
REACH = "hyperrl/ContextualFetchReach-v0"


def base_id(env_id):
    return CLASSIC.get(env_id) or ENVS[env_id].kwargs.get("env_id") or "FetchReach-v4"


def base_env(env_id):
    if "Fetch" in env_id:
        from envs.manipulation import make_robotics_env

        return make_robotics_env(base_id(env_id))
    return gym.make(base_id(env_id))


def push_object(obs, t):
    """Fetch: move the gripper behind the object, lower it, push along +x (random actions rarely
    touch the object, and object physics only show on contact)."""
    grip, obj = obs["observation"][:3], obs["observation"][3:6]
    if t < 12:
        target = obj + np.array([-0.05, 0.0, 0.03])
    elif t < 18:
        target = obj + np.array([-0.05, 0.0, 0.0])
    else:
        target = grip + np.array([0.05, 0.0, 0.0])
    return np.append(np.clip((target - grip) * 10, -1, 1), 0.0).astype(np.float32)


def actions_for(env_id, env, n=30, seed=0):
    """A function of the observation for Fetch, a fixed list of random actions otherwise."""
    if "Fetch" in env_id and env_id != REACH:
        return push_object
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(n)]


def rollout(env, seed, actions, context=None, steps=30):
    """``(observations (T+1, ...), rewards (T,), reset info)`` up to termination."""
    options = None if context is None else {"context": context}
    obs, info = env.reset(seed=seed, options=options)
    trajectory, rewards = [obs["observation"] if isinstance(obs, dict) else obs], []
    for t in range(steps):
        action = actions(obs, t) if callable(actions) else actions[t]
        obs, reward, terminated, truncated, _ = env.step(action)
        trajectory.append(obs["observation"] if isinstance(obs, dict) else obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.array(trajectory), np.array(rewards), info


def contextual_layer(env):
    """The ContextualEnv inside gym.make's wrappers (SB3's goal-env check calls compute_reward
    on the env it is given, and gymnasium's wrappers do not forward it)."""
    while not isinstance(env, envs.ContextualEnv):
        env = env.env
    return env


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_checkers_pass(env_id, monkeypatch):
    check_env(gym.make(env_id), skip_render_check=True)
    # SB3 calls an env goal-conditioned when its innermost env has compute_reward, but
    # ContextualFetchReach turns FetchReach's goal into a context and drops the goal keys
    from stable_baselines3.common import env_checker

    monkeypatch.setattr(
        env_checker, "_is_goal_env", lambda env: "desired_goal" in env.observation_space.spaces
    )
    sb3_check_env(contextual_layer(gym.make(env_id)))


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_context_convention(env_id):
    env = gym.make(env_id)
    obs, info = env.reset(seed=1)
    space = context_space(env_id)
    assert set(obs) - {"achieved_goal", "desired_goal"} == {"observation", "context"}
    np.testing.assert_allclose(obs["context"], space.to_array(info["context"]))
    assert space.split_of(info["context"]) == "train"
    pinned = {space.names[0]: space.features[0].holdout[0]}
    obs, info = env.reset(options={"context": pinned})
    assert info["context"] == space.nominal | pinned
    *_, step_info = env.step(env.action_space.sample())
    assert step_info["context"] == info["context"]
    with pytest.raises(ValueError, match="outside its allowed range"):
        env.reset(options={"context": {space.names[0]: 1e6}})
    hidden = gym.make(env_id, hidden_context=True)
    obs, info = hidden.reset(seed=0)
    assert "context" not in obs and "observation" in obs
    assert set(info["context"]) == set(space.names)


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_seeding_gives_identical_episodes(env_id):
    env = gym.make(env_id)
    actions = actions_for(env_id, env)
    a, reward_a, info_a = rollout(env, 7, actions)
    b, reward_b, info_b = rollout(gym.make(env_id), 7, actions)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(reward_a, reward_b)
    assert info_a["context"] == info_b["context"]
    *_, info_c = rollout(env, 8, actions)
    assert info_c["context"] != info_a["context"]


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_every_feature_changes_the_episode_and_nominal_restores_the_dynamics(env_id):
    env = gym.make(env_id)
    space = context_space(env_id)
    actions = actions_for(env_id, env)
    obs0, rew0, _ = rollout(env, 3, actions, context=space.nominal)
    for feature in space.features:
        obs, rew, _ = rollout(env, 3, actions, context={feature.name: feature.train[1]})
        n, m = min(len(obs), len(obs0)), min(len(rew), len(rew0))
        same = np.allclose(obs[:n], obs0[:n]) and np.allclose(rew[:m], rew0[:m])
        assert not same, f"{feature.name} changes nothing"
    obs1, rew1, _ = rollout(env, 3, actions, context=space.nominal)  # after the changes above
    np.testing.assert_array_equal(obs1, obs0)
    np.testing.assert_array_equal(rew1, rew0)
    ref_obs, ref_rew, _ = rollout(base_env(env_id), 3, actions)
    np.testing.assert_array_equal(obs0, ref_obs)
    physics_only = set(space.names) <= set(PHYSICS_FEATURES)
    if env_id in CLASSIC or ("Fetch" in env_id and env_id != REACH) or physics_only:
        np.testing.assert_array_equal(rew0, ref_rew)  # a task context changes only the reward


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_renders_rgb_array_headless(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.std() > 0


@pytest.mark.parametrize("name", ["HalfCheetah", "Ant"])
def test_locomotion_videos_follow_the_body(name):
    """Moved 20 m along x, the robot is still in the picture (the stock tracking camera); the
    free camera shows empty floor there."""

    def robot_share(frame):  # orange-brown limbs: red above green (floor, sky: not)
        frame = frame.astype(int)
        return float((frame[..., 0] > frame[..., 1] + 20).mean())

    env = gym.make(f"hyperrl/Contextual{name}-v0", render_mode="rgb_array")
    env.reset(seed=0)
    base = env.unwrapped
    qpos, qvel = base.data.qpos.copy(), base.data.qvel.copy()
    here = robot_share(env.render())
    qpos[0] += 20.0
    base.set_state(qpos, qvel)
    there = robot_share(env.render())
    assert here > 0.01 and there > 0.5 * here, (here, there)


def test_listing_names_every_env_and_feature():
    text = envs.describe_envs()
    for env_id in ENVS:
        assert env_id in text
        assert all(name in text for name in context_space(env_id).names)


def test_fixed_list_of_contexts():
    fixed = [{"gravity": 6.0}, {"gravity": 14.0, "mass": 1.2}]
    env = gym.make("hyperrl/ContextualPendulum-v0", contexts=fixed)
    drawn = {tuple(env.reset(seed=s)[1]["context"].values()) for s in range(20)}
    assert drawn == {(6.0, 1.0, 1.0), (14.0, 1.2, 1.0)}
    with pytest.raises(ValueError, match="unknown context features"):
        gym.make("hyperrl/ContextualPendulum-v0", contexts=[{"g": 1.0}])


def test_train_ranges_reach_the_gym_and_batched_envs():
    """``env_kwargs: {train_ranges: ...}``: the train split of both kinds of env draws from the
    new range, the observation scales a context as before, envs without context refuse it."""
    ranges = {"gravity": [20.0, 24.0]}
    env = gym.make("hyperrl/ContextualPendulum-v0", train_ranges=ranges)
    plain = gym.make("hyperrl/ContextualPendulum-v0")
    drawn = []
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        drawn.append(info["context"]["gravity"])
        pinned, _ = plain.reset(options={"context": info["context"]})
        assert np.allclose(obs["context"], pinned["context"])
    assert min(drawn) >= 20.0 and max(drawn) <= 24.0
    batched = envs.make_batched("hyperrl/TorchPendulum-v0", 64, train_ranges=ranges, seed=0)
    batched.reset(seed=0)
    gravity = batched.contexts[:, batched.context_names.index("gravity")]
    assert gravity.min() >= 20.0 and gravity.max() <= 24.0
    space = envs.context_space("hyperrl/ContextualPendulum-v0")
    for split in ("interpolation", "extrapolation"):  # the held-out splits stay the env's
        held = envs.make_batched("hyperrl/TorchPendulum-v0", 256, split, train_ranges=ranges)
        held.reset(seed=0)
        drawn = [dict(zip(held.context_names, c.tolist(), strict=True)) for c in held.contexts]
        assert {space.split_of(c) for c in drawn} == {split}
    with pytest.raises(ValueError, match="unknown context features"):
        envs.make_batched("hyperrl/TorchPendulum-v0", 2, train_ranges={"gravty": [1, 2]})
    with pytest.raises(ValueError, match="has no context features; drop train_ranges"):
        envs.make_batched("hyperrl/BatchedFetchMultiTask-v0", 2, train_ranges=ranges)
