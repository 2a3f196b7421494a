"""Contexts that change mid-episode (``context_change`` reset option of the gymnasium envs,
``change_contexts`` of the batched ones): the new context takes effect from the next step, the
state carries over untouched, and backends that cannot do it say so."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs


def _rollout(env, options, steps, seed=0):
    obs, _ = env.reset(seed=seed, options=options)
    rng = np.random.default_rng(1)
    out = []
    for _ in range(steps):
        obs, reward, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        out.append((obs["observation"].copy(), reward, obs["context"].copy(), info["context"]))
    return out


def test_the_pendulum_changes_its_context_after_the_given_step():
    env = gym.make("hyperrl/ContextualPendulum-v0")
    change = {"at": 3, "context": {"gravity": 14.0}}
    changed = _rollout(env, {"context": {"gravity": 8.0}, "context_change": change}, 6)
    assert env.unwrapped.g == 14.0
    plain = _rollout(env, {"context": {"gravity": 8.0}}, 6)
    # step 3 still ran in the old context; its observation shows the new one
    assert [c[3]["gravity"] for c in changed] == [8.0, 8.0, 8.0, 14.0, 14.0, 14.0]
    assert not np.allclose(changed[2][2], changed[1][2])
    for (o1, r1, _, _), (o2, r2, _, _) in zip(changed[:3], plain[:3], strict=True):
        np.testing.assert_array_equal(o1, o2)  # the same until the change
        assert r1 == r2
    assert not np.allclose(changed[4][0], plain[4][0])  # heavier gravity, another swing
    again = _rollout(env, {"context": {"gravity": 8.0}}, 4)  # the next episode has no change
    assert [c[3]["gravity"] for c in again] == [8.0] * 4


def test_a_locomotion_state_survives_a_change_to_the_same_context():
    """``mj_setConst`` works from qpos0 in the env's data: the running state must be kept."""
    env = gym.make("hyperrl/ContextualHalfCheetah-v0")
    pinned = {"mass_scale": 1.3}
    same = _rollout(env, {"context": pinned, "context_change": {"at": 5, "context": pinned}}, 12)
    plain = _rollout(env, {"context": pinned}, 12)
    for (o1, r1, _, _), (o2, r2, _, _) in zip(same, plain, strict=True):
        np.testing.assert_allclose(o1, o2, atol=1e-9)
        assert r1 == pytest.approx(r2, abs=1e-9)
    heavier = {"at": 5, "context": {"mass_scale": 2.0}}
    changed = _rollout(env, {"context": pinned, "context_change": heavier}, 12)
    np.testing.assert_allclose(changed[4][0], plain[4][0], atol=1e-9)
    assert not np.allclose(changed[11][0], plain[11][0])


def test_a_task_change_rewards_each_step_against_its_own_target():
    env = gym.make("hyperrl/HalfCheetahVel-v0")
    change = {"at": 3, "context": {"target_velocity": 3.0}}
    changed = _rollout(env, {"context": {"target_velocity": 1.0}, "context_change": change}, 5)
    plain = _rollout(env, {"context": {"target_velocity": 1.0}}, 5)
    for t in range(3):  # the first three steps are scored against target 1
        assert changed[t][1] == pytest.approx(plain[t][1])
    assert changed[3][1] != pytest.approx(plain[3][1])


def test_bad_changes_are_refused():
    env = gym.make("hyperrl/ContextualPendulum-v0")
    for change, message in [
        ({"at": 0}, "positive step count"),
        ({"when": 3}, "context_change takes"),
        ({"at": 3, "context": {"gravity": 99.0}}, "outside its allowed range"),
    ]:
        with pytest.raises(ValueError, match=message):
            env.reset(options={"context_change": change})


@pytest.mark.parametrize("env_id", ["hyperrl/TorchPendulum-v0", "hyperrl/BatchedHalfCheetah-v0"])
def test_batched_worlds_change_contexts_and_keep_their_states(env_id):
    def run(change: str | None, steps: int = 8):
        env = envs.make_batched(env_id, 4, "train", "cpu", seed=0)
        env.reset(seed=0)
        gen = torch.Generator().manual_seed(1)
        out = []
        for t in range(steps):
            if t == 3 and change is not None:
                mask = torch.tensor([True, False, True, False])
                new = env.contexts[mask].clone() if change == "same" else None
                obs = env.change_contexts(mask, new)
                assert torch.equal(obs["context"], env.scaled_contexts)
            actions = torch.rand(4, *env.action_space.shape, generator=gen) * 2 - 1
            obs, reward, *_ = env.step(actions)
            out.append((obs["observation"].clone(), env.contexts.clone()))
        return out

    plain, same, drawn = run(None), run("same"), run("drawn")
    for (o1, _), (o2, _) in zip(plain, same, strict=True):
        torch.testing.assert_close(o1, o2, atol=1e-6, rtol=0)
    assert torch.equal(drawn[-1][1][[1, 3]], plain[-1][1][[1, 3]])  # unmasked worlds keep theirs
    assert not torch.equal(drawn[-1][1][[0, 2]], plain[-1][1][[0, 2]])
    torch.testing.assert_close(drawn[2][0], plain[2][0])  # same until the change
    assert not torch.allclose(drawn[-1][0][[0, 2]], plain[-1][0][[0, 2]])
    torch.testing.assert_close(drawn[-1][0][[1, 3]], plain[-1][0][[1, 3]], atol=1e-6, rtol=0)


def test_backends_that_cannot_change_contexts_say_so():
    fetch = gym.make("hyperrl/ContextualFetchPush-v0")
    with pytest.raises(ValueError, match="cannot change its context mid-episode"):
        fetch.reset(options={"context_change": {"at": 3}})
    warp = pytest.importorskip("mujoco_warp")
    del warp
    env = envs.make_batched("hyperrl/WarpHalfCheetah-v0", 2, "train", "cpu", seed=0)
    env.reset(seed=0)
    with pytest.raises(NotImplementedError, match="cannot change contexts mid-episode"):
        env.change_contexts(torch.ones(2, dtype=torch.bool))
