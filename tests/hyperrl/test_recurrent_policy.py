"""The recurrent policy: its unrolled update replays what it did step by step, it keeps a memory
(of observations and actions) and never reads the context, and SB3's predict carries its state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hyperrl.policies.recurrent import Memory, RecurrentActorCriticPolicy

OBS_SPACE = spaces.Dict(
    {
        "context": spaces.Box(-1.0, 1.0, (2,), np.float32),
        "observation": spaces.Box(-np.inf, np.inf, (3,), np.float32),
    }
)
ACTION_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)


def _policy(**kwargs) -> RecurrentActorCriticPolicy:
    torch.manual_seed(0)
    return RecurrentActorCriticPolicy(OBS_SPACE, ACTION_SPACE, lambda _: 3e-4, **kwargs)


def _obs(n: int) -> dict[str, torch.Tensor]:
    return {"context": torch.rand(n, 2) * 2 - 1, "observation": torch.randn(n, 3)}


def _world_major(x: torch.Tensor) -> torch.Tensor:
    """``(T, n, ...)`` -> ``(n * T, ...)``."""
    return x.transpose(0, 1).reshape(-1, *x.shape[2:])


def test_unrolling_a_rollout_gives_what_stepping_gave():
    policy = _policy(memory_size=16)
    n, steps = 4, 7
    observations = [_obs(n) for _ in range(steps)]
    dones = torch.zeros(steps, n, dtype=torch.bool)
    dones[2, 1] = dones[4, 3] = dones[5, 1] = True  # episodes end inside the rollout
    # the rollout starts mid-episode: a memory that is not the initial one
    start = Memory(torch.randn(n, 16), torch.rand(n, 2) * 2 - 1)
    memory, taken, values, log_probs = start, [], [], []
    with torch.no_grad():
        for t in range(steps):
            actions, value, log_prob, memory = policy.step(observations[t], memory)
            taken.append(actions)
            values.append(value.flatten())
            log_probs.append(log_prob)
            memory = policy.forget(memory, dones[t])
        obs_seq = {k: _world_major(torch.stack([o[k] for o in observations])) for k in OBS_SPACE}
        starts = torch.cat([torch.zeros(1, n, dtype=torch.bool), dones[:-1]])
        actions = _world_major(torch.stack(taken))
        replay_values, replay_log_prob, entropy = policy.evaluate_sequences(
            obs_seq, actions, start, _world_major(starts)
        )
    # samples beyond the bounds, which the memory keeps clipped, are among them
    assert (actions.abs() > 1).any()
    assert torch.allclose(replay_values.flatten(), _world_major(torch.stack(values)), atol=1e-5)
    assert torch.allclose(replay_log_prob, _world_major(torch.stack(log_probs)), atol=1e-5)
    assert entropy.shape == (n * steps,)


def test_an_unroll_that_ignored_the_episode_starts_would_differ():
    policy = _policy(memory_size=8)
    n, steps = 2, 4
    obs = {k: _world_major(torch.stack([_obs(n)[k] for _ in range(steps)])) for k in OBS_SPACE}
    actions = torch.rand(n * steps, 2)
    start = Memory(torch.randn(n, 8), torch.rand(n, 2))
    none = torch.zeros(n * steps)
    one = none.clone()
    one[2] = 1.0  # world 0's third step begins an episode
    with torch.no_grad():
        a = policy.evaluate_sequences(obs, actions, start, none)[0].flatten()
        b = policy.evaluate_sequences(obs, actions, start, one)[0].flatten()
    assert torch.allclose(a[:2], b[:2]) and torch.allclose(a[4:], b[4:])
    assert not torch.allclose(a[2:4], b[2:4])


def test_it_reads_its_memory_and_never_the_context():
    policy = _policy(memory_size=16)
    obs = _obs(5)
    memory = Memory(torch.randn(5, 16), torch.rand(5, 2) * 2 - 1)
    with torch.no_grad():
        base = policy.step(obs, memory, deterministic=True)[0]
        other_context = policy.step({**obs, "context": -obs["context"]}, memory, True)[0]
        other_hidden = policy.step(obs, Memory(-memory.hidden, memory.action), True)[0]
        other_action = policy.step(obs, Memory(memory.hidden, -memory.action), True)[0]
    assert torch.equal(base, other_context)
    assert not torch.allclose(base, other_hidden)
    assert not torch.allclose(base, other_action)


def test_predict_carries_the_state_and_episode_start_resets_it():
    policy = _policy(memory_size=8)
    first, second = (
        {k: v.numpy() for k, v in _obs(2).items()} for _ in range(2)
    )  # two vectorised envs
    _, state = policy.predict(first, deterministic=True)
    assert [s.shape for s in state] == [(2, 8), (2, 2)]
    going_on, _ = policy.predict(second, state, np.array([False, False]), deterministic=True)
    restarted, _ = policy.predict(second, state, np.array([False, True]), deterministic=True)
    fresh, _ = policy.predict(second, None, deterministic=True)
    assert np.allclose(restarted[0], going_on[0]) and np.allclose(restarted[1], fresh[1])
    assert not np.allclose(going_on[1], fresh[1])
    single, single_state = policy.predict({k: v[0] for k, v in first.items()}, deterministic=True)
    assert single.shape == (2,) and single_state[0].shape == (1, 8)
    assert np.all(np.abs(single) <= 1.0)


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="Box actions"):
        RecurrentActorCriticPolicy(OBS_SPACE, spaces.Discrete(3), lambda _: 3e-4)
    with pytest.raises(ValueError, match="memory_size"):
        _policy(memory_size=0)
    with pytest.raises(TypeError, match="step"):
        _policy()(_obs(1))
