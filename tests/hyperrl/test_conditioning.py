import pytest
import torch

from hyperrl.conditioning import CONDITIONINGS, HEAD_GENERATOR_INPUTS, HyperHead, make_head
from hyperrl.generators import GENERATORS


@pytest.mark.parametrize("hidden", [(16, 16), ()])
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_every_rung_has_the_same_interface(conditioning, hidden):
    head = make_head(conditioning, in_dim=6, out_dim=2, context_dim=3, hidden_sizes=hidden)
    out = head(torch.randn(10, 6), torch.randn(10, 3))
    assert out.shape == (10, 2)
    assert head.target.sizes == (6, *hidden, 2)


@pytest.mark.parametrize("hidden", [(16,), ()])
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_context_reaches_the_output_exactly_when_it_should(conditioning, hidden):
    kwargs = {"init": "hyperfan_in"} if "hyper" in conditioning else {}
    head = make_head(conditioning, 6, 2, 3, hidden_sizes=hidden, **kwargs)
    if conditioning == "film":  # FiLM starts as the identity modulation; perturb it
        torch.nn.init.normal_(head.film_out.weight)
    x = torch.randn(10, 6)
    a, b = head(x, torch.zeros(10, 3)), head(x, torch.ones(10, 3))
    assert torch.allclose(a, b) == (conditioning == "none")


@pytest.mark.parametrize("generator_input", HEAD_GENERATOR_INPUTS)
def test_dynamic_generator_reads_what_it_is_told(generator_input):
    head = HyperHead(6, 2, 3, generator_input=generator_input, init="hyperfan_in")
    x, z = torch.randn(10, 6), torch.randn(10, 3)
    out = head(x, z)
    assert out.shape == (10, 2)
    moved_by_context = not torch.allclose(out, head(x, z + 1.0))
    assert moved_by_context == (generator_input != "input")
    out.sum().backward()
    assert all(p.grad is not None for p in head.generator.parameters())


def test_lowrank_rung_uses_lowrank_generator():
    assert type(make_head("lowrank_hyper", 6, 2, 3).generator).__name__ == "LowRankGenerator"
    with pytest.raises(ValueError, match="implies generator='lowrank'"):
        make_head("lowrank_hyper", 6, 2, 3, generator="shared")


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown conditioning 'gated'"):
        make_head("gated", 6, 2, 3)
    with pytest.raises(ValueError, match="unknown generator_input"):
        HyperHead(6, 2, 3, generator_input="obs")
    head = make_head("hyper", 6, 2, 3)
    with pytest.raises(ValueError, match=r"context of shape \(4, 3\)"):
        head(torch.randn(4, 6), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"x of shape \(B, 6\)"):
        head(torch.randn(4, 5), torch.randn(4, 3))


@pytest.mark.parametrize(
    "conditioning,generator",
    [("none", None), ("concat", None), ("film", None), ("lowrank_hyper", None)]
    + [("hyper", g) for g in GENERATORS],
)
def test_contextual_regression(conditioning, generator):
    """y = sin(a * x + b) with (a, b) the context: only heads that use the context can fit it.

    The no-context head can at best predict the average over contexts."""
    torch.manual_seed(0)
    ctx_bank = torch.rand(8, 2) * torch.tensor([2.0, 3.0]) + torch.tensor([0.5, 0.0])
    kwargs = {"generator": generator} if generator else {}
    head = make_head(conditioning, 1, 1, 2, hidden_sizes=(32, 32), **kwargs)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(600):
        ctx = ctx_bank[torch.randint(0, 8, (256,))]
        x = torch.rand(256, 1) * 4 - 2
        loss = (head(x, ctx) - torch.sin(ctx[:, :1] * x + ctx[:, 1:])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ctx = ctx_bank[torch.randint(0, 8, (2048,))]
    x = torch.rand(2048, 1) * 4 - 2
    with torch.no_grad():
        mse = (head(x, ctx) - torch.sin(ctx[:, :1] * x + ctx[:, 1:])).square().mean().item()
    if conditioning == "none":
        assert mse > 0.2
    else:
        assert mse < 0.05, f"{conditioning}/{generator} mse {mse:.3f}"


@pytest.mark.parametrize("generator", ["per_layer", "lowrank"])
def test_forward_grouped_matches_forward_without_deduplicating(generator, monkeypatch):
    """Given the distinct contexts and who uses which, the head skips the dedup and computes what
    ``forward`` computes: outputs and gradients, on an env-major batch and on a shuffled one."""
    import hyperrl.conditioning as conditioning
    from hyperrl.functional import grouping

    torch.manual_seed(0)
    head = make_head("hyper", 6, 2, 3, hidden_sizes=(16,), generator=generator)
    contexts = torch.randn(5, 3)
    for group in (torch.arange(5).repeat_interleave(4), torch.randint(0, 5, (20,))):
        x = torch.randn(20, 6)
        expected = head(x, contexts[group])
        expected_grads = torch.autograd.grad(expected.sum(), list(head.parameters()))

        def no_dedup(context):
            raise AssertionError("forward_grouped deduplicated")

        with monkeypatch.context() as m:
            m.setattr(conditioning, "unique_rows", no_dedup)
            out = head.forward_grouped(x, contexts, grouping(group, 5))
        torch.testing.assert_close(out, expected)
        grads = torch.autograd.grad(out.sum(), list(head.parameters()))
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="assign each of the 20 samples one of the 4"):
        head.forward_grouped(x, contexts[:4], grouping(group, 5))
    with pytest.raises(ValueError, match=r"contexts of shape \(G, 3\)"):
        head.forward_grouped(x, contexts[:, :2], grouping(group, 5))


def test_given_groups_replace_the_deduplication_until_cleared():
    from hyperrl.functional import grouping

    torch.manual_seed(0)
    head = make_head("hyper", 6, 2, 3, hidden_sizes=(16,))
    group = torch.tensor([0, 0, 1, 1, 1, 2])
    ctx, x = torch.randn(3, 3)[group], torch.randn(6, 6)
    expected = head(x, ctx)
    head.given_groups = grouping(group, 3)
    torch.testing.assert_close(head(x, ctx), expected)
    # told that every sample shares the first one's context, the head believes it
    head.given_groups = grouping(torch.zeros(6, dtype=torch.long), 1)
    torch.testing.assert_close(head(x, ctx), head.forward_grouped(x, ctx[:1], head.given_groups))
    with pytest.raises(ValueError, match="given_groups is for 6 samples, the batch has 4"):
        head(x[:4], ctx[:4])
    head.given_groups = None
    torch.testing.assert_close(head(x, ctx), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator", ["per_layer", "lowrank"])
def test_forward_grouped_never_syncs_the_gpu(generator):
    """What lets a minibatch step run ahead of the GPU (and be captured in a CUDA graph)."""
    from hyperrl.functional import grouping

    head = make_head("hyper", 64, 8, 8, hidden_sizes=(256, 256), generator=generator).cuda()
    contexts = torch.randn(512, 8, device="cuda")
    groups = grouping(torch.arange(512, device="cuda").repeat_interleave(32), 512)
    x = torch.randn(512 * 32, 64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        head.forward_grouped(x, contexts, groups).square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
