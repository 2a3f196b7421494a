import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC, TD3, HerReplayBuffer
from stable_baselines3.common.evaluation import evaluate_policy
from toy_envs import ContextualTarget, GoalTarget, obs_with_context

from hyperrl import (
    ConcatSACPolicy,
    ConcatTD3Policy,
    FiLMSACPolicy,
    FiLMTD3Policy,
    HyperSACPolicy,
    HyperTD3Policy,
)
from hyperrl.conditioning import CONDITIONINGS, HyperHead

SMALL = {"net_arch": [32, 32]}


def small_model(algo, policy_class, options=None, **kwargs):
    """A model with small nets that starts learning after 16 steps."""
    # SB3 writes into the policy_kwargs it is given: always pass a fresh dict
    return algo(
        policy_class,
        ContextualTarget(),
        learning_starts=16,
        batch_size=16,
        policy_kwargs=dict(SMALL) | (options or {}),
        **kwargs,
    )


def batch(policy, n=5):
    obs = obs_with_context(0.0, n)
    obs["context"] = np.linspace(-0.8, 0.8, n, dtype=np.float32)[:, None]
    return policy.obs_to_tensor(obs)[0]


@pytest.mark.parametrize("algo,policy_class", [(SAC, HyperSACPolicy), (TD3, HyperTD3Policy)])
@pytest.mark.parametrize(
    "options",
    [{"conditioning": c} for c in CONDITIONINGS]
    + [
        {"head_arch": [16], "generator": "chunked"},
        {"head_arch": [16], "generator": "lowrank", "init": "hyperfan_in"},
        {"generator_input": "observation"},
        {"generator_input": "both", "head_arch": [16]},
    ],
)
def test_sb3_contract(algo, policy_class, options):
    model = small_model(algo, policy_class, options, seed=0)
    model.learn(40)  # a few gradient steps through every loss, target updates included
    policy = model.policy
    obs = batch(policy)
    actions = torch.rand(5, 1) * 2 - 1
    with torch.no_grad():
        qs = policy.critic(obs, actions)
        assert len(qs) == 2 and all(q.shape == (5, 1) for q in qs)
        torch.testing.assert_close(policy.critic.q1_forward(obs, actions), qs[0])
        assert policy.critic_target(obs, actions)[0].shape == (5, 1)
        det = policy._predict(obs, deterministic=True)
        assert det.shape == (5, 1) and det.abs().max() <= 1
        assert torch.equal(det, policy._predict(obs, deterministic=True))
        if algo is SAC:
            sampled, log_prob = policy.actor.action_log_prob(obs)
            assert sampled.shape == (5, 1) and log_prob.shape == (5,)
            assert torch.isfinite(log_prob).all()
    assert policy.critic.state_dict().keys() == policy.critic_target.state_dict().keys()
    # SB3's polyak update writes through .data, invisible to the reuse check: targets never reuse
    heads = [m for m in policy.modules() if isinstance(m, HyperHead)]
    reusing = [m for m in heads if m.reuse_heads]
    assert all(m in list(policy.actor.modules()) for m in reusing)
    assert bool(reusing) == (options.get("conditioning", "hyper") in ("hyper", "lowrank_hyper"))
    assert {"qf0", "qf1"} <= {n for n, _ in policy.critic.named_children()}


@pytest.mark.parametrize("algo,policy_class", [(SAC, HyperSACPolicy), (TD3, HyperTD3Policy)])
def test_gradients_reach_every_generator_parameter(algo, policy_class):
    extra = {"policy_delay": 1} if algo is TD3 else {}  # update the actor at every step
    model = small_model(algo, policy_class, seed=0, **extra)
    before = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
    model.learn(48)
    stale = [n for n, p in model.policy.named_parameters() if torch.equal(p, before[n])]
    assert not stale, f"never updated: {stale}"
    generator = [n for n in before if "generator" in n]
    assert any(n.startswith("critic_target") for n in generator)  # polyak reaches them too


def test_sde_and_dynamic_critic_shapes():
    model = small_model(SAC, HyperSACPolicy, {"generator_input": "observation"}, use_sde=True)
    model.learn(32)
    q = model.policy.critic.qf0
    # Sarafian et al.: the state generates the weights of a network over the action
    assert q.trunk[0].in_features == 1
    assert q.head.generator.context_dim == 2


