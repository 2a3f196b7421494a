"""The adaptation module's pieces: the per-world history, the input standardisation, the
masking of empty slots, and that it can learn a context that shows in the transitions."""

from __future__ import annotations

import torch

from hyperrl.adaptation import AdaptationModule, TransitionHistory, transition


def test_history_keeps_the_last_k_oldest_first_and_clears_finished_worlds():
    history = TransitionHistory(num_envs=2, length=3, dim=1, device="cpu")
    for value in (1.0, 2.0, 3.0, 4.0):
        history.push(torch.tensor([[value], [10 * value]]))
    assert history.transitions[:, :, 0].tolist() == [[2.0, 3.0, 4.0], [20.0, 30.0, 40.0]]
    assert history.valid.all()
    history.clear(torch.tensor([True, False]))
    history.push(torch.tensor([[5.0], [50.0]]))
    assert history.transitions[0, :, 0].tolist() == [0.0, 0.0, 5.0]
    assert history.valid[0].tolist() == [False, False, True]
    assert history.transitions[1, :, 0].tolist() == [30.0, 40.0, 50.0]


def test_transition_layout():
    obs, next_obs = torch.ones(2, 3), 2 * torch.ones(2, 3)
    out = transition(obs, torch.zeros(2, 1), torch.tensor([5.0, 6.0]), next_obs)
    assert out.shape == (2, 8)
    assert out[1].tolist() == [1, 1, 1, 0, 6, 2, 2, 2]


def test_statistics_in_two_batches_equal_those_of_one():
    data = torch.randn(1000, 4) * torch.tensor([1.0, 5.0, 0.1, 2.0]) + 3.0
    split = AdaptationModule(4, 2, history=2)
    split.update_statistics(data[:300])
    split.update_statistics(data[300:])
    torch.testing.assert_close(split.mean, data.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(split.var, data.var(0, unbiased=False), atol=1e-3, rtol=1e-3)
    assert float(split.count) == 1000


def test_empty_slots_do_not_reach_the_estimate():
    module = AdaptationModule(3, 2, history=4, hidden=(16,))
    module.update_statistics(torch.randn(50, 3))
    history = torch.randn(5, 4, 3)
    valid = torch.tensor([[False, False, True, True]] * 5)
    changed = history.clone()
    changed[:, :2] = 100.0  # garbage where there is no transition
    torch.testing.assert_close(module(history, valid), module(changed, valid))
    assert not torch.allclose(module(history, valid), module(history, torch.ones_like(valid)))


def test_it_learns_a_context_hidden_in_the_transitions():
    """Transitions whose third entry is the context times noise: the estimate must get the
    context far better than its mean does (a broken module, or one blind to its input, can't)."""
    torch.manual_seed(0)
    module = AdaptationModule(3, 1, history=8, hidden=(64,))
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)

    def batch(n: int = 512):
        context = torch.rand(n, 1) * 2 - 1
        noise = torch.randn(n, 8, 3)
        history = noise.clone()
        history[:, :, 2] = context * (1 + 0.3 * noise[:, :, 2])
        return history, torch.ones(n, 8, dtype=torch.bool), context

    history, valid, _ = batch(4096)
    module.update_statistics(history[valid])
    for _ in range(300):
        history, valid, context = batch()
        loss = torch.nn.functional.mse_loss(module(history, valid), context)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    history, valid, context = batch(2048)
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(module(history, valid), context)
    assert mse < 0.05 * context.var()
