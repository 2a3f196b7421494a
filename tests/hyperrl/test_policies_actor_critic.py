import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from toy_envs import ContextualTarget, obs_with_context

from hyperrl import ConcatActorCriticPolicy, FiLMActorCriticPolicy, HyperActorCriticPolicy
from hyperrl.conditioning import CONDITIONINGS
from hyperrl.generators import GENERATORS, ContextEmbedding


def obs_batch(policy, n=6, seed=0):
    rng = np.random.default_rng(seed)
    space = policy.observation_space
    obs = {k: rng.uniform(-1, 1, (n, *space[k].shape)).astype(np.float32) for k in space.spaces}
    return policy.obs_to_tensor(obs)[0]


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize(
    "options",
    [{"conditioning": c} for c in CONDITIONINGS if c != "hyper"]
    + [{"conditioning": "hyper", "generator": g} for g in GENERATORS]
    + [{"generator_input": "observation"}, {"generator_input": "both", "init": "hyperfan_in"}],
)
def test_sb3_contract(discrete, options):
    model = PPO(HyperActorCriticPolicy, ContextualTarget(discrete=discrete), policy_kwargs=options)
    policy = model.policy
    obs = obs_batch(policy)
    with torch.no_grad():
        actions, values, log_prob = policy(obs)
        assert values.shape == (6, 1) and log_prob.shape == (6,)
        assert actions.shape == ((6,) if discrete else (6, 1))
        v2, log_prob2, entropy = policy.evaluate_actions(obs, actions)
        torch.testing.assert_close(v2, values)
        torch.testing.assert_close(log_prob2, log_prob)
        assert entropy.shape == (6,)
        torch.testing.assert_close(policy.predict_values(obs), values)
        torch.testing.assert_close(policy.get_distribution(obs).log_prob(actions), log_prob)
        det1, det2 = policy._predict(obs, deterministic=True), policy._predict(obs, True)
        assert torch.equal(det1, det2)


def test_ortho_init_gives_small_initial_actions_like_sb3():
    """SB3 initialises the action layer with gain 0.01; the generated head must too."""
    policy = PPO(HyperActorCriticPolicy, ContextualTarget()).policy
    with torch.no_grad():
        mean = policy.get_distribution(obs_batch(policy, 256)).distribution.mean
    assert mean.abs().max() < 0.05
    no_ortho = PPO(HyperActorCriticPolicy, ContextualTarget(), policy_kwargs={"ortho_init": False})
    with torch.no_grad():
        mean = no_ortho.policy.get_distribution(obs_batch(no_ortho.policy, 256)).distribution.mean
    assert mean.abs().max() > 0.05


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_gradients_reach_every_generator_parameter(algo):
    model = algo(HyperActorCriticPolicy, ContextualTarget(), n_steps=32, seed=0)
    before = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
    model.learn(96)
    stale = [n for n, p in model.policy.named_parameters() if torch.equal(p, before[n])]
    assert not stale, f"never updated: {stale}"


def test_concat_and_film_classes_select_their_rung():
    env = ContextualTarget()
    assert type(PPO(ConcatActorCriticPolicy, env).policy.action_net.head).__name__ == "ConcatHead"
    assert type(PPO(FiLMActorCriticPolicy, env).policy.action_net.head).__name__ == "FiLMHead"


