"""History observations (``make_batched(..., history=k)``): the last k transitions in place of
the context, emptied when an episode ends, with the final transition in ``final_observation``."""

from __future__ import annotations

import pytest
import torch

import envs


def test_the_history_holds_the_last_transitions_and_starts_empty_each_episode():
    env = envs.make_batched("hyperrl/TorchPendulum-v0", 2, "train", "cpu", seed=0, history=3)
    assert set(env.observation_space.spaces) == {"observation"}
    d = 3 + 1 + 1 + 3  # o, a, r, o'
    assert env.observation_space["observation"].shape == (3 + 3 * (d + 1),)
    obs = env.reset(seed=0)
    assert torch.all(obs["observation"][:, 3:] == 0)  # no transition yet
    previous = obs["observation"][:, :3].clone()
    actions = torch.tensor([[5.0], [-0.5]])  # the first is clipped to the max torque, 2
    obs, reward, *_ = env.step(actions)
    history = obs["observation"][:, 3:].reshape(2, 3, d + 1)
    assert history[:, :2].abs().sum() == 0  # two empty slots, then the step
    newest = history[:, 2]
    torch.testing.assert_close(newest[:, :3], previous)
    torch.testing.assert_close(newest[:, 3], torch.tensor([2.0, -0.5]))
    torch.testing.assert_close(newest[:, 4], reward)
    torch.testing.assert_close(newest[:, 5:8], obs["observation"][:, :3])
    assert newest[:, 8].tolist() == [1.0, 1.0]
    for _ in range(199):  # the 200-step horizon: both worlds truncate on the last one
        obs, reward, terminated, truncated, info = env.step(torch.zeros(2, 1))
    assert truncated.all()
    final = info["final_observation"]["observation"][:, 3:].reshape(2, 3, d + 1)
    assert final[:, :, 8].sum() == 6  # the ended episode's last three transitions
    assert torch.all(obs["observation"][:, 3:] == 0)  # the new episode starts empty
    assert env.contexts.shape == (2, 3)  # the contexts are still drawn


def test_bad_history_lengths_and_what_history_cannot_do_are_refused():
    with pytest.raises(ValueError, match="history must be a positive number"):
        envs.make_batched("hyperrl/TorchPendulum-v0", 2, history=0)
    env = envs.make_batched("hyperrl/TorchPendulum-v0", 2, history=2)
    with pytest.raises(NotImplementedError, match="cannot change contexts"):
        env.change_contexts(torch.ones(2, dtype=torch.bool))
