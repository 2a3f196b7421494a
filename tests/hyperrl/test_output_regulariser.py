"""The output regulariser of continual learning: its gradient reaches only the generators, it
pulls their outputs for remembered contexts back, and it refuses what it cannot keep."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hyperrl import HyperActorCriticPolicy
from hyperrl.continual import OutputRegulariser

OBS_SPACE = spaces.Dict(
    {
        "context": spaces.Box(-5.0, 5.0, (2,), np.float32),
        "observation": spaces.Box(-np.inf, np.inf, (3,), np.float32),
    }
)


def _policy(conditioning: str = "hyper") -> HyperActorCriticPolicy:
    torch.manual_seed(0)
    return HyperActorCriticPolicy(
        OBS_SPACE, spaces.Box(-1, 1, (2,), np.float32), lambda _: 1e-3, conditioning=conditioning
    )


def test_its_gradient_reaches_only_the_generators():
    policy = _policy()
    regulariser = OutputRegulariser(policy, beta=1.0)
    regulariser.remember(torch.rand(8, 2))
    with torch.no_grad():
        for head in regulariser.heads:
            for p in head.generator.parameters():
                p.add_(0.01 * torch.randn_like(p))
    regulariser.penalty().backward()
    reached = {n for n, p in policy.named_parameters() if p.grad is not None and p.grad.any()}
    assert reached and all(".generator." in n for n in reached), reached
    assert any(n.startswith("action_net") for n in reached)
    assert any(n.startswith("value_net") for n in reached)


def test_it_pulls_the_remembered_outputs_back():
    policy = _policy()
    regulariser = OutputRegulariser(policy, beta=1.0)
    assert float(regulariser.penalty().detach()) == 0.0  # nothing remembered yet
    contexts = torch.rand(16, 2) * 2 - 1
    regulariser.remember(contexts)
    assert float(regulariser.penalty().detach()) == 0.0 and regulariser.drift() == [0.0]
    generators = [p for h in regulariser.heads for p in h.generator.parameters()]
    with torch.no_grad():
        for p in generators:
            p.add_(0.05 * torch.randn_like(p))
    moved, drift = float(regulariser.penalty().detach()), regulariser.drift()[0]
    assert moved > 0 and drift > 0.01
    optimizer = torch.optim.Adam(generators, lr=1e-3)
    for _ in range(200):
        optimizer.zero_grad()
        regulariser.penalty().backward()
        optimizer.step()
    assert float(regulariser.penalty().detach()) < 0.05 * moved
    assert regulariser.drift()[0] < 0.3 * drift


def test_beta_zero_costs_nothing_and_the_state_round_trips():
    policy = _policy()
    free = OutputRegulariser(policy, beta=0.0)
    free.remember(torch.rand(4, 2))
    assert float(free.penalty().detach()) == 0.0
    kept = OutputRegulariser(_policy(), beta=0.5)
    kept.load_state_dict(free.state_dict())
    assert kept.beta == 0.0 and torch.equal(kept.anchors[0][0], free.anchors[0][0])


def test_what_it_cannot_keep_is_refused():
    with pytest.raises(ValueError, match="--policy hyper or lowrank_hyper"):
        OutputRegulariser(_policy("concat"), beta=1.0)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        OutputRegulariser(_policy(), beta=-1.0)
    other = OutputRegulariser(_policy(), beta=1.0)
    small = HyperActorCriticPolicy(
        OBS_SPACE, spaces.Box(-1, 1, (2,), np.float32), lambda _: 1e-3, head_arch=(8,)
    )
    mine = OutputRegulariser(small, beta=1.0)
    mine.remember(torch.rand(2, 2))
    with pytest.raises(ValueError, match="come from another policy"):
        other.load_state_dict(mine.state_dict())
