import pytest
import torch
from torch import nn

from hyperrl.functional import mlp_shared
from hyperrl.target import TargetSpec


def test_sizes_and_param_count():
    spec = TargetSpec((5, 8, 3))
    assert spec.num_params == 5 * 8 + 8 + 8 * 3 + 3
    assert (spec.in_dim, spec.out_dim, spec.num_layers) == (5, 3, 2)
    assert [(ls.weight_start, ls.bias_start, ls.bias_end) for ls in spec.layers] == [
        (0, 40, 48),
        (48, 72, 75),
    ]


def test_unflatten_shapes_with_batch_dims_and_views():
    spec = TargetSpec((4, 6, 2))
    flat = torch.randn(3, 7, spec.num_params)
    layers = spec.unflatten(flat)
    assert [tuple(w.shape) for w, _ in layers] == [(3, 7, 6, 4), (3, 7, 2, 6)]
    assert [tuple(b.shape) for _, b in layers] == [(3, 7, 6), (3, 7, 2)]
    layers[1][1][0, 0, 0] = 123.0  # a view: writes reach the flat tensor
    assert flat[0, 0, spec.layers[1].bias_start] == 123.0
    assert torch.equal(spec.flatten(layers), flat)


def test_from_linears_matches_module_forward():
    torch.manual_seed(1)
    linears = [nn.Linear(4, 6), nn.Linear(6, 2)]
    spec = TargetSpec((4, 6, 2))
    flat = spec.from_linears(linears)
    x = torch.randn(10, 4)
    expected = linears[1](torch.tanh(linears[0](x)))
    torch.testing.assert_close(mlp_shared(x, spec.unflatten(flat), torch.tanh), expected)


@pytest.mark.parametrize("sizes", [(), (4,), (4, 0, 2), (4, -1), (4, 2.5), (True, 3)])
def test_bad_sizes_raise(sizes):
    with pytest.raises(ValueError, match="sizes"):
        TargetSpec(sizes)


def test_wrong_flat_width_raises():
    spec = TargetSpec((4, 2))
    with pytest.raises(ValueError, match="needs 10"):
        spec.unflatten(torch.zeros(3, 11))
    with pytest.raises(ValueError, match="layer 4->2"):
        spec.flatten([(torch.zeros(2, 3), torch.zeros(2))])
