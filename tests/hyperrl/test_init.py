"""Generated heads at step 0 must look like normally initialised heads, for any context."""

import math

import pytest
import torch

from hyperrl.generators import GENERATORS, make_generator
from hyperrl.target import TargetSpec

SPEC = TargetSpec((24, 48, 32, 6))
CTX = 3


def contexts(n=256):
    # deliberately far from unit scale: the LayerNorm-ed embedding makes init context-agnostic
    return torch.rand(n, CTX) * torch.tensor([20.0, 0.1, 3.0]) + torch.tensor([-9.81, 1.0, 0.0])


def generated(kind, init, layer_gains=None, draws=1, linear_context=True):
    """Per-layer ``(W (n, out, in), b (n, out))`` over random contexts, pooled over ``draws``
    independently initialised generators: the schemes set the variance in expectation over the
    init, and one draw of a generator whose embedding varies in few directions fluctuates."""
    gens = [
        make_generator(
            kind, CTX, SPEC, init=init, layer_gains=layer_gains, linear_context=linear_context
        )
        for _ in range(draws)
    ]
    flat = torch.cat([g(contexts()).detach() for g in gens])
    return SPEC.unflatten(flat)


def assert_moments(t, var, what, rtol=0.12):
    """Zero mean within 4 standard errors (entries of one context are the independent draws) and
    the target variance within ``rtol``."""
    n = t[0].numel() if t.dim() > 1 else t.numel()
    mean_tol = 4 * math.sqrt(var / n)
    assert abs(t.mean().item()) < mean_tol, f"{what}: mean {t.mean():.4f}, tol {mean_tol:.4f}"
    assert t.var().item() == pytest.approx(var, rel=rtol), f"{what}: var {t.var():.5f} vs {var}"


@pytest.mark.parametrize("kind", GENERATORS)
@pytest.mark.parametrize("linear_context", [True, False])
def test_bias_hyperinit_reproduces_pytorch_default_linear_init(kind, linear_context):
    layers = generated(kind, "bias", linear_context=linear_context)
    for (w, b), ls in zip(layers, SPEC.layers, strict=True):
        # identical head for every context ...
        assert torch.allclose(w, w[:1].expand_as(w)) and torch.allclose(b, b[:1].expand_as(b))
        # ... drawn from nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), var 1/(3 fan_in)
        bound = 1 / math.sqrt(ls.fan_in)
        assert w.abs().max() <= bound and b.abs().max() <= bound
        assert_moments(
            w[0].flatten(), 1 / (3 * ls.fan_in), f"{kind} {ls.fan_in}->{ls.fan_out}", 0.3
        )


@pytest.mark.parametrize("kind", GENERATORS)
def test_bias_hyperinit_with_gains_reproduces_orthogonal_init(kind):
    gains = (math.sqrt(2), math.sqrt(2), 0.01)
    layers = generated(kind, "bias", layer_gains=gains)
    for (w, b), ls, g in zip(layers, SPEC.layers, gains, strict=True):
        w0 = w[0]
        gram = w0 @ w0.T if ls.fan_out <= ls.fan_in else w0.T @ w0
        torch.testing.assert_close(gram, g * g * torch.eye(gram.shape[0]), atol=1e-4, rtol=1e-4)
        assert torch.all(b == 0)


@pytest.mark.parametrize("kind", GENERATORS)
@pytest.mark.parametrize("linear_context", [True, False])
def test_hyperfan_in_variances(kind, linear_context):
    layers = generated(kind, "hyperfan_in", draws=16, linear_context=linear_context)
    for (w, b), ls in zip(layers, SPEC.layers, strict=True):
        what = f"{kind} layer {ls.fan_in}->{ls.fan_out}"
        assert_moments(w, 1 / (2 * ls.fan_in), what + " weight")
        assert_moments(b, 0.5, what + " bias", rtol=0.25)
        # contexts really produce different heads
        assert w.std(dim=0).mean() > 0.5 * math.sqrt(1 / (2 * ls.fan_in))


@pytest.mark.parametrize("kind", GENERATORS)
def test_hyperfan_out_variances(kind):
    for (w, b), ls in zip(generated(kind, "hyperfan_out", draws=16), SPEC.layers, strict=True):
        what = f"{kind} layer {ls.fan_in}->{ls.fan_out}"
        assert_moments(w, 1 / ls.fan_out, what + " weight")
        bias_var = max(0.0, 1 - ls.fan_in / ls.fan_out)
        if bias_var == 0:
            assert b.abs().max() < 1e-6
        else:
            assert_moments(b, bias_var, what + " bias", rtol=0.25)


@pytest.mark.parametrize("kind", GENERATORS)
def test_hyperfan_in_preserves_forward_variance(kind):
    """The point of hyperfan-in: a unit-variance input gives unit-variance pre-activations."""
    w, b = generated(kind, "hyperfan_in", draws=16)[0]
    x = torch.randn(w.shape[0], 128, SPEC.in_dim)
    pre = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
    assert pre.var().item() == pytest.approx(1.0, rel=0.15)
