import math

import pytest
import torch

from hyperrl.functional import mlp_per_sample
from hyperrl.generators import GENERATORS, make_generator
from hyperrl.init import INIT_SCHEMES
from hyperrl.target import TargetSpec

SPEC = TargetSpec((7, 16, 16, 3))
CTX = 4


def count(module):
    return sum(p.numel() for p in module.parameters())


def embedding_params(c, hidden):
    sizes = (c, *hidden)
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


@pytest.mark.parametrize("kind", GENERATORS)
@pytest.mark.parametrize("init", INIT_SCHEMES)
def test_output_shape_and_dtype(kind, init):
    gen = make_generator(kind, CTX, SPEC, init=init)
    out = gen(torch.randn(5, CTX))
    assert out.shape == (5, SPEC.num_params) and out.dtype == torch.float32
    out64 = gen.double()(torch.randn(2, CTX, dtype=torch.float64))
    assert out64.dtype == torch.float64 and torch.isfinite(out64).all()


@pytest.mark.parametrize("kind", GENERATORS)
@pytest.mark.parametrize("init", INIT_SCHEMES)
def test_gradients_reach_every_parameter(kind, init):
    """Bias-HyperInit zeroes output layers, so the embedding only gets gradient after the first
    update; two optimiser steps later every parameter must be receiving gradient."""
    gen = make_generator(kind, CTX, SPEC, init=init)
    opt = torch.optim.SGD(gen.parameters(), lr=0.05)
    x, z, y = torch.randn(32, 7), torch.randn(32, CTX), torch.randn(32, 3)
    for _ in range(3):
        opt.zero_grad()
        pred = mlp_per_sample(x, SPEC.unflatten(gen(z)), torch.tanh)
        ((pred - y) ** 2).mean().backward()
        opt.step()
    for name, p in gen.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_parameter_counts_match_documented_formulas():
    hidden, d = (32, 24), 24
    emb = embedding_params(CTX, hidden)
    P, layers = SPEC.num_params, SPEC.layers

    per_layer = make_generator("per_layer", CTX, SPEC, hidden=hidden)
    assert count(per_layer) == len(layers) * emb + sum((d + 1) * ls.num_params for ls in layers)

    shared = make_generator("shared", CTX, SPEC, hidden=hidden)
    assert count(shared) == emb + (d + 1) * P

    chunk, E, G = 50, 8, 20
    chunked = make_generator(
        "chunked",
        CTX,
        SPEC,
        hidden=hidden,
        chunk_size=chunk,
        chunk_embedding_dim=E,
        generator_hidden=G,
    )
    w_total = sum(ls.fan_in * ls.fan_out for ls in layers)
    b_total = sum(ls.fan_out for ls in layers)
    k = math.ceil(w_total / chunk)
    assert count(chunked) == (
        emb + k * E + (d + 1) * G + E * G + (G + 1) * chunk + w_total + (d + 1) * b_total
    )

    r = 3
    lowrank = make_generator("lowrank", CTX, SPEC, hidden=hidden, rank=r)
    assert count(lowrank) == emb + sum(
        ls.num_params + (d + 1) * (r * (ls.fan_in + ls.fan_out) + ls.fan_out) for ls in layers
    )
    # the indirect generators are the compact ones
    assert count(chunked) < count(lowrank) < count(shared) < count(per_layer)


@pytest.mark.parametrize("kind", GENERATORS)
def test_wrong_context_shape_raises(kind):
    gen = make_generator(kind, CTX, SPEC)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        gen(torch.randn(5, CTX + 1))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        gen(torch.randn(CTX))


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="unknown generator 'dense'"):
        make_generator("dense", CTX, SPEC)
    with pytest.raises(ValueError, match="context_dim"):
        make_generator("shared", 0, SPEC)
    with pytest.raises(ValueError, match="TargetSpec"):
        make_generator("shared", CTX, (7, 3))
    with pytest.raises(ValueError, match="unknown init"):
        make_generator("shared", CTX, SPEC, init="xavier")
    with pytest.raises(ValueError, match="layer_gains has 2 entries"):
        make_generator("shared", CTX, SPEC, layer_gains=(1.0, 1.0))
    with pytest.raises(ValueError, match="hidden"):
        make_generator("per_layer", CTX, SPEC, hidden=())
    with pytest.raises(ValueError, match="rank"):
        make_generator("lowrank", CTX, SPEC, rank=0)
