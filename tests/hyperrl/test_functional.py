import pytest
import torch

from hyperrl import conditioning, functional
from hyperrl.conditioning import HyperHead
from hyperrl.functional import (
    mlp_contracted,
    mlp_grouped,
    mlp_low_rank,
    mlp_per_sample,
    mlp_shared,
    unique_rows,
)
from hyperrl.generators import GENERATORS, make_generator
from hyperrl.target import TargetSpec

SPEC = TargetSpec((5, 12, 3))


def random_layers(n):
    return SPEC.unflatten(torch.randn(n, SPEC.num_params))


GROUPINGS = [
    [0] * 9,  # one shared context: plain matmul
    [0, 1, 2] * 4,  # balanced, interleaved: padded group-major bmm without padding
    [0] * 4 + [1] * 4 + [2] * 4,  # laid out by env, as a PPO minibatch
    [2, 0, 0, 1, 2, 2, 0, 2, 1],  # uneven: padded
    [0] * 20 + [1, 2, 3],  # very uneven: per-sample gather fallback
    [3, 0, 1, 2, 4, 4],  # mostly one sample per head: padded
    [4, 2, 0, 1, 3],  # one sample per head (a rollout): a permutation, no padding
]


@pytest.mark.parametrize("groups", GROUPINGS)
def test_grouped_equals_per_sample(groups):
    group = torch.tensor(groups)
    layers = random_layers(int(group.max()) + 1)
    x = torch.randn(len(groups), 5)
    expected = mlp_per_sample(x, [(w[group], b[group]) for w, b in layers], torch.relu)
    torch.testing.assert_close(mlp_grouped(x, layers, group, torch.relu), expected)


@pytest.mark.parametrize("groups", GROUPINGS)
def test_low_rank_equals_materialised_per_sample(groups):
    group = torch.tensor(groups)
    n, r = int(group.max()) + 1, 2
    factors = [
        (torch.randn(o, i), torch.randn(o), torch.randn(n, o, r), torch.randn(n, i, r),
         torch.randn(n, o))
        for i, o in [(5, 12), (12, 3)]
    ]  # fmt: skip
    materialised = [(w0 + u @ v.transpose(1, 2), b0 + c) for w0, b0, u, v, c in factors]
    x = torch.randn(len(groups), 5)
    expected = mlp_per_sample(x, [(w[group], b[group]) for w, b in materialised], torch.relu)
    torch.testing.assert_close(mlp_low_rank(x, factors, group, torch.relu), expected)


def test_shared_equals_per_sample():
    (w0, b0), (w1, b1) = random_layers(1)
    x = torch.randn(6, 5)
    per_sample = [(w.expand(6, -1, -1), b.expand(6, -1)) for w, b in [(w0, b0), (w1, b1)]]
    torch.testing.assert_close(
        mlp_shared(x, [(w0[0], b0[0]), (w1[0], b1[0])], torch.tanh),
        mlp_per_sample(x, per_sample, torch.tanh),
    )


