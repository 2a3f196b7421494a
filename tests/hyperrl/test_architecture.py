"""Architecture generation: one generator gives every member of a space exactly the plain MLP it
exports as, at the scale of a standard init, and a member's masked weights get no gradient."""

from __future__ import annotations

import math

import pytest
import torch

from hyperrl.architecture import ArchitectureHead, ArchitectureSpace

SPACE = ArchitectureSpace(widths=(4, 8, 16, 32), max_depth=3)


def _head(seed: int = 0, **kwargs) -> ArchitectureHead:
    torch.manual_seed(seed)
    return ArchitectureHead(10, 3, 2, SPACE, **kwargs)


def _plain(layers, x: torch.Tensor) -> torch.Tensor:
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
            x = torch.tanh(x)
    return x


def test_the_space_lists_samples_and_describes_its_members():
    members = SPACE.members()
    assert len(members) == 4 + 4**2 + 4**3 and members[0] == (4,) and members[-1] == (32,) * 3
    drawn = SPACE.sample(6000, torch.Generator().manual_seed(0))
    depth = (drawn > 0).sum(1)
    for d in (1, 2, 3):  # depths, then widths, drawn evenly
        assert (depth == d).float().mean() == pytest.approx(1 / 3, abs=0.03)
    first = drawn[:, 0]
    for w in SPACE.widths:
        assert (first == w).float().mean() == pytest.approx(1 / 4, abs=0.03)
    # the sandwich rule: a quarter of the draws pinned to each extreme, the other half uniform
    drawn = SPACE.sample(8000, torch.Generator().manual_seed(0), sandwich=0.5)
    share = {m: (drawn == SPACE.encode([m])[0]).all(1).float().mean() for m in [(32,) * 3, (4,)]}
    assert share[(32,) * 3] == pytest.approx(0.25 + 0.5 / 192, abs=0.02)  # 1/3 * (1/4)^3
    assert share[(4,)] == pytest.approx(0.25 + 0.5 / 12, abs=0.01)  # 1/3 * 1/4
    assert SPACE.smallest == (4,) and len(SPACE.sample(50, sandwich=1.0).unique(dim=0)) == 2
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(ValueError, match="sandwich is the share of draws"):
            SPACE.sample(4, sandwich=bad)
    described = SPACE.describe(SPACE.encode([(4,), (32, 8, 16)]))
    # flags, then log2 widths from 4 (-1) to 32 (+1)
    expected = [[1, -1, -1, -1, 0, 0], [1, 1, 1, 1, -1 / 3, 1 / 3]]
    assert torch.allclose(described, torch.tensor(expected))
    assert SPACE.num_params((8, 4), 10, 3) == (10 * 8 + 8) + (8 * 4 + 4) + (4 * 3 + 3)
    for bad in [(), (5,), (4, 4, 4, 4)]:
        with pytest.raises(ValueError, match="is not in this space"):
            SPACE.check(bad)
    with pytest.raises(ValueError, match="distinct positive ints"):
        ArchitectureSpace(widths=(4, 4))
    with pytest.raises(ValueError, match="min_depth <= max_depth"):
        ArchitectureSpace(max_depth=2, min_depth=3)


@pytest.mark.parametrize("kinds", [8, None], ids=["grouped", "per_sample"])
def test_every_member_runs_as_the_plain_network_it_exports_as(kinds):
    head = _head()
    x = torch.randn(512, 10)
    contexts = torch.rand(4, 2)[torch.randint(4, (512,))]
    encoded = SPACE.sample(512, torch.Generator().manual_seed(1))  # every row its own head
    if kinds:  # a few (context, member) pairs with many samples each: heads applied grouped
        pick = torch.randint(kinds, (512,))
        contexts, encoded = contexts[:kinds][pick], encoded[:kinds][pick]
    with torch.no_grad():
        mixed = head(x, contexts, encoded)
        for i in range(0, 512, 37):
            member = tuple(int(w) for w in encoded[i] if w > 0)
            plain = _plain(head.member_layers(contexts[i], member), x[i : i + 1])
            assert torch.allclose(plain[0], mixed[i], atol=1e-5), member
    for member in SPACE.members():
        layers = head.member_layers(contexts[0], member)
        assert sum(p.numel() for lin in layers for p in lin.parameters()) == SPACE.num_params(
            member, 10, 3
        )


@pytest.mark.parametrize("seed", [0, 1])
def test_every_member_starts_at_the_scale_of_a_standard_init(seed):
    head = _head(seed)
    ratios = []
    for member in SPACE.members():
        for linear in head.member_layers(torch.rand(2), member):
            ratios.append(linear.weight.std().item() * math.sqrt(3 * linear.in_features))
    # nn.Linear's default: std 1 / sqrt(3 fan_in); without the fan-in correction a 4-wide
    # layer would start at sqrt(4 / 32) = 0.35 of it
    assert min(ratios) > 0.6 and max(ratios) < 1.6, (min(ratios), max(ratios))


