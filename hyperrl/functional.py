"""Apply generated MLP heads to a batch.

Contexts repeat: constant within an episode, shared by the samples of one env in a minibatch. So the
hypernetwork runs once per *distinct* context and each generated head is applied to all of its
samples with one batched matmul, never by materialising a weight matrix per sample. The layouts:

- :func:`mlp_shared`: one head for the whole batch (plain matmul);
- :func:`mlp_grouped`: ``U`` heads, sample ``i`` uses head ``group[i]`` (grouped batched matmul);
- :func:`mlp_per_sample`: one head per sample (the naive path; the input-conditioned one);
- :func:`mlp_low_rank`: low-rank heads ``W0 + U V^T`` applied factored, never materialised;
- :func:`mlp_contracted`: one head per sample applied through a generator linear in its
  embedding, never materialised (off-policy minibatches, small heads).

``activation`` is applied after every layer but the last.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from hyperrl.target import LayerParams

Activation = Callable[[torch.Tensor], torch.Tensor]
#: One layer of a generator whose output is linear in an embedding: ``(z (B, d), A (P, d),
#: a (P,))``, the layer's flat parameters (its weight ``(out, in)`` row-major, then its bias)
#: being ``A z + a`` for each sample's embedding ``z``.
LinearLayerMap = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: mlp_grouped pads every group to the largest one; beyond this much padding it gathers per sample.
MAX_PADDING_RATIO = 2.0


_BIT_VIEWS = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


@functools.cache
def _hash_multipliers(width: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0x5EED)
    return (torch.randint(1, 2**62, (width,), generator=gen, dtype=torch.int64) | 1).to(device)


def unique_rows(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``context (B, C)``: ``(unique (U, C), group (B,))`` with
    ``unique[group] == context``.

    Rows are hashed from their bits to one int64 key each, so the dedup is a 1-D unique (an order
    of magnitude faster than ``torch.unique(dim=0)`` on the CPU); the result is verified and a
    hash collision falls back to the exact row-wise unique.
    """
    batch = context.shape[0]
    if batch > 0 and bool((context == context[:1]).all()):
        return context[:1], torch.zeros(batch, dtype=torch.long, device=context.device)
    bits_dtype = _BIT_VIEWS.get(context.dtype)
    if bits_dtype is not None and batch > 0:
        bits = context.contiguous().view(bits_dtype).to(torch.int64)
        keys = (bits * _hash_multipliers(context.shape[1], context.device)).sum(dim=1)
        unique_keys, group = torch.unique(keys, return_inverse=True)
        first = torch.full_like(unique_keys, batch).scatter_reduce(
            0, group, torch.arange(batch, device=context.device), "amin"
        )
        unique = context[first]
        if torch.equal(unique[group], context):
            return unique, group
    return torch.unique(context, dim=0, return_inverse=True)