def test_unique_rows():
    ctx = torch.tensor([[1.0, 2.0], [0.5, 0.0], [1.0, 2.0], [0.5, 0.0], [3.0, 3.0]])
    unique, group = unique_rows(ctx)
    assert unique.shape == (3, 2)
    assert torch.equal(unique[group], ctx)
    single, g = unique_rows(ctx[:1].expand(4, -1))
    assert single.shape == (1, 2) and torch.equal(g, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("kind", GENERATORS)
# low-rank heads: 1 and 4 contexts materialise W, 10 and 37 apply factored
@pytest.mark.parametrize("num_contexts", [1, 4, 10, 37])
# per_layer and shared heads this small contract (mlp_contracted); with CONTRACT_SMALL at 0 they
# generate and group, but for 37 contexts of 40 samples, too uneven to pad: contract again
@pytest.mark.parametrize("contract_small", [conditioning.CONTRACT_SMALL, 0])
def test_dedup_head_equals_naive_head_outputs_and_gradients(
    kind, num_contexts, contract_small, monkeypatch
):
    monkeypatch.setattr(conditioning, "CONTRACT_SMALL", contract_small)
    torch.manual_seed(3)
    head = HyperHead(5, 3, 2, hidden_sizes=(12,), generator=kind, init="hyperfan_in")
    naive = HyperHead(5, 3, 2, hidden_sizes=(12,), generator=kind, init="hyperfan_in", dedup=False)
    naive.load_state_dict(head.state_dict())
    head, naive = head.double(), naive.double()  # float64: summation order must not matter
    x = torch.randn(40, 5, dtype=torch.float64)
    ctx = torch.randn(num_contexts, 2, dtype=torch.float64)[torch.randint(0, num_contexts, (40,))]
    out, out_naive = head(x, ctx), naive(x, ctx)
    torch.testing.assert_close(out, out_naive)
    out.square().sum().backward()
    out_naive.square().sum().backward()
    for (name, p), q in zip(head.named_parameters(), naive.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=f"gradient of {name} differs")


@pytest.mark.parametrize("kind", ["per_layer", "shared"])
def test_contracted_heads_equal_generated_heads_per_sample(kind):
    torch.manual_seed(0)
    target = TargetSpec((5, 7, 3))
    gen = make_generator(kind, 2, target, init="hyperfan_in").double()
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    unique = torch.randn(4, 2, dtype=torch.float64)
    group = torch.randint(0, 4, (9,))
    contracted = mlp_contracted(x, gen.linear_maps(unique, group), torch.tanh)
    generated = mlp_per_sample(x, target.unflatten(gen(unique[group])), torch.tanh)
    torch.testing.assert_close(contracted, generated)
    grads = torch.autograd.grad(contracted.square().sum(), [x, *gen.parameters()])
    want = torch.autograd.grad(generated.square().sum(), [x, *gen.parameters()])
    for got, expected in zip(grads, want, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kind", ["chunked", "lowrank"])
def test_generators_not_linear_in_an_embedding_do_not_offer_maps(kind):
    gen = make_generator(kind, 2, TargetSpec((5, 7, 3)))
    assert not gen.linear_in_embedding
    with pytest.raises(NotImplementedError, match="not linear"):
        gen.linear_maps(torch.zeros(1, 2))


#: 64 samples: 4 contexts in equal groups; one context per sample; 20 contexts, one of them
#: for 45 samples, too uneven to pad
_GROUPS = {
    "4 even": torch.arange(64) % 4,
    "64": torch.arange(64),
    "20 uneven": torch.cat([torch.zeros(45, dtype=torch.long), torch.arange(1, 20)]),
}


@pytest.mark.parametrize(
    ("hidden", "groups", "grad", "reuse", "contracts"),
    [
        ((8,), "4 even", True, False, True),  # small: the grouping costs more
        ((64,), "4 even", True, False, False),  # a few contexts for many samples: generate
        ((64,), "64", True, False, True),  # a context per sample: contract
        ((64,), "20 uneven", True, False, True),  # too uneven to pad: contract
        ((64,), "64", False, False, True),  # without autograd too (a target network)
        ((8,), "4 even", False, True, False),  # a rollout reusing its heads: the cache
    ],
)
def test_a_head_contracts_where_that_is_cheaper(
    monkeypatch, hidden, groups, grad, reuse, contracts
):
    calls = []
    monkeypatch.setattr(
        conditioning, "mlp_contracted", lambda *a: calls.append(1) or mlp_contracted(*a)
    )
    head = HyperHead(16, 3, 2, hidden_sizes=hidden)
    head.reuse_heads = reuse
    ctx = torch.randn(64, 2)[_GROUPS[groups]]
    with torch.set_grad_enabled(grad):
        head(torch.randn(64, 16), ctx)
    assert bool(calls) == contracts


def test_a_head_told_not_to_contract_generates(monkeypatch):
    calls = []
    monkeypatch.setattr(conditioning, "mlp_contracted", lambda *a: calls.append(1))
    head = HyperHead(16, 3, 2, hidden_sizes=(8,), contract=False)
    head(torch.randn(64, 16), torch.randn(64, 2))
    head.contract = True
    head(torch.randn(64, 16), torch.randn(64, 2))
    assert calls == [1]


def test_dedup_generates_once_per_distinct_context(monkeypatch):
    monkeypatch.setattr(conditioning, "CONTRACT_SMALL", 0)  # this small a head would contract
    head = HyperHead(5, 3, 2, hidden_sizes=(12,))
    seen = []
    head.generator.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    ctx = torch.tensor([[0.0, 1.0], [2.0, 3.0]])[torch.tensor([0, 1, 1, 0, 1, 0, 0, 0])]
    head(torch.randn(8, 5), ctx)
    head(torch.randn(8, 5), ctx[:1].expand(8, -1))
    assert seen == [2, 1]


def test_unique_rows_survives_a_hash_collision(monkeypatch):
    import hyperrl.functional as F

    monkeypatch.setattr(F, "_hash_multipliers", lambda w, d: torch.zeros(w, dtype=torch.int64))
    ctx = torch.tensor([[1.0, 2.0], [0.5, 0.0], [1.0, 2.0]])  # every key collides at 0
    unique, group = F.unique_rows(ctx)
    assert unique.shape == (2, 2) and torch.equal(unique[group], ctx)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int64])
def test_unique_rows_dtypes(dtype):
    ctx = torch.randint(0, 3, (50, 3)).to(dtype)
    unique, group = unique_rows(ctx)
    assert torch.equal(unique[group], ctx)
    assert unique.shape[0] == len({tuple(r) for r in ctx.tolist()})