def test_errors_name_the_problem():
    env = ContextualTarget()
    with pytest.raises(ValueError, match=r"context_keys \['task'\] not in the observation space"):
        PPO(HyperActorCriticPolicy, env, policy_kwargs={"context_keys": ("task",)})
    with pytest.raises(ValueError, match="unknown conditioning 'gated'"):
        PPO(HyperActorCriticPolicy, env, policy_kwargs={"conditioning": "gated"})
    with pytest.raises(ValueError, match="not a Dict"):
        PPO(HyperActorCriticPolicy, "Pendulum-v1")
    plain = PPO(
        HyperActorCriticPolicy,
        "Pendulum-v1",
        policy_kwargs={"context_keys": (), "conditioning": "none"},
    )
    assert plain.policy.action_net.head.in_dim == 64
    with pytest.raises(ValueError, match=r"a sequence of key names such as \('context',\)"):
        PPO(HyperActorCriticPolicy, env, policy_kwargs={"context_keys": "context"})
    model = PPO(HyperActorCriticPolicy, env, n_steps=32)
    obs = obs_with_context(0.3, 4)
    with pytest.raises(ValueError, match=r"the observation lacks \['context'\]"):
        model.policy.extract_features(
            {"observation": torch.as_tensor(obs["observation"])}, model.policy.features_extractor
        )
    with pytest.raises(ValueError, match="different batch sizes"):
        model.policy.extract_features(
            {k: torch.as_tensor(v[: 3 if k == "context" else 4]) for k, v in obs.items()},
            model.policy.features_extractor,
        )


def test_save_then_load_in_a_fresh_process_gives_identical_actions(tmp_path):
    model = PPO(
        HyperActorCriticPolicy,
        ContextualTarget(),
        n_steps=32,
        policy_kwargs={"generator": "chunked", "init": "hyperfan_in", "head_arch": [32]},
        seed=0,
    )
    model.learn(64)
    model.save(tmp_path / "model.zip")
    obs = {k: v.tolist() for k, v in obs_with_context(0.3, 4).items()}
    expected = model.predict(obs_with_context(0.3, 4), deterministic=True)[0]
    code = (
        "import json, sys, numpy as np; from stable_baselines3 import PPO;"
        f"m = PPO.load({str(tmp_path / 'model.zip')!r}, device='cpu');"
        "obs = {k: np.array(v, dtype=np.float32) for k, v in json.loads(sys.argv[1]).items()};"
        "print(json.dumps(m.predict(obs, deterministic=True)[0].tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(obs)], capture_output=True, text=True, check=True
    )
    np.testing.assert_array_equal(np.array(json.loads(out.stdout)), expected)


@pytest.mark.parametrize("conditioning", ["hyper", "film"])
def test_linear_context_is_the_default_and_the_old_embedding_stays_selectable(
    tmp_path, conditioning
):
    def embeddings(model):
        return [m for m in model.policy.modules() if isinstance(m, ContextEmbedding)]

    model = PPO(
        HyperActorCriticPolicy,
        ContextualTarget(),
        n_steps=32,
        seed=0,
        policy_kwargs={"conditioning": conditioning},
    )
    assert embeddings(model) and all(e.linear for e in embeddings(model))
    old = PPO(
        HyperActorCriticPolicy,
        ContextualTarget(),
        n_steps=32,
        seed=0,
        policy_kwargs={"conditioning": conditioning, "linear_context": False},
    )
    old.save(tmp_path / "old.zip")
    loaded = PPO.load(tmp_path / "old.zip", device="cpu")
    assert embeddings(loaded) and not any(e.linear for e in embeddings(loaded))
    with pytest.raises(ValueError, match="linear_context must be true or false"):
        PPO(HyperActorCriticPolicy, ContextualTarget(), policy_kwargs={"linear_context": "no"})


def test_context_response_reads_how_far_generated_weights_follow_the_context():
    from hyperrl.policies.diagnostics import context_response

    model = PPO(HyperActorCriticPolicy, ContextualTarget(), n_steps=32, seed=0)
    with torch.no_grad():  # only the linear context term moves the head: it follows exactly
        for head in model.policy.action_net.head.generator.heads:
            head.weight.zero_()
            head.weight[:, -1:].normal_()
    ratios = context_response(model.policy)
    assert set(ratios) == {"action_net", "value_net"}
    np.testing.assert_allclose(ratios["action_net"], [[1.0, 2.0, 3.0, 4.0]], rtol=1e-5)
    assert ratios["action_net"].shape == (1, 4)
    concat = PPO(
        HyperActorCriticPolicy, ContextualTarget(), policy_kwargs={"conditioning": "concat"}
    )
    assert context_response(concat.policy) == {}  # the context is an input there, not a parameter


