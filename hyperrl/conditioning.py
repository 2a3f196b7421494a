"""The conditioning ladder: heads ``(x (B, in), context (B, C)) -> (B, out)`` with one interface.

=================  ========================================================================
``"none"``         plain MLP over ``x``; the context is ignored (the no-context baseline)
``"concat"``       MLP over ``[x, context]``
``"film"``         MLP over ``x`` whose hidden layers are scaled and shifted by the context
``"lowrank_hyper"``  generated MLP, low-rank generator (``W = W0 + U(z) V(z)^T``)
``"hyper"``        generated MLP, full generator (``generator=`` per_layer | shared | chunked)
=================  ========================================================================

All heads compute the same MLP shape ``in -> hidden... -> out`` with the same activation, so a
comparison changes one keyword. FiLM and the hyper heads read the context through the same
:class:`~hyperrl.generators.ContextEmbedding`; ``linear_context`` (default ``True``) adds its
linear term, which keeps their output following the context beyond the training range, to both.
``layer_gains`` (one per layer) selects SB3's orthogonal init with those gains for the ordinary
layers and as the standard init the generators reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hyperrl.functional import (
    Grouping,
    grouping,
    mlp_contracted,
    mlp_grouped,
    mlp_low_rank,
    mlp_per_sample,
    mlp_shared,
    unique_rows,
)
from hyperrl.generators import (
    ContextEmbedding,
    Generator,
    LowRankGenerator,
    OutputCache,
    make_generator,
)
from hyperrl.init import check_gains, init_linear
from hyperrl.target import TargetSpec

CONDITIONINGS = ("none", "concat", "film", "lowrank_hyper", "hyper")
#: what a head's generator reads: the context, the head's own input, or both (the policies name
#: the input "observation": :data:`hyperrl.policies.GENERATOR_INPUTS`)
HEAD_GENERATOR_INPUTS = ("context", "input", "both")
#: multiply-adds per batch below which a hyper head with several contexts in its batch applies
#: them through its generator (:meth:`HyperHead._forward_uncached`)
CONTRACT_SMALL = 2**20


class ConditionedHead(nn.Module):
    """Base of the ladder. Subclasses implement ``forward(x, context)``.

    :param in_dim: width of ``x``.
    :param out_dim: width of the output.
    :param context_dim: width of ``context``.
    :param hidden_sizes: hidden widths of the head's MLP.
    :param activation: activation class between the head's layers.
    :param layer_gains: ``len(hidden_sizes) + 1`` gains for SB3-style orthogonal init, or ``None``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        context_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
        layer_gains: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.target = TargetSpec((in_dim, *hidden_sizes, out_dim))
        if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 0:
            raise ValueError(f"context_dim must be a non-negative int, got {context_dim!r}")
        self.in_dim, self.out_dim, self.context_dim = in_dim, out_dim, context_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self.activation = activation()
        self.layer_gains = check_gains(self.target, layer_gains)

    def _check(self, x: torch.Tensor, context: torch.Tensor) -> None:
        self._check_input(x)
        if context.dim() != 2 or context.shape != (x.shape[0], self.context_dim):
            raise ValueError(
                f"{type(self).__name__} expects context of shape ({x.shape[0]}, "
                f"{self.context_dim}), got {tuple(context.shape)}"
            )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (B, {self.in_dim}), got {tuple(x.shape)}"
            )

    def _linears(self, in_dim: int) -> nn.ModuleList:
        """Ordinary layers of the head's shape, with ``in_dim`` as the first input width."""
        sizes = (in_dim, *self.target.sizes[1:])
        linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        for i, lin in enumerate(linears):
            init_linear(lin, None if self.layer_gains is None else self.layer_gains[i])
        return linears