def mlp_shared(
    x: torch.Tensor, layers: Sequence[LayerParams], activation: Activation
) -> torch.Tensor:
    """``x (B, in)`` through ``[(W (out, in), b (out,)), ...]`` -> ``(B, out)``."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = F.linear(h, w, b)
        if i < len(layers) - 1:
            h = activation(h)
    return h


def _mlp_batched(
    h: torch.Tensor, layers: Sequence[LayerParams], activation: Activation
) -> torch.Tensor:
    """``h (G, M, in)`` through ``[(W (G, out, in), b (G, out)), ...]`` -> ``(G, M, out)``."""
    for i, (w, b) in enumerate(layers):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < len(layers) - 1:
            h = activation(h)
    return h


def mlp_per_sample(
    x: torch.Tensor, layers: Sequence[LayerParams], activation: Activation
) -> torch.Tensor:
    """``x (B, in)`` through ``[(W (B, out, in), b (B, out)), ...]`` -> ``(B, out)``."""
    return _mlp_batched(x.unsqueeze(1), layers, activation).squeeze(1)


class Grouping(NamedTuple):
    """Which head each sample uses and where it sits in the padded block (:func:`grouping`)."""

    group: torch.Tensor  #: ``(B,)`` long, values in ``[0, num_groups)``
    num_groups: int
    #: ``(dest (B,), M)``: sample ``i`` at row ``dest[i]`` of the ``(num_groups * M)`` block; or
    #: ``None``: too uneven to pad, gather the heads per sample
    layout: tuple[torch.Tensor, int] | None


def grouping(group: torch.Tensor, num_groups: int) -> Grouping:
    """The layout :func:`mlp_grouped` and :func:`mlp_low_rank` use for ``group``; computed once,
    it can be passed to them again (a rollout reusing its heads: no sort, no host sync)."""
    if num_groups == 1:  # one head for all: the block is the batch
        return Grouping(group, 1, (torch.arange(len(group), device=group.device), len(group)))
    return Grouping(group, num_groups, _padded_layout(group, num_groups))


def _too_uneven(num_groups: int, width: int, batch: int) -> bool:
    """Whether padding every group to ``width`` samples would exceed :data:`MAX_PADDING_RATIO`
    times the batch (then the heads are gathered per sample instead)."""
    return num_groups * width > MAX_PADDING_RATIO * batch


def _padded_layout(group: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, int] | None:
    """Where each sample goes in a group-major, zero-padded ``(U * M)`` block (``M`` = the
    largest group): ``(dest (B,), M)``, or ``None`` when padding would exceed
    :data:`MAX_PADDING_RATIO` times the batch (then the heads are gathered per sample).

    Moving the samples costs ``B x in``; gathering heads per sample costs ``B x out x in`` (a
    rollout where every world has its own context spent most of its time there). Equal groups
    need no padding: one sample per head (a rollout) or a minibatch laid out by env."""
    batch = group.shape[0]
    counts = torch.bincount(group, minlength=num_groups)
    width = int(counts.max())
    if _too_uneven(num_groups, width, batch):
        return None
    order = torch.argsort(group, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(group)
    slot[order] = torch.arange(batch, device=group.device) - starts[group[order]]
    return group * width + slot, width


class Runs(NamedTuple):
    """``W`` runs of ``T`` consecutive samples -- a world's rollout in an env-major minibatch --
    each cut into segments of consecutive samples that share a context (:func:`split_runs`)."""

    segment: torch.Tensor  #: ``(W, T)`` long: which segment of its run a sample is in
    pos: torch.Tensor  #: ``(W, T)`` long: where in its segment a sample is
    counts: torch.Tensor  #: ``(W,)`` long: segments per run
    host_counts: torch.Tensor  #: ``counts`` on the CPU
    width: int  #: the longest segment


def split_runs(starts: torch.Tensor) -> Runs:
    """The segments of ``W`` runs from ``starts (W, T)`` bool, true where a sample's context
    differs from the one before it (a run's first sample always starts a segment). One host
    sync, for the counts and the longest segment."""
    starts = starts.clone()
    starts[:, 0] = True
    steps = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    pos = steps - torch.where(starts, steps, 0).cummax(dim=1).values
    segment = starts.long().cumsum(dim=1) - 1
    counts = segment[:, -1] + 1
    host = torch.cat([counts, pos.max().view(1) + 1]).cpu()
    return Runs(segment, pos, counts, host[:-1], int(host[-1]))


def runs_grouping(runs: Runs, picked: torch.Tensor, picked_host: torch.Tensor) -> Grouping:
    """The :class:`Grouping` of the runs ``picked (K,)`` laid end to end (``K x T`` samples,
    env-major), one group per segment, computed on the device without a host sync (the same
    indices on the CPU, ``picked_host``, give the number of groups). With it, a minibatch of
    whole runs needs no deduplication (:meth:`hyperrl.HyperHead.forward_grouped`).
    """
    counts = runs.counts[picked]
    group = ((counts.cumsum(0) - counts).unsqueeze(1) + runs.segment[picked]).reshape(-1)
    num_groups = int(runs.host_counts[picked_host].sum())
    if _too_uneven(num_groups, runs.width, len(group)):
        return Grouping(group, num_groups, None)
    return Grouping(
        group,
        num_groups,
        (group * runs.width + runs.pos[picked].reshape(-1), runs.width),
    )


def _rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` along dim 0 as ``index_select``: its backward adds whole rows, where the
    backward of ``t[index]`` accumulates in an order that varies between runs on a multithreaded
    CPU (and is 2.5x slower there), which made seeded training irreproducible."""
    return t.index_select(0, index)


def _pad(x: torch.Tensor, dest: torch.Tensor, num_groups: int, width: int) -> torch.Tensor:
    """``x (B, in)`` -> ``(U, M, in)``, sample ``i`` at flat row ``dest[i]``, zeros elsewhere."""
    padded = x.new_zeros(num_groups * width, x.shape[1]).index_copy(0, dest, x)
    return padded.view(num_groups, width, -1)


def to_groups(x: torch.Tensor, layout: Grouping) -> torch.Tensor:
    """``x (B, in)`` -> ``(U, M, in)``, group-major and zero-padded, for a ``layout`` that pads
    (``layout.layout`` not ``None``): for heads applied layer by layer outside
    :func:`mlp_grouped`; :func:`from_groups` puts the rows back."""
    dest, width = layout.layout
    return _pad(x, dest, layout.num_groups, width)


def from_groups(out: torch.Tensor, layout: Grouping) -> torch.Tensor:
    """Inverse of :func:`to_groups`: ``(U, M, out)`` -> ``(B, out)``."""
    dest, width = layout.layout
    return _rows(out.reshape(layout.num_groups * width, -1), dest)


def mlp_grouped(
    x: torch.Tensor,
    layers: Sequence[LayerParams],
    group: torch.Tensor | Grouping,
    activation: Activation,
) -> torch.Tensor:
    """Apply head ``group[i]`` to sample ``i``.

    Samples are laid out group-major in a zero-padded ``(U, M, in)`` block (``M`` = the largest
    group) so each generated head multiplies all of its samples at once. When the groups are so
    uneven that padding would exceed :data:`MAX_PADDING_RATIO` times the batch, the heads are
    gathered per sample instead.

    :param x: ``(B, in)``.
    :param layers: ``[(W (U, out, in), b (U, out)), ...]``.
    :param group: ``(B,)`` long, values in ``[0, U)``, or its :func:`grouping`.
    :return: ``(B, out)``.
    """
    num_groups = layers[0][0].shape[0]
    if num_groups == 1:
        return mlp_shared(x, [(w[0], b[0]) for w, b in layers], activation)
    group, _, layout = group if isinstance(group, Grouping) else grouping(group, num_groups)
    if layout is None:
        return mlp_per_sample(
            x, [(_rows(w, group), _rows(b, group)) for w, b in layers], activation
        )
    dest, width = layout
    out = _mlp_batched(_pad(x, dest, num_groups, width), layers, activation)
    return _rows(out.reshape(num_groups * width, -1), dest)


def mlp_low_rank(
    x: torch.Tensor,
    layers: Sequence[tuple[torch.Tensor, ...]],
    group: torch.Tensor | Grouping,
    activation: Activation,
) -> torch.Tensor:
    """Apply low-rank head ``group[i]`` to sample ``i`` as ``W0 h + U (V^T h) + b0 + c``.

    Costs ``r (in + out)`` per sample and layer on top of the shared ``W0`` matmul however the
    samples share contexts: the groups laid out as in :func:`mlp_grouped` and multiplied per
    group, or, when they are too uneven to pad (off-policy minibatches), the factors gathered
    per sample.

    :param x: ``(B, in)``.
    :param layers: ``[(W0 (out, in), b0 (out,), U (G, out, r), V (G, in, r), c (G, out)), ...]``.
    :param group: ``(B,)`` long, values in ``[0, G)``, or its :func:`grouping`.
    :return: ``(B, out)``.
    """
    num_groups = layers[0][2].shape[0]
    group, _, layout = group if isinstance(group, Grouping) else grouping(group, num_groups)
    if layout is not None:
        dest, width = layout
        h = _pad(x, dest, num_groups, width)  # (G, M, in)
        for i, (w0, b0, u, v, c) in enumerate(layers):
            low = torch.bmm(torch.bmm(h, v), u.transpose(1, 2))  # (G, M, out)
            h = F.linear(h, w0, b0) + low + c.unsqueeze(1)
            if i < len(layers) - 1:
                h = activation(h)
        return _rows(h.reshape(num_groups * width, -1), dest)
    h = x
    for i, (w0, b0, u, v, c) in enumerate(layers):
        proj = torch.bmm(h.unsqueeze(1), _rows(v, group)).squeeze(1)  # (B, r)
        low = torch.bmm(_rows(u, group), proj.unsqueeze(-1)).squeeze(-1)
        h = F.linear(h, w0, b0) + low + _rows(c, group)
        if i < len(layers) - 1:
            h = activation(h)
    return h


def mlp_contracted(
    x: torch.Tensor, layers: Sequence[LinearLayerMap], activation: Activation
) -> torch.Tensor:
    """Apply each sample's generated head without generating it:
    ``W(z) h = sum_k z_k (A_k h) + W_0 h``.

    For a generator linear in its embedding (``per_layer``, ``shared``), the contraction goes
    through the generator's own output layer: ``B x in x out x d`` per layer, the cost of
    generating one head per sample, but no ``(B, out, in)`` weights are written and read back:
    with a head per sample (off-policy minibatches) the forward and backward take 0.71x the time
    of generating them (docs/BENCHMARKS.md).

    :param x: ``(B, in)``.
    :param layers: per layer ``(z (B, d), A (P, d), a (P,))`` with ``P = out * in + out``.
    :return: ``(B, out)``.
    """
    h = x
    for i, (z, gen_weight, gen_bias) in enumerate(layers):
        fan_in = h.shape[1]
        fan_out = gen_weight.shape[0] // (fan_in + 1)
        split = fan_out * fan_in  # weight rows, then bias rows
        a_k = gen_weight[:split].view(fan_out, fan_in, -1)  # (out, in, d): A_k along the last
        mixed = (h @ a_k.transpose(0, 1).reshape(fan_in, -1)).view(len(h), fan_out, -1)
        h = (
            torch.bmm(mixed, z.unsqueeze(-1)).squeeze(-1)  # sum_k z_k (A_k h)
            + F.linear(h, gen_bias[:split].view(fan_out, fan_in))  # W_0 h: the weight at z = 0
            + F.linear(z, gen_weight[split:], gen_bias[split:])  # the generated bias
        )
        if i < len(layers) - 1:
            h = activation(h)
    return h