def test_concat_and_film_classes_select_their_rung():
    env = ContextualTarget()
    for cls, name in [
        (ConcatSACPolicy, "ConcatHead"),
        (FiLMSACPolicy, "FiLMHead"),
        (ConcatTD3Policy, "ConcatHead"),
        (FiLMTD3Policy, "FiLMHead"),
    ]:
        algo = SAC if "SAC" in cls.__name__ else TD3
        policy = algo(cls, env, policy_kwargs=dict(SMALL)).policy
        assert (
            type(policy.actor.latent_pi.head if algo is SAC else policy.actor.mu[0].head).__name__
            == name
        )
        assert type(policy.critic.qf1.head).__name__ == name


def test_save_then_load_in_a_fresh_process_gives_identical_actions(tmp_path):
    model = small_model(SAC, HyperSACPolicy, {"head_arch": [16], "generator": "shared"}, seed=0)
    model.learn(40)
    model.save(tmp_path / "sac.zip")
    obs = obs_with_context(-0.4, 3)
    expected = model.predict(obs, deterministic=True)[0]
    code = (
        "import json, sys, numpy as np; from stable_baselines3 import SAC;"
        f"m = SAC.load({str(tmp_path / 'sac.zip')!r}, device='cpu');"
        "obs = {k: np.array(v, dtype=np.float32) for k, v in json.loads(sys.argv[1]).items()};"
        "print(json.dumps(m.predict(obs, deterministic=True)[0].tolist()))"
    )
    arg = json.dumps({k: v.tolist() for k, v in obs.items()})
    out = subprocess.run(
        [sys.executable, "-c", code, arg], capture_output=True, text=True, check=True
    )
    np.testing.assert_array_equal(np.array(json.loads(out.stdout)), expected)


@pytest.mark.parametrize("algo,policy_class", [(SAC, HyperSACPolicy), (TD3, HyperTD3Policy)])
def test_off_policy_learns_a_context_dependent_action(algo, policy_class):
    model = algo(
        policy_class,
        ContextualTarget(),
        learning_starts=100,
        learning_rate=3e-3,
        seed=0,
        policy_kwargs={"net_arch": [64, 64]},
    )
    model.learn(1200)
    mean_return, _ = evaluate_policy(model, ContextualTarget(), n_eval_episodes=40, warn=False)
    assert mean_return / 4 > -0.03  # a context-blind policy gets -0.21 per step at best
    low = model.predict(obs_with_context(-0.6), deterministic=True)[0][0, 0]
    high = model.predict(obs_with_context(0.6), deterministic=True)[0][0, 0]
    assert low < -0.3 and high > 0.3


def test_her_with_the_goal_as_descriptor():
    env = GoalTarget()
    model = SAC(
        HyperSACPolicy,
        env,
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future"},
        learning_starts=100,
        learning_rate=3e-3,
        seed=0,
        policy_kwargs={"context_keys": ("desired_goal",), "net_arch": [64, 64]},
    )
    assert model.policy.actor.features_extractor.obs_keys == ["achieved_goal", "observation"]
    model.learn(3000)
    successes = []
    for episode in range(20):
        obs, _ = env.reset(seed=100 + episode)
        done = False
        while not done:
            action = model.predict(obs, deterministic=True)[0]
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        successes.append(info["is_success"])
    assert np.mean(successes) >= 0.8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo,policy_class", [(SAC, HyperSACPolicy), (TD3, HyperTD3Policy)])
def test_trains_on_cuda(algo, policy_class):
    model = small_model(algo, policy_class, device="cuda")
    model.learn(40)
    assert next(model.policy.parameters()).is_cuda
    assert model.predict(obs_with_context(0.3), deterministic=True)[0].shape == (1, 1)


def test_her_on_contextual_fetch_conditions_on_goal_and_physics():
    import gymnasium as gym

    import envs  # noqa: F401  (registers hyperrl/*)

    model = SAC(
        HyperSACPolicy,
        gym.make("hyperrl/ContextualFetchPush-v0"),
        replay_buffer_class=HerReplayBuffer,
        learning_starts=100,
        batch_size=32,
        policy_kwargs=dict(SMALL) | {"context_keys": ("desired_goal", "context")},
    )
    extractor = model.policy.actor.features_extractor
    assert extractor.obs_keys == ["achieved_goal", "observation"]
    assert extractor.context_keys == ["context", "desired_goal"]
    assert extractor.context_dim == 3 + 3
    model.learn(150)


def test_an_off_policy_class_on_discrete_actions_names_the_right_one():
    from stable_baselines3 import PPO

    with pytest.raises(ValueError, match="HyperSACPolicy is for SAC/TD3.*Discrete.*PPO or A2C"):
        PPO(HyperSACPolicy, ContextualTarget(discrete=True))