def test_reused_heads_are_regenerated_when_contexts_or_parameters_change(monkeypatch):
    monkeypatch.setattr(conditioning, "CONTRACT_SMALL", 0)  # this small a head would contract
    layout = functional._padded_layout
    head = HyperHead(5, 3, 2, hidden_sizes=(12,), init="hyperfan_in")
    head.reuse_heads = True
    calls = []
    head.generator.register_forward_hook(lambda m, inp, out: calls.append(1))
    x, ctx = torch.randn(8, 5), torch.randn(2, 2).repeat(4, 1)
    with torch.no_grad():
        first = head(x, ctx)
        again = head(x, ctx)
    assert len(calls) == 1 and torch.equal(first, again)
    x2 = torch.randn(8, 5)
    layouts = []
    monkeypatch.setattr(functional, "_padded_layout", lambda *a: layouts.append(a) or layout(*a))
    with torch.no_grad():
        reused = head(x2, ctx)  # the same contexts with new inputs: the heads are reused...
        assert len(calls) == 1 and not layouts  # ...and so is the samples' layout
        head.reuse_heads = False
        torch.testing.assert_close(reused, head(x2, ctx))  # ...and they were the right ones
        head.reuse_heads = True
    calls.clear()
    with torch.no_grad():
        head(x, ctx + 1.0)  # new contexts: regenerate
    assert len(calls) == 1
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    head(x, ctx).sum().backward()  # with autograd: always generates
    opt.step()
    assert len(calls) == 2
    with torch.no_grad():
        after_step = head(x, ctx)  # parameters changed: regenerate, and the output moved
    assert len(calls) == 3 and not torch.allclose(after_step, first)
    head.load_state_dict({k: v + 1 for k, v in head.state_dict().items()})
    with torch.no_grad():
        head(x, ctx)
    assert len(calls) == 4
    head.train()  # SB3 switches modes around its updates; that drops the cache too
    with torch.no_grad():
        head(x, ctx)
    assert len(calls) == 5
    head.reuse_heads = False
    with torch.no_grad():
        head(x, ctx)
        head(x, ctx)
    assert len(calls) == 7


def _contexts_with_resets(changes_every: list[int], steps: int = 8) -> torch.Tensor:
    """``(W, steps, 2)`` contexts: world ``w`` draws a new one every ``changes_every[w]`` steps
    (0: never), like worlds resetting with new contexts mid-rollout."""
    out = []
    for every in changes_every:
        episode = torch.arange(steps) // every if every else torch.zeros(steps, dtype=torch.long)
        out.append(torch.randn(int(episode.max()) + 1, 2)[episode])
    return torch.stack(out)


@pytest.mark.parametrize(
    "changes_every",
    [
        [0, 0, 0, 0, 0],  # no world resets: one head per world, a reshape
        [0, 3, 0, 5, 8],  # a few resets: a few more heads, padded
        [0, 1, 0, 0, 0],  # a world whose context changes every step: too uneven, gathered
    ],
)
def test_runs_grouping_groups_each_segment_of_the_picked_worlds(changes_every):
    from hyperrl.functional import grouping, runs_grouping, split_runs

    torch.manual_seed(0)
    ctx = _contexts_with_resets(changes_every)  # (W, T, 2)
    starts = torch.zeros(ctx.shape[:2], dtype=torch.bool)
    starts[:, 1:] = (ctx[:, 1:] != ctx[:, :-1]).any(-1)
    segments = split_runs(starts)
    picked = torch.tensor([3, 1, 4, 0])
    groups = runs_grouping(segments, picked, picked)
    samples = ctx[picked].reshape(-1, 2)  # env-major, as a minibatch of these worlds
    expected_unique, expected_group = unique_rows(samples)
    assert groups.num_groups == len(expected_unique)  # one group per distinct context here
    # the same partition of the samples as deduplicating them
    same = groups.group[:, None] == groups.group[None, :]
    torch.testing.assert_close(same, expected_group[:, None] == expected_group[None, :])
    if changes_every[1] == 1:
        assert groups.layout is None  # 8 x 8 padded rows for 32 samples: gathered instead
    else:
        dest, width = groups.layout
        assert width == segments.width and len(set(dest.tolist())) == len(dest)
        assert int(dest.max()) < groups.num_groups * width
    layers = random_layers(groups.num_groups)
    x = torch.randn(len(samples), 5)
    expected = mlp_grouped(x, layers, grouping(groups.group, groups.num_groups), torch.relu)
    torch.testing.assert_close(mlp_grouped(x, layers, groups, torch.relu), expected)


def test_gathered_heads_give_the_same_gradients_every_time():
    """Seeded training must repeat itself: the per-sample gather's backward once accumulated rows
    in an order that varied between runs on two CPU threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        group = torch.randint(0, 25, (64,))  # too uneven to pad: the heads are gathered
        assert functional.grouping(group, 25).layout is None
        layers = [
            (torch.randn(25, o, i, requires_grad=True), torch.randn(25, o, requires_grad=True))
            for i, o in [(64, 64), (64, 2)]
        ]
        x = torch.randn(64, 64)

        def gradients():
            for w, b in layers:
                w.grad = b.grad = None
            mlp_grouped(x, layers, group, torch.tanh).square().sum().backward()
            return torch.cat([t.grad.flatten() for layer in layers for t in layer])

        first = gradients()
        for _ in range(20):
            assert torch.equal(gradients(), first)
    finally:
        torch.set_num_threads(threads)
