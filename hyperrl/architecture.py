"""One generator for a family of head sizes: architecture generation.

An :class:`ArchitectureSpace` is a set of MLP heads: depth ``min_depth..max_depth``, each hidden
layer's width from ``widths``. An :class:`ArchitectureHead` generates the weights of any member
from ``[context, architecture descriptor]`` with one generator, so after training a user picks a
member (the smallest that does the job, or the best under a budget) without retraining.

Design (against HyperPPO's graph hypernetwork, Hegde et al. 2023, which reads each member's
computational graph and generates every layer from its node embedding):

- **Nested masking of the largest member.** The generator writes the weights of the widest,
  deepest chain ``in -> W -> ... -> W -> out`` (``W = max(widths)``, ``max_depth`` hidden layers);
  a member uses the top-left ``(w_l, w_{l-1})`` block of each hidden layer and reads out from its
  last hidden layer through the first ``w_d`` columns of the shared output layer. Everything
  outside a member's blocks is multiplied by zero, so it gets no gradient from that member. One
  generator pass serves every member, members of a batch run together at the largest size, and
  a member exports by slicing. The generator reads the descriptor, so members need not share
  values in their common blocks; they share the generator's parameters, as in a GHN.
- **Fan-in correction.** A block's weights are generated at the scale of the widest layer
  (fan-in ``W``) and multiplied by ``sqrt(W / w_in)`` when applied, so every member's layers get
  the variance of a standard init of their own fan-in (tested over all members).
- What it gives up against a GHN: members must be chains within the space (no skip connections
  or other graphs), and compute per sample is that of the largest member, which bounds ``W``
  (the default space stops at 128 wide on the CPU).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hyperrl.functional import from_groups, grouping, to_groups, unique_rows
from hyperrl.generators import Generator, OutputCache, make_generator
from hyperrl.target import LayerParams, TargetSpec

Member = tuple[int, ...]
"""A member of an architecture space: its hidden widths, first layer first."""


@dataclass(frozen=True)
class ArchitectureSpace:
    """Chains of ``min_depth..max_depth`` hidden layers, each ``widths`` wide.

    :param widths: the allowed hidden widths (positive, distinct; sorted here).
    :param max_depth: the most hidden layers.
    :param min_depth: the fewest hidden layers (at least 1).
    """

    widths: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    max_depth: int = 3
    min_depth: int = 1

    def __post_init__(self) -> None:
        widths = tuple(sorted(self.widths))
        if (
            not widths
            or len(set(widths)) != len(widths)
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)
        ):
            raise ValueError(f"widths must be distinct positive ints, got {self.widths!r}")
        if not 1 <= self.min_depth <= self.max_depth:
            raise ValueError(
                f"need 1 <= min_depth <= max_depth, got {self.min_depth} and {self.max_depth}"
            )
        object.__setattr__(self, "widths", widths)

    @property
    def max_width(self) -> int:
        return self.widths[-1]

    @property
    def descriptor_dim(self) -> int:
        """Width of :meth:`describe`'s output: an on/off flag and a width per layer."""
        return 2 * self.max_depth

    @property
    def largest(self) -> Member:
        """The widest, deepest member."""
        return (self.max_width,) * self.max_depth

    def members(self) -> list[Member]:
        """Every member, shallow first."""
        return [
            widths
            for depth in range(self.min_depth, self.max_depth + 1)
            for widths in itertools.product(self.widths, repeat=depth)
        ]

    def check(self, member: Sequence[int]) -> Member:
        """:raises ValueError: when ``member`` is not in this space."""
        member = tuple(int(w) for w in member)
        if not self.min_depth <= len(member) <= self.max_depth or any(
            w not in self.widths for w in member
        ):
            raise ValueError(
                f"{member} is not in this space: {self.min_depth}-{self.max_depth} hidden layers "
                f"of widths {list(self.widths)}"
            )
        return member

    def encode(self, members: Sequence[Sequence[int]]) -> torch.Tensor:
        """``(n, max_depth)`` long: each member's widths, 0 past its depth."""
        out = torch.zeros(len(members), self.max_depth, dtype=torch.long)
        for i, member in enumerate(members):
            member = self.check(member)
            out[i, : len(member)] = torch.tensor(member)
        return out

    @property
    def smallest(self) -> Member:
        """The narrowest, shallowest member."""
        return (self.widths[0],) * self.min_depth

    def sample(
        self, n: int, generator: torch.Generator | None = None, sandwich: float = 0.0
    ) -> torch.Tensor:
        """``(n, max_depth)`` encoded members: depth uniform, then each width uniform (so every
        depth and every width is drawn as often, whatever its parameter count). With
        ``sandwich`` (the sandwich rule of slimmable networks, Yu & Huang 2019) a share
        ``sandwich / 2`` of the draws is the largest member and as many the smallest: in a large
        space any one member, the largest included, is otherwise drawn a fraction of a percent
        of the time.

        :raises ValueError: for ``sandwich`` outside ``[0, 1]``."""
        check_sandwich(sandwich)
        depth = torch.randint(self.min_depth, self.max_depth + 1, (n, 1), generator=generator)
        pick = torch.randint(len(self.widths), (n, self.max_depth), generator=generator)
        widths = torch.tensor(self.widths)[pick]
        drawn = widths * (torch.arange(self.max_depth) < depth)
        if sandwich > 0:
            u = torch.rand(n, generator=generator)
            drawn[u < sandwich / 2] = self.encode([self.largest])[0]
            drawn[(u >= sandwich / 2) & (u < sandwich)] = self.encode([self.smallest])[0]
        return drawn

    def describe(self, encoded: torch.Tensor) -> torch.Tensor:
        """``(n, max_depth) -> (n, 2 * max_depth)`` floats in ``[-1, 1]``: per layer, +1/-1 for
        present/absent, then its width on a log scale from the narrowest (-1) to the widest (+1)
        (0 when absent)."""
        present = encoded > 0
        lo, hi = math.log2(self.widths[0]), math.log2(self.max_width)
        logw = torch.log2(encoded.clamp(min=1).float())
        scaled = (2 * (logw - lo) / (hi - lo) - 1) if hi > lo else torch.ones_like(logw)
        flags = present.float() * 2 - 1
        return torch.cat([flags, torch.where(present, scaled, torch.zeros_like(scaled))], dim=-1)

    def num_params(self, member: Sequence[int], in_dim: int, out_dim: int) -> int:
        """Weights and biases of the plain MLP ``in_dim -> member... -> out_dim``."""
        sizes = (in_dim, *self.check(member), out_dim)
        return sum(a * b + b for a, b in itertools.pairwise(sizes))


