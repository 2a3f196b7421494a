"""Exporting one context's policy as plain layers: the same outputs as the conditioned head or
policy for that context, for every rung of the ladder and every algorithm family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO, SAC, TD3
from torch import nn
from toy_envs import ContextualTarget, obs_with_context

from hyperrl import HyperActorCriticPolicy, HyperSACPolicy, HyperTD3Policy
from hyperrl.conditioning import make_head
from hyperrl.export import export_actor, plain_layers
from hyperrl.generators import GENERATORS

LADDER = [("hyper", {"generator": g}) for g in GENERATORS] + [
    ("lowrank_hyper", {}),
    ("film", {}),
    ("concat", {}),
    ("none", {}),
]


def _perturbed(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters, so that every path from the context to the output carries weight
    (at init some start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


@pytest.mark.parametrize("hidden", [(16, 8), ()], ids=["hidden", "single_layer"])
@pytest.mark.parametrize(
    ("conditioning", "kwargs"), LADDER, ids=[kw.get("generator", c) for c, kw in LADDER]
)
def test_plain_layers_compute_the_head_for_their_context(conditioning, kwargs, hidden):
    if conditioning == "hyper" and kwargs["generator"] == "chunked" and not hidden:
        kwargs = kwargs | {"generator_kwargs": {"chunk_size": 8}}
    head = _perturbed(make_head(conditioning, 6, 3, 4, hidden, nn.Tanh, **kwargs))
    x = torch.randn(32, 6)
    for context in (torch.randn(4), 3 * torch.randn(4)):
        expected = head(x, context.expand(32, 4))
        h = x
        layers = plain_layers(head, context)
        assert len(layers) == len(hidden) + 1 and all(type(lin) is nn.Linear for lin in layers)
        for i, lin in enumerate(layers):
            h = lin(h)
            if i < len(layers) - 1:
                h = torch.tanh(h)
        torch.testing.assert_close(h, expected, rtol=1e-4, atol=1e-5)
        other = plain_layers(head, context + 1)[0].weight
        assert conditioning in ("concat", "none") or not torch.allclose(other, layers[0].weight)


def test_a_head_generated_from_its_input_has_nothing_to_export():
    head = make_head("hyper", 6, 3, 4, (8,), nn.Tanh, generator_input="input")
    with pytest.raises(ValueError, match="generated from its input"):
        plain_layers(head, torch.zeros(4))


@pytest.mark.parametrize(
    ("algo", "policy", "discrete"),
    [
        (PPO, HyperActorCriticPolicy, False),
        (PPO, HyperActorCriticPolicy, True),
        (SAC, HyperSACPolicy, False),
        (TD3, HyperTD3Policy, False),
    ],
    ids=["ppo_box", "ppo_discrete", "sac", "td3"],
)
def test_the_exported_actor_acts_as_the_policy_does_in_its_context(algo, policy, discrete):
    model = algo(policy, ContextualTarget(discrete=discrete), seed=0, device="cpu")
    _perturbed(model.policy, seed=1)
    mean, std = np.array([0.1, -0.2], np.float32), np.array([0.5, 2.0], np.float32)
    for c in (-0.6, 0.3, 1.7):  # 1.7: beyond the training range
        actor = export_actor(model.policy, np.array([c]), mean, std, clip_obs=5.0)
        obs = obs_with_context(c, 64)
        obs["observation"] = np.random.default_rng(0).normal(0, 2, (64, 2)).astype(np.float32)
        normalised = dict(obs, observation=np.clip((obs["observation"] - mean) / std, -5, 5))
        expected, _ = model.predict(normalised, deterministic=True)
        got = actor(torch.as_tensor(obs["observation"])).numpy()
        np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=1e-5, atol=1e-5)
        assert sum(p.numel() for p in actor.parameters()) < sum(
            p.numel() for p in model.policy.parameters()
        )


def test_export_refuses_a_context_of_the_wrong_width_and_a_foreign_policy():
    model = PPO(HyperActorCriticPolicy, ContextualTarget(), seed=0, device="cpu")
    with pytest.raises(ValueError, match="reads a context of 1 values"):
        export_actor(model.policy, np.zeros(3))
    plain = PPO("MultiInputPolicy", ContextualTarget(), seed=0, device="cpu")
    with pytest.raises(ValueError, match="not one of hyperrl's policies"):
        export_actor(plain.policy, np.zeros(1))
