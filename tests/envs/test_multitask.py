import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers hyperrl/*)
from envs.manipulation.contextual import PlainRewards
from envs.manipulation.multitask import INSTRUCTIONS, FetchMultiTask, text_embeddings


def test_checkers_pass():
    check_env(gym.make("hyperrl/FetchMultiTask-v0"), skip_render_check=True)
    sb3_check_env(FetchMultiTask())


def test_tasks_switch_per_episode_with_their_one_hot():
    env = FetchMultiTask()
    seen = {}
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        seen[info["context"]["task"]] = obs["context"]
        _, _, _, _, step_info = env.step(env.action_space.sample())
        assert step_info["context"] == info["context"]
    assert set(seen) == {"Push", "PickAndPlace"}  # never the held-out task in training
    np.testing.assert_array_equal(seen["Push"], [1, 0, 0])
    np.testing.assert_array_equal(seen["PickAndPlace"], [0, 1, 0])


def test_held_out_split_and_pinning():
    env = FetchMultiTask(split="held_out")
    assert {env.reset(seed=s)[1]["context"]["task"] for s in range(5)} == {"Slide"}
    obs, info = env.reset(options={"context": {"task": "Push"}})
    assert info["context"] == {"task": "Push"} and obs["context"][0] == 1
    with pytest.raises(ValueError, match=r"name one of \('Push', 'PickAndPlace', 'Slide'\)"):
        env.reset(options={"context": {"task": "Stack"}})
    with pytest.raises(ValueError, match="distinct names"):
        FetchMultiTask(tasks=("Push",), held_out=("Push",))


def test_seeding_gives_identical_episodes():
    a, b = FetchMultiTask(), FetchMultiTask()
    for seed in (0, 1, 2):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        assert info_a == info_b
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])


def test_text_descriptors_embed_the_instructions():
    env = gym.make("hyperrl/FetchMultiTaskText-v0")
    obs, info = env.reset(options={"context": {"task": "Slide"}})
    table = text_embeddings(tuple(INSTRUCTIONS.values()))
    assert obs["context"].shape == (384,)
    np.testing.assert_allclose(obs["context"], table[list(INSTRUCTIONS).index("Slide")])
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, rtol=1e-5)
    similarity = table @ table.T
    assert np.all(similarity[~np.eye(3, dtype=bool)] < 0.95)  # tasks are told apart


def test_renders_rgb_array_headless():
    env = gym.make("hyperrl/FetchMultiTask-v0", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.std() > 0


def test_fetch_reach_is_a_working_goal_env():
    env = gym.make("hyperrl/FetchReach-v0")
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"observation", "achieved_goal", "desired_goal"}
    while not isinstance(env, PlainRewards):  # SB3 checks compute_reward on the env it gets
        env = env.env
    sb3_check_env(env)