def _train(conditioning: str, discrete: bool, steps: int):
    env = make_vec_env(ContextualTarget, n_envs=4, seed=0, env_kwargs={"discrete": discrete})
    model = PPO(
        HyperActorCriticPolicy,
        env,
        n_steps=64,
        batch_size=64,
        learning_rate=3e-3,
        seed=0,
        policy_kwargs={"conditioning": conditioning},
    )
    return model.learn(steps)


@pytest.mark.parametrize("discrete", [False, True])
def test_ppo_learns_a_context_dependent_action(discrete):
    model = _train("hyper", discrete, 6000)
    eval_env = ContextualTarget(discrete=discrete)
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=40)
    per_step = mean_return / eval_env.episode_length
    # the best context-blind policy gets -E[c^2] = -0.21 (Box) or 0.5 (Discrete) per step
    assert per_step > (0.9 if discrete else -0.03), per_step
    low = model.predict(obs_with_context(-0.6), deterministic=True)[0]
    high = model.predict(obs_with_context(0.6), deterministic=True)[0]
    if discrete:
        assert (int(low[0]), int(high[0])) == (0, 1)
    else:
        assert low[0, 0] < -0.3 and high[0, 0] > 0.3


def test_a_context_blind_policy_cannot_learn_it():
    """The same budget without the context stays at the context-blind optimum: the threshold
    above is one that only a policy reading the context clears."""
    model = _train("none", False, 6000)
    mean_return, _ = evaluate_policy(model, ContextualTarget(), n_eval_episodes=40)
    assert mean_return / 4 < -0.1


def test_spaces_of_the_toy_env_are_what_the_tests_assume():
    env = ContextualTarget()
    assert isinstance(env.observation_space, spaces.Dict)
    assert set(env.observation_space.spaces) == {"observation", "context"}


def test_vecnormalize_keeps_the_context_raw():
    from stable_baselines3.common.vec_env import VecNormalize

    from hyperrl.policies import norm_obs_keys

    venv = make_vec_env(ContextualTarget, n_envs=2, seed=0)
    keys = norm_obs_keys(venv.observation_space)
    assert keys == ["observation"]
    env = VecNormalize(venv, norm_obs_keys=keys)
    model = PPO(HyperActorCriticPolicy, env, n_steps=32, batch_size=32, seed=0)
    model.learn(64)
    assert set(env.obs_rms) == {"observation"}
    obs = env.reset()
    contexts = [venv.envs[i].unwrapped.c[0] for i in range(2)]
    np.testing.assert_array_equal(obs["context"][:, 0], contexts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ppo_trains_on_cuda():
    model = PPO(
        HyperActorCriticPolicy, ContextualTarget(), n_steps=32, batch_size=16, device="cuda"
    )
    model.learn(64)
    assert next(model.policy.parameters()).is_cuda
    assert model.predict(obs_with_context(0.3), deterministic=True)[0].shape == (1, 1)


def test_generated_weight_diagnostics_see_context_dependence():
    from hyperrl.policies.diagnostics import generated_weight_stats

    obs = obs_with_context(0.0, 4)
    obs["context"] = np.linspace(-0.8, 0.8, 4, dtype=np.float32)[:, None]
    bias_init = PPO(HyperActorCriticPolicy, ContextualTarget()).policy
    stats = generated_weight_stats(bias_init, obs)
    assert stats["action_net/weight_norm"] > 0
    assert stats["action_net/weight_spread"] == 0  # Bias-HyperInit: one head for every context
    fan = PPO(HyperActorCriticPolicy, ContextualTarget(), policy_kwargs={"init": "hyperfan_in"})
    assert generated_weight_stats(fan.policy, obs)["action_net/weight_spread"] > 0