def test_a_members_masked_weights_get_no_gradient_and_its_own_do():
    head = _head()
    generated = {}
    head.generator.register_forward_hook(
        lambda module, args, out: generated.update(out=out) or out.retain_grad()
    )
    member = (8, 16)
    encoded = SPACE.encode([member]).expand(64, -1)
    head(torch.randn(64, 10), torch.rand(1, 2).expand(64, 2), encoded).square().sum().backward()
    grads = head.target.unflatten(generated["out"].grad[0])
    widths_in = (10, 8, 16)
    for i, (w, b) in enumerate(grads[:3]):  # the hidden layers of the largest chain
        if i < len(member):
            rows, cols = member[i], widths_in[i]
            assert w[:rows, :cols].abs().sum() > 0 and b[:rows].abs().sum() > 0
            outside = w.clone()
            outside[:rows, :cols] = 0
            assert outside.abs().sum() == 0 and b[rows:].abs().sum() == 0
        else:  # past the member's depth: untouched
            assert w.abs().sum() == 0 and b.abs().sum() == 0
    w, b = grads[-1]  # the output layer reads the member's last hidden layer (16 wide)
    assert w[:, :16].abs().sum() > 0 and w[:, 16:].abs().sum() == 0


def test_a_head_without_context_is_conditioned_on_the_architecture_alone():
    torch.manual_seed(0)
    head = ArchitectureHead(5, 2, 0, ArchitectureSpace(widths=(4, 8), max_depth=2))
    out = head(torch.randn(3, 5), None, head.space.encode([(4,), (8, 4), (8,)]))
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in head.generator.parameters() if p.requires_grad)


def test_a_rollout_reuses_the_heads_until_a_member_context_or_parameter_changes():
    head = _head()
    head.reuse_heads = True
    calls = []
    head.generator.register_forward_hook(lambda m, inp, out: calls.append(1))
    x, ctx = torch.randn(6, 10), torch.randn(3, 2).repeat(2, 1)
    members = SPACE.encode([(4,), (8, 16), (32, 32, 4)] * 2)
    with torch.no_grad():
        first = head(x, ctx, members)
        x2 = torch.randn(6, 10)
        reused = head(x2, ctx, members)
        assert len(calls) == 1
        head.reuse_heads = False
        torch.testing.assert_close(reused, head(x2, ctx, members))  # the right heads were kept
        head.reuse_heads = True
        calls.clear()
        other = members.clone()
        other[0] = SPACE.encode([(16,)])[0]
        head(x, ctx, other)  # one world drew a new member: regenerate
        head(x, ctx + 1.0, other)  # new contexts: regenerate
        before = head(x, ctx, members)
    assert len(calls) == 3
    # a fused Adam step does not count in the parameters' versions: the call with autograd
    # that every update starts with must drop the kept heads
    opt = torch.optim.Adam(head.parameters(), lr=0.1, fused=True)
    head(x, ctx, members).sum().backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(head(x, ctx, members), before)  # parameters changed
    assert len(calls) == 5 and torch.equal(before, first)


def test_member_offsets_start_at_zero_and_move_each_members_own_head():
    head, shared = _head(3, member_offsets=True), _head(3)  # the same generator, offsets or not
    x, ctx = torch.randn(8, 10), torch.rand(1, 2).expand(8, 2)
    members = SPACE.encode([(8, 16)] * 4 + [(4,)] * 4)
    torch.testing.assert_close(head(x, ctx, members), shared(x, ctx, members))  # init unchanged
    head(x[:4], ctx[:4], members[:4]).square().sum().backward()
    row = SPACE.members().index((8, 16))
    grad = head.offsets.grad
    assert grad[row].abs().sum() > 0 and grad[torch.arange(len(grad)) != row].abs().sum() == 0
    assert head.target.unflatten(grad[row : row + 1])[0][0][0, 8:, :].abs().sum() == 0  # masked
    head.reuse_heads = True
    with torch.no_grad():
        before = head(x, ctx, members)
        head.offsets[row] += 0.5 * torch.randn(head.offsets.shape[1])  # only (8, 16) moves
        after = head(x, ctx, members)  # an in-place change to the offsets: regenerated
        assert not torch.allclose(after[:4], before[:4])
        torch.testing.assert_close(after[4:], before[4:])
        plain = _plain(head.member_layers(ctx[0], (8, 16)), x[:1])  # exported with its offset
        torch.testing.assert_close(plain[0], after[0], atol=1e-5, rtol=1e-5)