def check_sandwich(sandwich: float) -> float:
    """:raises ValueError: unless ``0 <= sandwich <= 1`` (the share of draws that are the
    largest or the smallest member)."""
    if (
        isinstance(sandwich, bool)
        or not isinstance(sandwich, int | float)
        or not (0 <= sandwich <= 1)
    ):
        raise ValueError(f"sandwich is the share of draws in [0, 1], got {sandwich!r}")
    return float(sandwich)


class ArchitectureHead(nn.Module):
    """An MLP head ``in_dim -> member -> out_dim`` for any member of ``space``, its weights
    generated from ``[context, descriptor]`` (see the module docstring).

    :param in_dim: the head's input width.
    :param out_dim: its output width.
    :param context_dim: the context's width (0: the architecture alone conditions it).
    :param space: the members.
    :param activation: after every hidden layer.
    :param generator: one of :data:`hyperrl.generators.GENERATORS` (``"chunked"`` by default:
        the largest member's weights are many).
    :param init: the generator's init scheme.
    :param layer_gains: standard-init gain per layer of the largest chain (hidden layers, then
        the output layer); ``None``: ``nn.Linear``'s default.
    :param generator_kwargs: passed to the generator (``hidden``, ``chunk_size``...).
    :param member_offsets: add a learned offset per member to its generated parameters (zero
        at init, so the init is unchanged): members then need not share their common blocks
        through the generator alone, at ``len(space.members())`` times the largest chain's
        parameter count (for a small space).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        context_dim: int,
        space: ArchitectureSpace,
        activation: type[nn.Module] = nn.Tanh,
        generator: str = "chunked",
        init: str = "bias",
        layer_gains: Sequence[float] | None = None,
        generator_kwargs: dict | None = None,
        member_offsets: bool = False,
    ) -> None:
        super().__init__()
        self.space, self.context_dim = space, context_dim
        self.in_dim, self.out_dim = in_dim, out_dim
        widest = space.max_width
        self.target = TargetSpec((in_dim, *[widest] * space.max_depth, out_dim))
        if layer_gains is not None:
            layer_gains = [*layer_gains[: space.max_depth], layer_gains[-1]]
        self.generator: Generator = make_generator(
            generator,
            context_dim + space.descriptor_dim,
            self.target,
            init=init,
            layer_gains=layer_gains,
            **(generator_kwargs or {}),
        )
        self.activation = activation()
        self.offsets: nn.Parameter | None = None
        if member_offsets:
            members = space.members()
            self.register_buffer("member_table", space.encode(members), persistent=False)
            self.offsets = nn.Parameter(torch.zeros(len(members), self.target.num_params))
        #: reuse the heads generated for the last batch's (context, member) rows outside autograd
        #: (rollouts; :class:`~hyperrl.generators.OutputCache`); for heads their optimizer updates
        self.reuse_heads = False
        self._cache = OutputCache()

    def train(self, mode: bool = True) -> ArchitectureHead:
        self._cache.clear()
        return super().train(mode)

    def _apply(self, *args, **kwargs) -> ArchitectureHead:  # .to(), .double(): new tensors
        self._cache.clear()
        return super()._apply(*args, **kwargs)

    def generate(self, context: torch.Tensor, encoded: torch.Tensor) -> list[LayerParams]:
        """Per-layer ``(W (N, out, in), b (N, out))`` of the largest chain for ``N`` rows of
        ``context (N, C)`` and members ``encoded (N, max_depth)``, masked to each member's blocks
        and fan-in corrected (the output layer reads the member's last hidden layer)."""
        given = torch.cat([context, self.space.describe(encoded).to(context)], dim=-1)
        flat = self.generator(given)
        if self.offsets is not None:  # each row's member: its index in the space's list
            width = encoded.to(self.member_table.device)
            index = (width[:, None, :] == self.member_table[None]).all(-1).float().argmax(1)
            flat = flat + self.offsets[index]
        layers = self.target.unflatten(flat)
        widest, depth = self.space.max_width, self.space.max_depth
        width = encoded.to(context.device)
        last = width.gather(1, ((width > 0).sum(1, keepdim=True) - 1).clamp(min=0))  # (N, 1)
        units = torch.arange(widest, device=context.device)
        out: list[LayerParams] = []
        for i, (w, b) in enumerate(layers):
            if i < depth:  # hidden layer i: width[i] rows, reading width[i - 1] (or all) columns
                rows = units < width[:, i : i + 1]
                fan_in = width[:, i - 1 : i] if i > 0 else None
            else:  # the output layer: every row, the last hidden layer's columns
                rows, fan_in = None, last
            mask = torch.ones_like(w) if rows is None else rows[:, :, None].expand_as(w).float()
            scale = torch.ones(w.shape[0], 1, 1, device=w.device)
            if fan_in is not None:
                mask = mask * (units < fan_in)[:, None, :].float()
                scale = torch.sqrt(widest / fan_in.clamp(min=1).float())[:, :, None]
            out.append((w * mask * scale, b if rows is None else b * rows.float()))
        return out

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, encoded: torch.Tensor
    ) -> torch.Tensor:
        """``x (B, in_dim)``, ``context (B, C)`` (or ``None`` with ``context_dim=0``),
        ``encoded (B, max_depth)`` members -> ``(B, out_dim)``. Heads are generated once per
        distinct ``(context, member)`` row."""
        if context is None:
            context = x.new_zeros(x.shape[0], 0)
        key = torch.cat([context, encoded.to(context)], dim=-1)

        def generate():
            unique, group = unique_rows(key)
            members = unique[:, self.context_dim :].long()
            layers = self.generate(unique[:, : self.context_dim], members)
            return members, layers, group, grouping(group, len(unique))

        hit = self._cache.cached(self, key, generate, self.reuse_heads)
        members, layers, group, layout = hit
        if layout.layout is None:  # too uneven to pad: one head per sample
            layers = [(w[group], b[group]) for w, b in layers]
            members, layout = members[group], None
            h = x.unsqueeze(1)  # (B, 1, in)
        else:  # every head multiplies all of its samples at once
            h = to_groups(x, layout)  # (U, M, in)
        hidden = []
        for w, b in layers[:-1]:
            h = self.activation(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)))
            hidden.append(h)
        # each head reads out from its member's last hidden layer
        depth = (members > 0).sum(1)
        picked = torch.stack(hidden, dim=1)[torch.arange(len(depth), device=x.device), depth - 1]
        w, b = layers[-1]
        out = torch.baddbmm(b.unsqueeze(1), picked, w.transpose(1, 2))
        return out.squeeze(1) if layout is None else from_groups(out, layout)

    @torch.no_grad()
    def member_layers(self, context: torch.Tensor | None, member: Sequence[int]) -> list[nn.Linear]:
        """The plain layers of one member for one ``context (C,)``: ``nn.Linear`` s
        ``in_dim -> member... -> out_dim`` (put the activation between them) computing what
        :meth:`forward` computes for that member and context."""
        member = self.space.check(member)
        encoded = self.space.encode([member])
        context = torch.zeros(0) if context is None else context
        layers = self.generate(context.reshape(1, -1).float(), encoded)
        sizes = (self.in_dim, *member, self.out_dim)
        picked = [*layers[: len(member)], layers[-1]]
        out = []
        for (w, b), fan_in, fan_out in zip(picked, sizes[:-1], sizes[1:], strict=True):
            linear = nn.Linear(fan_in, fan_out)
            linear.weight.copy_(w[0, :fan_out, :fan_in])
            linear.bias.copy_(b[0, :fan_out])
            out.append(linear)
        return out
