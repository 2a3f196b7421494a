"""Initialisation that makes a generated head start like a normally initialised one.

Two families, selected by name (:data:`INIT_SCHEMES`):

``"bias"`` -- Bias-HyperInit (Beck et al., 2022): the generator's output-layer weights are zero and
its output bias is one sample of the target's *standard* initialisation. At step 0 every context
gets exactly that head, and the generator learns the context dependence from there.

``"hyperfan_in"`` / ``"hyperfan_out"`` -- Chang, Flokas and Lipson (ICLR 2020): the output-layer
weights are drawn so that each generated weight has the variance that preserves the forward
(fan-in) or backward (fan-out) signal of the target layer, with the generated biases taking their
share. With embedding ``e`` and ``W = H e``, ``Var(W) = Var(H) * sum_k e_k^2``; every generator
here ends its embedding with a scaled LayerNorm (:class:`hyperrl.generators.ScaledLayerNorm`), so
``sum_k e_k^2 = 1/d`` for *every* context and the target variance holds exactly, whatever the
context distribution (the linear context term beside it starts at zero).

The target's standard initialisation (what ``"bias"`` copies, and the reference the tests compare
against) is PyTorch's ``nn.Linear`` default when no gains are given, or SB3's convention
(orthogonal weights with a per-layer gain, zero biases) when they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from hyperrl.target import TargetSpec

INIT_SCHEMES = ("bias", "hyperfan_in", "hyperfan_out")


def check_scheme(init: str) -> str:
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; choose one of {INIT_SCHEMES}")
    return init


def check_gains(target: TargetSpec, gains: Sequence[float] | None) -> tuple[float, ...] | None:
    """Validate per-layer gains: ``None`` or one positive float per target layer."""
    if gains is None:
        return None
    gains = tuple(float(g) for g in gains)
    if len(gains) != target.num_layers:
        raise ValueError(
            f"layer_gains has {len(gains)} entries but {target!r} has {target.num_layers} layers"
        )
    if any(g < 0 for g in gains):
        raise ValueError(f"layer_gains must be non-negative, got {gains}")
    return gains


def init_linear(linear: nn.Linear, gain: float | None) -> None:
    """Standard init of an ordinary layer: PyTorch's default (``gain=None``) or orthogonal(gain)
    with a zero bias, as SB3 does for its policy networks."""
    if gain is None:
        linear.reset_parameters()
    else:
        nn.init.orthogonal_(linear.weight, gain=gain)
        nn.init.zeros_(linear.bias)


@torch.no_grad()
def standard_init_sample(target: TargetSpec, gains: Sequence[float] | None = None) -> torch.Tensor:
    """One draw of the target's standard initialisation as a flat ``(num_params,)`` vector."""
    gains = check_gains(target, gains)
    linears = []
    for i, ls in enumerate(target.layers):
        lin = nn.Linear(ls.fan_in, ls.fan_out)
        init_linear(lin, None if gains is None else gains[i])
        linears.append(lin)
    return target.from_linears(linears).detach()


def hyperfan_variances(
    init: str, fan_in: int, fan_out: int, gain: float = 1.0
) -> tuple[float, float]:
    """``(Var(W), Var(b))`` that hyperfan-in/-out aims each generated weight and bias at.

    hyperfan-in keeps ``fan_in * Var(W) + Var(b) = gain^2`` with the two terms equal;
    hyperfan-out sets ``fan_out * Var(W) = gain^2`` and gives the bias what is left of the forward
    budget, ``gain^2 * max(0, 1 - fan_in / fan_out)``.
    """
    g2 = gain * gain
    if init == "hyperfan_in":
        return g2 / (2.0 * fan_in), g2 / 2.0
    if init == "hyperfan_out":
        return g2 / fan_out, g2 * max(0.0, 1.0 - fan_in / fan_out)
    raise ValueError(f"{init!r} is not a hyperfan scheme")


def standard_weight_std(fan_in: int, fan_out: int, gain: float | None) -> float:
    """Std of one weight entry under the standard init (``nn.Linear`` default or orthogonal)."""
    if gain is None:
        return 1.0 / math.sqrt(3.0 * fan_in)  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    return gain / math.sqrt(max(fan_in, fan_out))  # rows or columns of an orthogonal matrix


def position_variances(
    target: TargetSpec, init: str, gains: Sequence[float] | None = None
) -> torch.Tensor:
    """Per-position target variance ``(num_params,)`` of a hyperfan scheme."""
    gains = check_gains(target, gains)
    var = torch.empty(target.num_params)
    for i, ls in enumerate(target.layers):
        var_w, var_b = hyperfan_variances(
            init, ls.fan_in, ls.fan_out, 1.0 if gains is None else gains[i]
        )
        var[ls.weight_start : ls.weight_end] = var_w
        var[ls.bias_start : ls.bias_end] = var_b
    return var


@torch.no_grad()
def init_output_rows(
    linear: nn.Linear,
    rows: torch.Tensor,
    init: str,
    target_sample: torch.Tensor,
    target_var: torch.Tensor,
    norm_width: int | None = None,
) -> None:
    """Initialise a generator's output layer whose output ``j`` becomes flat position ``rows[j]``.

    The layer reads an embedding whose first ``d = norm_width`` entries (default: all) have
    ``sum_k e_k^2 = 1/d``, so ``Var(H) = d Var(W)``; the columns past ``d`` (the linear context
    term, :class:`hyperrl.generators.ContextEmbedding`) start at zero.

    :param linear: ``nn.Linear(d, len(rows))``.
    :param rows: ``(len(rows),)`` flat positions in the target vector.
    :param target_sample: ``(num_params,)`` a standard-init draw, used by ``"bias"``.
    :param target_var: ``(num_params,)`` per-position variance, used by the hyperfan schemes.
    """
    d = linear.in_features if norm_width is None else norm_width
    if init == "bias":
        linear.weight.zero_()
        linear.bias.copy_(target_sample[rows])
    else:
        std = (target_var[rows] * d).sqrt()
        linear.weight.normal_().mul_(std[:, None])
        linear.weight[:, d:] = 0.0
        linear.bias.zero_()
