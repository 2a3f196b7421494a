"""The shape of a generated head: layer sizes and the flat-vector <-> per-layer views.

A generated head is a plain MLP ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``. Its parameters live in
one flat vector laid out layer by layer, each layer as its weight ``(out, in)`` in row-major order
followed by its bias ``(out,)`` -- the same layout for every generator, so generators, the
functional application and the initialisation agree on where each number goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

LayerParams = tuple[torch.Tensor, torch.Tensor]
"""One layer's generated parameters: weight ``(..., out, in)`` and bias ``(..., out)``."""


@dataclass(frozen=True)
class LayerSlice:
    """Where one target layer sits in the flat parameter vector."""

    fan_in: int
    fan_out: int
    weight_start: int
    bias_start: int

    @property
    def weight_end(self) -> int:
        return self.bias_start

    @property
    def bias_end(self) -> int:
        return self.bias_start + self.fan_out

    @property
    def num_params(self) -> int:
        return self.fan_in * self.fan_out + self.fan_out


class TargetSpec:
    """Layer sizes of a generated MLP head and the views between flat and per-layer parameters.

    :param sizes: ``(in_dim, hidden_1, ..., out_dim)``, at least two positive integers.
    :raises ValueError: when ``sizes`` has fewer than two entries or a non-positive entry.
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(
                f"a target spec needs at least an input and an output size, got sizes={sizes}"
            )
        for i, s in enumerate(sizes):
            if isinstance(s, bool) or not isinstance(s, int) or s <= 0:
                raise ValueError(f"target sizes must be positive ints; sizes[{i}]={s!r}")
        self.sizes: tuple[int, ...] = sizes
        layers = []
        offset = 0
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers.append(LayerSlice(fan_in, fan_out, offset, offset + fan_in * fan_out))
            offset += fan_in * fan_out + fan_out
        self.layers: tuple[LayerSlice, ...] = tuple(layers)
        self.num_params: int = offset

    @property
    def in_dim(self) -> int:
        return self.sizes[0]

    @property
    def out_dim(self) -> int:
        return self.sizes[-1]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return f"TargetSpec({' -> '.join(map(str, self.sizes))}, params={self.num_params})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TargetSpec) and other.sizes == self.sizes

    def __hash__(self) -> int:
        return hash(self.sizes)

    def unflatten(self, flat: torch.Tensor) -> list[LayerParams]:
        """Views of a flat parameter tensor as per-layer weights and biases (no copy).

        :param flat: ``(..., num_params)``.
        :return: one ``(weight (..., out, in), bias (..., out))`` pair per layer.
        :raises ValueError: when the last dimension is not ``num_params``.
        """
        if flat.shape[-1] != self.num_params:
            raise ValueError(
                f"flat parameters have last dimension {flat.shape[-1]}, but {self!r} needs "
                f"{self.num_params}"
            )
        batch = flat.shape[:-1]
        return [
            (
                flat[..., ls.weight_start : ls.weight_end].reshape(*batch, ls.fan_out, ls.fan_in),
                flat[..., ls.bias_start : ls.bias_end],
            )
            for ls in self.layers
        ]

    def flatten(self, layers: Sequence[LayerParams]) -> torch.Tensor:
        """Inverse of :meth:`unflatten`: ``[(W (..., out, in), b (..., out)), ...] -> (..., P)``."""
        if len(layers) != self.num_layers:
            raise ValueError(f"{self!r} has {self.num_layers} layers, got {len(layers)}")
        parts = []
        for ls, (w, b) in zip(self.layers, layers, strict=True):
            if w.shape[-2:] != (ls.fan_out, ls.fan_in) or b.shape[-1] != ls.fan_out:
                raise ValueError(
                    f"layer {ls.fan_in}->{ls.fan_out} got weight {tuple(w.shape)} and bias "
                    f"{tuple(b.shape)}"
                )
            parts += [w.flatten(-2), b]
        return torch.cat(parts, dim=-1)

    def from_linears(self, linears: Sequence[torch.nn.Linear]) -> torch.Tensor:
        """Flat ``(num_params,)`` vector holding the parameters of ordinary ``nn.Linear`` layers."""
        return self.flatten([(lin.weight, lin.bias) for lin in linears])