class MLPHead(ConditionedHead):
    """``"none"``: an ordinary MLP over ``x``; the context is accepted and ignored."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.linears = self._linears(self.in_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self._check(x, context)
        return mlp_shared(x, [(lin.weight, lin.bias) for lin in self.linears], self.activation)


class ConcatHead(ConditionedHead):
    """``"concat"``: an ordinary MLP over ``[x, context]``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.linears = self._linears(self.in_dim + self.context_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self._check(x, context)
        layers = [(lin.weight, lin.bias) for lin in self.linears]
        return mlp_shared(torch.cat([x, context], dim=-1), layers, self.activation)


class FiLMHead(ConditionedHead):
    """``"film"`` (Perez et al., 2018): hidden layer ``l`` computes
    ``act(gamma_l(z) * (W_l h + b_l) + beta_l(z))``; ``gamma = 1, beta = 0`` at init. A head
    without hidden layers modulates its input instead: ``W (gamma(z) * x + beta(z)) + b``.

    :param film_hidden: hidden widths of the network that reads the context.
    :param linear_context: add the context's linear term to the embedding (see
        :class:`~hyperrl.generators.ContextEmbedding`); ``False``: direction only.
    """

    def __init__(
        self,
        *args,
        film_hidden: Sequence[int] = (64,),
        linear_context: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.linears = self._linears(self.in_dim)
        self.film_embedding = ContextEmbedding(self.context_dim, film_hidden, linear=linear_context)
        n = sum(self.hidden_sizes) if self.hidden_sizes else self.in_dim
        self.film_out = nn.Linear(self.film_embedding.width, 2 * n)
        with torch.no_grad():
            self.film_out.weight.zero_()
            self.film_out.bias.copy_(torch.cat([torch.ones(n), torch.zeros(n)]))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self._check(x, context)
        gamma, beta = self.film_out(self.film_embedding(context)).chunk(2, dim=-1)
        if not self.hidden_sizes:  # a single layer: modulate its input features
            return self.linears[0](x * gamma + beta)
        h, at = x, 0
        for lin, width in zip(self.linears[:-1], self.hidden_sizes, strict=True):
            h = lin(h) * gamma[:, at : at + width] + beta[:, at : at + width]
            h = self.activation(h)
            at += width
        return self.linears[-1](h)


class HyperHead(ConditionedHead):
    """``"hyper"`` / ``"lowrank_hyper"``: an MLP whose every weight and bias is generated.

    :param generator: one of :data:`hyperrl.generators.GENERATORS`.
    :param generator_input: what the generator reads: ``"context"`` (default; generated once per
        distinct context in the batch), ``"input"`` (dynamic: the head's own input ``x``
        generates its weights, as in Sarafian et al., 2021) or ``"both"`` (``[x, context]``).
    :param dedup: generate once per distinct context (``True``) or once per sample (the naive
        path, kept for tests and benchmarks). Ignored when the generator reads ``x``.
    :param init: the generator's init scheme, see :mod:`hyperrl.init`.
    :param linear_context: give the generator's embedding its linear context term (default), so
        the generated weights keep following the context beyond the training range (see
        :class:`~hyperrl.generators.ContextEmbedding`); ``False``: the direction-only embedding.
    :param generator_kwargs: passed to the generator (``hidden``, ``rank``, ``chunk_size``...).
    :param contract: where it is cheaper, apply the heads through a generator linear in its
        embedding instead of generating them (:meth:`_forward_uncached`); ``False``: always
        generate (the same function; for benchmarks). An attribute, it can be changed later.

    Set ``reuse_heads = True`` to keep the heads generated for the last batch's contexts and reuse
    them, outside autograd, until the contexts or the parameters change (see ``_grouped_heads``).
    Set ``given_groups`` to a :class:`~hyperrl.functional.Grouping` (which samples share a
    context) and every call until it is cleared takes it instead of deduplicating the contexts:
    no sort, no host sync. The caller vouches for the layout; only the batch size is checked
    (:func:`hyperrl.policies.contexts_grouped` sets and clears it on a policy's heads).
    """

    def __init__(
        self,
        *args,
        generator: str = "per_layer",
        generator_input: str = "context",
        dedup: bool = True,
        init: str = "bias",
        linear_context: bool = True,
        generator_kwargs: dict | None = None,
        contract: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if generator_input not in HEAD_GENERATOR_INPUTS:
            raise ValueError(
                f"unknown generator_input {generator_input!r}; choose one of "
                f"{HEAD_GENERATOR_INPUTS}"
            )
        if generator_input != "input" and self.context_dim == 0:
            raise ValueError(f"generator_input={generator_input!r} needs context_dim > 0")
        gen_dim = {
            "context": self.context_dim,
            "input": self.in_dim,
            "both": self.in_dim + self.context_dim,
        }[generator_input]
        self.generator_input = generator_input
        self.dedup = dedup
        self.reuse_heads = False
        self.given_groups: Grouping | None = None
        self._cache = OutputCache()
        self.generator: Generator = make_generator(
            generator,
            gen_dim,
            self.target,
            init=init,
            layer_gains=self.layer_gains,
            linear_context=linear_context,
            **(generator_kwargs or {}),
        )
        self.contract = contract
        #: multiply-adds per sample of applying the head through the generator
        #: (:func:`~hyperrl.functional.mlp_contracted`), for generators linear in an embedding
        self._contracted_cost: int | None = None
        if self.generator.linear_in_embedding:
            widths = [z.shape[1] for z, _, _ in self.generator.linear_maps(torch.zeros(1, gen_dim))]
            self._contracted_cost = sum(
                ls.fan_in * ls.fan_out * (w + 1)
                for ls, w in zip(self.target.layers, widths, strict=True)
            )
        #: ``(per head, per sample)`` costs that :meth:`_factored` weighs, for low-rank heads
        self._low_rank_costs: tuple[int, float] | None = None
        if isinstance(self.generator, LowRankGenerator):
            layers = self.target.layers
            self._low_rank_costs = (
                sum(ls.fan_in * ls.fan_out for ls in layers),
                sum(ls.fan_in + ls.fan_out for ls in layers) / 2,
            )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self._check(x, context)
        if self.generator_input != "context":  # dynamic: every sample generates its own head
            gen_in = x if self.generator_input == "input" else torch.cat([x, context], dim=-1)
            every = torch.arange(x.shape[0], device=x.device)
            heads = self._heads(gen_in, self._factored(len(x), len(x)))
            return self._run_heads(x, heads, Grouping(every, len(x), (every, 1)))
        if not self.dedup:
            return mlp_per_sample(x, self.generate(context), self.activation)
        if self.given_groups is not None:
            groups = self.given_groups
            if groups.group.shape != x.shape[:1]:
                raise ValueError(
                    f"given_groups is for {len(groups.group)} samples, the batch has {len(x)}"
                )
            # each group's context from its first sample, as the deduplication takes it
            first = torch.full((groups.num_groups,), len(x), device=x.device).scatter_reduce(
                0, groups.group, torch.arange(len(x), device=x.device), "amin"
            )
            return self.forward_grouped(x, context[first], groups)
        cached = self.reuse_heads and not torch.is_grad_enabled()  # a rollout: reuse the heads
        if self.contract and self._contracted_cost is not None and not cached:
            return self._forward_uncached(x, context)
        heads, groups = self._grouped_heads(context)
        return self._run_heads(x, heads, groups)

    def _forward_uncached(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Apply the heads through the generator (:func:`mlp_contracted`) where that is cheaper
        than generating one per distinct context, else generate and group; nothing is cached.

        Measured on the CPU (docs/BENCHMARKS.md), contracting wins:

        - where there are at least half as many contexts as samples, or they are too uneven to
          pad and the heads would be gathered per sample (an off-policy minibatch): 0.71x the
          forward and backward time of a 256 -> 12 head at 256 samples, and SB3's SAC 1.16-1.23x
          faster with a context per replay sample. Below that, generating each head once costs
          fewer multiply-adds than contracting every sample (a PPO minibatch of a few worlds).
        - for heads so small that ``batch x in x out x d`` multiply-adds stay below
          :data:`CONTRACT_SMALL`, where the deduplication and grouping's small operations cost
          as much as the contraction: the contexts are not even deduplicated (SB3's PPO with an
          output-layer head, 1.06x faster).
        """
        self._cache.clear()  # an update may follow (see OutputCache)
        if len(x) * self._contracted_cost <= CONTRACT_SMALL:
            return mlp_contracted(x, self.generator.linear_maps(context), self.activation)
        unique, group = unique_rows(context)
        groups = None if 2 * len(unique) >= len(x) else grouping(group, len(unique))
        if groups is None or groups.layout is None:  # the layout is not computed when not needed
            return mlp_contracted(x, self.generator.linear_maps(unique, group), self.activation)
        return self._run_heads(x, self._heads(unique, factored=False), groups)

    def forward_grouped(
        self, x: torch.Tensor, contexts: torch.Tensor, groups: Grouping
    ) -> torch.Tensor:
        """:meth:`forward` for a caller that knows which samples share a context: ``x (B,
        in)``, the distinct ``contexts (G, C)`` and ``groups``, the
        :func:`~hyperrl.functional.grouping` of which of them each sample uses -> ``(B, out)``.

        Skips the deduplication (sorts and, on a GPU, host syncs), so a fixed layout -- an
        env-major minibatch, say -- runs without syncs and can be captured in a CUDA graph.
        """
        if self.generator_input != "context":
            raise ValueError("forward_grouped needs generator_input='context'")
        self._check_input(x)
        if contexts.dim() != 2 or contexts.shape[1] != self.context_dim:
            raise ValueError(
                f"expected contexts of shape (G, {self.context_dim}), got {tuple(contexts.shape)}"
            )
        if groups.group.shape != x.shape[:1] or groups.num_groups != len(contexts):
            raise ValueError(
                f"groups must assign each of the {len(x)} samples one of the {len(contexts)} "
                f"contexts; got {tuple(groups.group.shape)} samples over {groups.num_groups}"
            )
        heads = self._heads(contexts, self._factored(len(contexts), len(x)))
        return self._run_heads(x, heads, groups)

    def _factored(self, num_heads: int, batch: int) -> bool:
        """Whether to apply low-rank heads factored, ``W0 h + U (V^T h)`` (:func:`mlp_low_rank`),
        rather than materialise every ``W = W0 + U V^T`` and group (:func:`mlp_grouped`).
        Materialising costs ``r in out`` per head; factored, the matmul is shared and the extra
        ``r (in + out)`` per sample runs in skinny matmuls. Measured on the CPU (forward and
        backward, heads of width 64 and 256), factored wins once ``heads x sum(in out)`` reaches
        ``samples x sum(in + out) / 2``: a rollout, a minibatch of short per-world runs, wide
        layers; with few heads for many samples, materialising does."""
        if self._low_rank_costs is None:
            return False
        per_head, per_sample = self._low_rank_costs
        return num_heads * per_head >= batch * per_sample

    def _heads(self, gen_in: torch.Tensor, factored: bool) -> list[tuple[torch.Tensor, ...]]:
        """Generated heads for ``gen_in (G, C)``: per layer ``(W, b)``, or low-rank factors."""
        if factored:
            return self.generator.factors(gen_in)
        return self.target.unflatten(self.generator(gen_in))

    def _run_heads(
        self, x: torch.Tensor, heads: list[tuple[torch.Tensor, ...]], groups: Grouping
    ) -> torch.Tensor:
        if len(heads[0]) == 5:  # low-rank factors
            return mlp_low_rank(x, heads, groups, self.activation)
        return mlp_grouped(x, heads, groups, self.activation)

    def _grouped_heads(
        self, context: torch.Tensor
    ) -> tuple[list[tuple[torch.Tensor, ...]], Grouping]:
        """One head per distinct row of ``context (B, C)`` and which head each row uses (with
        its layout, :func:`~hyperrl.functional.grouping`); reused across calls while the contexts
        and the parameters stay.

        Only with ``reuse_heads`` on (the policies turn it on for networks updated by their
        optimizer; :class:`~hyperrl.generators.OutputCache` says why not for target networks),
        outside autograd. A hit skips deduplicating and laying out: sorts and, on a GPU, four
        host syncs.
        """

        def generate() -> tuple[list[tuple[torch.Tensor, ...]], Grouping]:
            unique, group = unique_rows(context)
            heads = self._heads(unique, self._factored(len(unique), len(context)))
            return heads, grouping(group, len(unique))

        return self._cache.cached(self.generator, context, generate, self.reuse_heads)

    def train(self, mode: bool = True) -> HyperHead:
        self._cache.clear()
        return super().train(mode)

    def _apply(self, *args: Any, **kwargs: Any) -> HyperHead:  # .to(), .double(): new tensors
        self._cache.clear()
        return super()._apply(*args, **kwargs)

    def generate(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The head's per-layer ``(W (N, out, in), b (N, out))`` for contexts ``(N, C)``."""
        return self._heads(context, factored=False)


def make_head(
    conditioning: str,
    in_dim: int,
    out_dim: int,
    context_dim: int,
    hidden_sizes: Sequence[int] = (64, 64),
    activation: type[nn.Module] = nn.Tanh,
    layer_gains: Sequence[float] | None = None,
    **kwargs,
) -> ConditionedHead:
    """Build a head of the ladder by name (:data:`CONDITIONINGS`).

    ``kwargs`` go to the head: ``film_hidden`` and ``linear_context`` for ``"film"``;
    ``generator``, ``generator_input``, ``init``, ``dedup``, ``linear_context``,
    ``generator_kwargs`` for the hyper heads (``"lowrank_hyper"`` fixes ``generator="lowrank"``).
    """
    common = dict(
        in_dim=in_dim,
        out_dim=out_dim,
        context_dim=context_dim,
        hidden_sizes=hidden_sizes,
        activation=activation,
        layer_gains=layer_gains,
    )
    if conditioning == "lowrank_hyper":
        if kwargs.setdefault("generator", "lowrank") != "lowrank":
            raise ValueError("conditioning='lowrank_hyper' implies generator='lowrank'")
        conditioning = "hyper"
    classes = {"none": MLPHead, "concat": ConcatHead, "film": FiLMHead, "hyper": HyperHead}
    if conditioning not in classes:
        raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {CONDITIONINGS}")
    return classes[conditioning](**common, **kwargs)
