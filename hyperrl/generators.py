"""Generators: ``context (N, context_dim) -> flat head parameters (N, target.num_params)``.

The seed paper's taxonomy, all behind :class:`Generator`'s one interface:

========================  =========================================================================
``"per_layer"``           direct; one hypernetwork (embedding MLP + output layer) per target layer
``"shared"``              direct; one hypernetwork for the whole head
``"chunked"``             indirect (Ha et al., 2016); learned chunk embeddings and the context
                          embedding go through one shared generator that emits the weights a chunk
                          at a time; biases come from a direct output layer
``"lowrank"``             indirect; ``W = W0 + U(z) V(z)^T``, ``b = b0 + c(z)`` per target layer
========================  =========================================================================

Every generator reads the context through a :class:`ContextEmbedding` of two parts:

- a small MLP ending in a :class:`ScaledLayerNorm` (a parameter-free LayerNorm divided by the width
  ``d``, so ``sum_k e_k^2 = 1/d`` for every context). The norm is what lets :mod:`hyperrl.init`
  hit the target variance exactly; the ``1/d`` is what makes a generated weight move, under Adam,
  at the rate a directly learned weight would (Adam's step is about ``lr`` per output-layer weight,
  and a generated weight sums ``d`` of them, each times ``|e_k| ~ 1/d``). But a normalised
  embedding keeps only a direction: beyond the training range the generated weights stop
  following the context (they behave as if it were clamped to the range's edge).
- with ``linear_context=True`` (the default) the context itself, divided by its width ``C``,
  appended to the embedding. The output layers' columns that read it start at zero, so the init is
  exactly the one above for every context; under Adam they add at most ``lr * mean_k |c_k|`` per
  step to a generated weight, at most ``lr`` for contexts scaled to ``[-1, 1]`` on the train range
  (the context convention); and they give every generated weight a term linear in the context,
  which keeps growing beyond the training range. ``linear_context=False`` is the old,
  direction-only path.

Parameter counts are given per class as formulas of the context dimension ``C``, embedding width
``d`` (last entry of ``hidden``), the target's parameter count ``P`` and its layers; the tests
check them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from hyperrl.functional import LinearLayerMap
from hyperrl.init import (
    check_gains,
    check_scheme,
    hyperfan_variances,
    init_output_rows,
    position_variances,
    standard_init_sample,
    standard_weight_std,
)
from hyperrl.target import TargetSpec

LowRankFactors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

GENERATORS = ("per_layer", "shared", "chunked", "lowrank")


class ScaledLayerNorm(nn.Module):
    """``(..., d) -> (..., d)``: parameter-free LayerNorm times ``1/d`` (``sum_k e_k^2 = 1/d``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, (self.width,)) / self.width


class ContextEmbedding(nn.Sequential):
    """``(N, in_dim) -> (N, width)``: ``[Linear, activation] * len(hidden)``, then
    :class:`ScaledLayerNorm` (``norm_width = hidden[-1]`` entries); with ``linear=True`` the
    input divided by ``in_dim`` is appended (``width = norm_width + in_dim``), else
    ``width = norm_width``.

    Layers that read the embedding keep the columns past ``norm_width`` at zero at init
    (:meth:`zero_linear_columns`), so the init does not depend on the context's scale.

    Parameter count: ``sum(a * b + b)`` over consecutive pairs of ``(in_dim, *hidden)``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        activation: type[nn.Module] = nn.ReLU,
        linear: bool = True,
    ) -> None:
        hidden = tuple(hidden)
        if not hidden or any(h <= 0 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {hidden}")
        if not isinstance(linear, bool):
            raise ValueError(f"linear_context must be True or False, got {linear!r}")
        layers: list[nn.Module] = []
        for a, b in zip((in_dim, *hidden[:-1]), hidden, strict=True):
            layers += [nn.Linear(a, b), activation()]
        layers.append(ScaledLayerNorm(hidden[-1]))
        super().__init__(*layers)
        self.in_dim, self.linear = in_dim, linear
        self.norm_width = hidden[-1]
        self.width = self.norm_width + (in_dim if linear else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = super().forward(x)
        return torch.cat([e, x / self.in_dim], dim=-1) if self.linear else e

    @torch.no_grad()
    def zero_linear_columns(self, reader: nn.Linear) -> None:
        """Zero the columns of ``reader`` (an ``nn.Linear(width, ...)``) that read the context."""
        reader.weight[:, self.norm_width :] = 0.0


class OutputCache:
    """What was computed from ``module``'s parameters for the last batch of inputs, kept to be
    reused, outside autograd, while the inputs and the parameters stay the same: a rollout passes
    the same contexts at every step until a world resets, so its heads need generating once.

    A hit costs one comparison of the whole input. A parameter's ``_version`` counts most of its
    in-place updates (plain and foreach optimizer steps, ``load_state_dict``), but not writes
    through ``.data`` -- SB3's polyak update of target networks, so a target network must never
    use a cache -- and not a fused optimizer's step. So the owner :meth:`clear` s it on every
    call with autograd (every update starts with one) and when the parameters are replaced
    (``.to()``, ``.double()``).
    """

    def __init__(self) -> None:
        self._params: list[torch.Tensor] | None = None
        self._entry: tuple[torch.Tensor, tuple[int, ...], object] | None = None

    def _versions(self, module: nn.Module) -> tuple[int, ...]:
        if self._params is None:
            self._params = list(module.parameters())
        return tuple(p._version for p in self._params)

    def get(self, module: nn.Module, inputs: torch.Tensor) -> object | None:
        """The value stored for ``inputs`` and ``module``'s current parameters, else ``None``."""
        entry = self._entry
        if (
            entry is None
            or entry[0].shape != inputs.shape
            or entry[0].device != inputs.device
            or entry[1] != self._versions(module)
            or not torch.equal(entry[0], inputs)
        ):
            return None
        return entry[2]

    def put(self, module: nn.Module, inputs: torch.Tensor, value: object) -> None:
        """Keep ``value`` as what ``inputs`` give with ``module``'s current parameters."""
        self._entry = (inputs.clone(), self._versions(module), value)

    def clear(self) -> None:
        self._params, self._entry = None, None

    def cached(self, module: nn.Module, inputs: torch.Tensor, compute, enabled: bool = True):
        """``compute()``, or what it gave for these ``inputs`` and parameters before: kept only
        when ``enabled`` and outside autograd; any other call clears the cache (an update may
        follow it)."""
        if not enabled or torch.is_grad_enabled():
            self.clear()
            return compute()
        hit = self.get(module, inputs)
        if hit is None:
            hit = compute()
            self.put(module, inputs, hit)
        return hit


class Generator(nn.Module, ABC):
    """Base class: maps contexts to the flat parameters of ``target``.

    :param context_dim: width ``C`` of the conditioning input.
    :param target: the generated head's layer sizes.
    :param init: one of :data:`hyperrl.init.INIT_SCHEMES`.
    :param layer_gains: per target layer gain of the standard init (``None``: ``nn.Linear``
        default); also scales the hyperfan variances.
    """

    def __init__(
        self,
        context_dim: int,
        target: TargetSpec,
        init: str = "bias",
        layer_gains: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim <= 0:
            raise ValueError(f"context_dim must be a positive int, got {context_dim!r}")
        if not isinstance(target, TargetSpec):
            raise ValueError(f"target must be a TargetSpec, got {type(target).__name__}")
        self.context_dim = context_dim
        self.target = target
        self.init_scheme = check_scheme(init)
        self.layer_gains = check_gains(target, layer_gains)

    #: whether every layer's parameters are ``A z + a`` for an embedding ``z`` of the context,
    #: so :meth:`linear_maps` can apply the head without generating it
    linear_in_embedding: bool = False

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """:param context: ``(N, context_dim)``. :return: ``(N, target.num_params)``."""
        self._check_context(context)
        return self._generate(context)

    def linear_maps(
        self, context: torch.Tensor, index: torch.Tensor | None = None
    ) -> list[LinearLayerMap]:
        """Per target layer ``(z (B, d), A (P_l, d), a (P_l,))``: the layer's flat parameters for
        ``context[index]`` are ``A z + a`` (:func:`~hyperrl.functional.mlp_contracted` applies
        them without generating them). The embedding runs on ``context (N, C)``, once per row,
        then is gathered by ``index (B,)`` (default: every row once).

        :raises NotImplementedError: for a generator not :attr:`linear_in_embedding`.
        """
        raise NotImplementedError(f"{type(self).__name__} is not linear in an embedding")

    def _check_context(self, context: torch.Tensor) -> None:
        if context.dim() != 2 or context.shape[1] != self.context_dim:
            raise ValueError(
                f"{type(self).__name__} expects context of shape (N, {self.context_dim}), "
                f"got {tuple(context.shape)}"
            )

    @abstractmethod
    def _generate(self, context: torch.Tensor) -> torch.Tensor: ...

    def _gain(self, layer: int) -> float | None:
        return None if self.layer_gains is None else self.layer_gains[layer]

    def _hyperfan(self, layer: int) -> tuple[float, float]:
        """``(Var(W), Var(b))`` the hyperfan scheme aims target layer ``layer`` at."""
        ls, gain = self.target.layers[layer], self._gain(layer)
        return hyperfan_variances(
            self.init_scheme, ls.fan_in, ls.fan_out, 1.0 if gain is None else gain
        )

    def _init_rows(
        self, linear: nn.Linear, rows: torch.Tensor, embedding: ContextEmbedding
    ) -> None:
        """Init an output layer that reads ``embedding`` and writes flat positions ``rows`` (see
        ``init_output_rows``)."""
        scheme = self.init_scheme
        sample = standard_init_sample(self.target, self.layer_gains) if scheme == "bias" else None
        var = position_variances(self.target, scheme, self.layer_gains) if sample is None else None
        init_output_rows(linear, rows, scheme, sample, var, embedding.norm_width)


class PerLayerGenerator(Generator):
    """Direct generation with one hypernetwork per target layer.

    Parameters: ``L * embedding(C, hidden) + sum_l (d' + 1) * P_l`` where ``P_l`` is layer
    ``l``'s weight-plus-bias count and ``d'`` the embedding's width (``d + C`` with the linear
    context term, ``d`` without).
    """

    def __init__(
        self,
        context_dim: int,
        target: TargetSpec,
        hidden: Sequence[int] = (64,),
        activation: type[nn.Module] = nn.ReLU,
        init: str = "bias",
        layer_gains: Sequence[float] | None = None,
        linear_context: bool = True,
    ) -> None:
        super().__init__(context_dim, target, init, layer_gains)
        self.embeddings = nn.ModuleList(
            ContextEmbedding(context_dim, hidden, activation, linear_context) for _ in target.layers
        )
        width = self.embeddings[0].width
        self.heads = nn.ModuleList(nn.Linear(width, ls.num_params) for ls in target.layers)
        for ls, head, emb in zip(target.layers, self.heads, self.embeddings, strict=True):
            self._init_rows(head, torch.arange(ls.weight_start, ls.bias_end), emb)

    linear_in_embedding = True

    def _generate(self, context: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [head(emb(context)) for emb, head in zip(self.embeddings, self.heads, strict=True)],
            dim=-1,
        )

    def linear_maps(
        self, context: torch.Tensor, index: torch.Tensor | None = None
    ) -> list[LinearLayerMap]:
        self._check_context(context)
        maps = []
        for emb, head in zip(self.embeddings, self.heads, strict=True):
            z = emb(context)
            maps.append((z if index is None else z[index], head.weight, head.bias))
        return maps


class SharedGenerator(Generator):
    """Direct generation with one hypernetwork for the whole head.

    Parameters: ``embedding(C, hidden) + (d' + 1) * P`` (``d'``: see :class:`PerLayerGenerator`).
    """

    def __init__(
        self,
        context_dim: int,
        target: TargetSpec,
        hidden: Sequence[int] = (64,),
        activation: type[nn.Module] = nn.ReLU,
        init: str = "bias",
        layer_gains: Sequence[float] | None = None,
        linear_context: bool = True,
    ) -> None:
        super().__init__(context_dim, target, init, layer_gains)
        self.embedding = ContextEmbedding(context_dim, hidden, activation, linear_context)
        self.head = nn.Linear(self.embedding.width, target.num_params)
        self._init_rows(self.head, torch.arange(target.num_params), self.embedding)

    linear_in_embedding = True

    def _generate(self, context: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(context))

    def linear_maps(
        self, context: torch.Tensor, index: torch.Tensor | None = None
    ) -> list[LinearLayerMap]:
        self._check_context(context)
        z = self.embedding(context)
        z = z if index is None else z[index]
        w, b = self.head.weight, self.head.bias
        return [
            (z, w[ls.weight_start : ls.bias_end], b[ls.weight_start : ls.bias_end])
            for ls in self.target.layers
        ]


class ChunkedGenerator(Generator):
    """Chunked generation (Ha et al., 2016): the target's weights, ``W_total`` numbers, are cut into
    ``K = ceil(W_total / chunk_size)`` chunks; chunk ``k`` is
    ``offset_k + scale_k * out(LN(act(A e(z) + B c_k)))`` with learned chunk embeddings ``c_k``, a
    context embedding ``e(z)`` and one generator ``out`` shared by all chunks. ``offset`` is a
    learned base vector (the standard init sample under ``"bias"``, zero under hyperfan) and
    ``scale`` a fixed per-layer std that puts every layer's weights on its own scale. Biases
    (``B_total = sum of fan_out``) come from a direct output layer on ``e(z)``. The chunk path
    normalises again, so with ``linear_context`` the weights get their linear context term from a
    direct layer too: ``+ scale * S z / C``, ``S`` starting at zero.

    Parameters: ``embedding(C, hidden) + K * E + (d' + 1) * G + E * G + (G + 1) * chunk_size
    + W_total + (d' + 1) * B_total [+ C * W_total]`` with ``E = chunk_embedding_dim``,
    ``G = generator_hidden``, ``d'``: see :class:`PerLayerGenerator`; the last term with the
    linear context term.
    """

    def __init__(
        self,
        context_dim: int,
        target: TargetSpec,
        hidden: Sequence[int] = (64,),
        activation: type[nn.Module] = nn.ReLU,
        init: str = "bias",
        layer_gains: Sequence[float] | None = None,
        chunk_size: int = 256,
        chunk_embedding_dim: int = 16,
        generator_hidden: int = 64,
        linear_context: bool = True,
    ) -> None:
        super().__init__(context_dim, target, init, layer_gains)
        if chunk_size <= 0 or chunk_embedding_dim <= 0 or generator_hidden <= 0:
            raise ValueError("chunk_size, chunk_embedding_dim and generator_hidden must be > 0")
        weight_rows = torch.cat(
            [torch.arange(ls.weight_start, ls.weight_end) for ls in target.layers]
        )
        bias_rows = torch.cat([torch.arange(ls.bias_start, ls.bias_end) for ls in target.layers])
        self.num_weights = weight_rows.numel()
        self.chunk_size = chunk_size
        self.num_chunks = math.ceil(self.num_weights / chunk_size)
        self.embedding = ContextEmbedding(context_dim, hidden, activation, linear_context)
        width = self.embedding.width
        self.chunk_embeddings = nn.Parameter(torch.randn(self.num_chunks, chunk_embedding_dim))
        self.mix_context = nn.Linear(width, generator_hidden)
        self.mix_chunk = nn.Linear(chunk_embedding_dim, generator_hidden, bias=False)
        self.act = activation()
        self.norm = ScaledLayerNorm(generator_hidden)
        self.out = nn.Linear(generator_hidden, chunk_size)
        self.offset = nn.Parameter(torch.zeros(self.num_weights))
        self.register_buffer("scale", torch.empty(self.num_weights), persistent=False)
        self.bias_head = nn.Linear(width, bias_rows.numel())
        self.weight_linear = (
            nn.Linear(context_dim, self.num_weights, bias=False) if linear_context else None
        )
        self._init_chunks()
        self._init_rows(self.bias_head, bias_rows, self.embedding)

    @torch.no_grad()
    def _init_chunks(self) -> None:
        start = 0
        for i, ls in enumerate(self.target.layers):
            n = ls.fan_in * ls.fan_out
            if self.init_scheme == "bias":
                std = standard_weight_std(ls.fan_in, ls.fan_out, self._gain(i))
            else:
                std = math.sqrt(self._hyperfan(i)[0])
            self.scale[start : start + n] = std
            start += n
        self.out.bias.zero_()
        if self.weight_linear is not None:
            self.weight_linear.weight.zero_()
        if self.init_scheme == "bias":
            self.out.weight.zero_()
            sample = standard_init_sample(self.target, self.layer_gains)
            self.offset.copy_(torch.cat([w.flatten() for w, _ in self.target.unflatten(sample)]))
        else:  # unit-variance chunk outputs (the input has sum u^2 = 1/G), scaled per layer
            self.out.weight.normal_(0.0, math.sqrt(self.out.in_features))
            self.offset.zero_()

    def _generate(self, context: torch.Tensor) -> torch.Tensor:
        n = context.shape[0]
        e = self.embedding(context)  # (N, d)
        u = self.mix_context(e)[:, None, :] + self.mix_chunk(self.chunk_embeddings)[None]
        chunks = self.out(self.norm(self.act(u)))  # (N, K, chunk_size)
        chunks = chunks.reshape(n, -1)[:, : self.num_weights]
        if self.weight_linear is not None:
            chunks = chunks + self.weight_linear(context / self.context_dim)
        weights = self.offset + self.scale * chunks
        biases = self.bias_head(e)
        parts, w_at, b_at = [], 0, 0
        for ls in self.target.layers:
            parts += [
                weights[:, w_at : w_at + ls.fan_in * ls.fan_out],
                biases[:, b_at : b_at + ls.fan_out],
            ]
            w_at += ls.fan_in * ls.fan_out
            b_at += ls.fan_out
        return torch.cat(parts, dim=-1)


class LowRankGenerator(Generator):
    """Low-rank generation per target layer: ``W = W0 + U(z) V(z)^T`` with ``U: (out, r)``,
    ``V: (in, r)``, and ``b = b0 + c(z)``; ``W0, b0`` are learned.

    Under ``"bias"`` ``W0, b0`` are the standard init and ``U``'s and ``c``'s output layers start at
    zero (``V``'s does not, so ``U`` gets a gradient at step 0). Under hyperfan ``W0, b0`` start at
    zero and ``U``, ``V`` are drawn so that ``Var(U V^T)`` equals the hyperfan target.

    Parameters: ``embedding(C, hidden) + sum_l [P_l + (d' + 1) * (r * (in_l + out_l) + out_l)]``
    (``d'``: see :class:`PerLayerGenerator`).
    """

    def __init__(
        self,
        context_dim: int,
        target: TargetSpec,
        hidden: Sequence[int] = (64,),
        activation: type[nn.Module] = nn.ReLU,
        init: str = "bias",
        layer_gains: Sequence[float] | None = None,
        rank: int = 4,
        linear_context: bool = True,
    ) -> None:
        super().__init__(context_dim, target, init, layer_gains)
        if rank <= 0:
            raise ValueError(f"rank must be a positive int, got {rank}")
        self.rank = rank
        self.embedding = ContextEmbedding(context_dim, hidden, activation, linear_context)
        d, width = self.embedding.norm_width, self.embedding.width
        self.base = nn.Parameter(torch.zeros(target.num_params))
        self.u_heads = nn.ModuleList(nn.Linear(width, ls.fan_out * rank) for ls in target.layers)
        self.v_heads = nn.ModuleList(nn.Linear(width, ls.fan_in * rank) for ls in target.layers)
        self.b_heads = nn.ModuleList(nn.Linear(width, ls.fan_out) for ls in target.layers)
        self._init_low_rank(d)

    @torch.no_grad()
    def _init_low_rank(self, d: int) -> None:
        bias_init = self.init_scheme == "bias"
        if bias_init:
            self.base.copy_(standard_init_sample(self.target, self.layer_gains))
        for i in range(self.target.num_layers):
            u, v, c = self.u_heads[i], self.v_heads[i], self.b_heads[i]
            for lin in (u, v, c):
                lin.bias.zero_()
            if bias_init:
                u.weight.zero_()
                c.weight.zero_()
                v.weight.normal_(0.0, math.sqrt(d / self.rank))  # Var(V) = 1/r
            else:
                var_w, var_b = self._hyperfan(i)
                factor_std = (var_w / self.rank) ** 0.25  # Var(U V^T) = r Var(U) Var(V)
                u.weight.normal_(0.0, factor_std * math.sqrt(d))
                v.weight.normal_(0.0, factor_std * math.sqrt(d))
                c.weight.normal_(0.0, math.sqrt(var_b * d))
            for lin in (u, v, c):
                self.embedding.zero_linear_columns(lin)

    def factors(self, context: torch.Tensor) -> list[LowRankFactors]:
        """Per-layer ``(W0 (out, in), b0 (out,), U (N, out, r), V (N, in, r), c (N, out))``:
        the head without materialising ``W`` (see :func:`hyperrl.functional.mlp_low_rank`).

        :param context: ``(N, context_dim)``.
        """
        self._check_context(context)
        n = context.shape[0]
        e = self.embedding(context)
        out = []
        for (w0, b0), ls, u_head, v_head, b_head in zip(
            self.target.unflatten(self.base),
            self.target.layers,
            self.u_heads,
            self.v_heads,
            self.b_heads,
            strict=True,
        ):
            u = u_head(e).view(n, ls.fan_out, self.rank)
            v = v_head(e).view(n, ls.fan_in, self.rank)
            out.append((w0, b0, u, v, b_head(e)))
        return out

    def _generate(self, context: torch.Tensor) -> torch.Tensor:
        layers = [
            (w0 + torch.bmm(u, v.transpose(1, 2)), b0 + c)
            for w0, b0, u, v, c in self.factors(context)
        ]
        return self.target.flatten(layers)


_GENERATOR_CLASSES: dict[str, type[Generator]] = {
    "per_layer": PerLayerGenerator,
    "shared": SharedGenerator,
    "chunked": ChunkedGenerator,
    "lowrank": LowRankGenerator,
}


def make_generator(kind: str, context_dim: int, target: TargetSpec, **kwargs) -> Generator:
    """Build a generator by name (:data:`GENERATORS`); ``kwargs`` go to its constructor."""
    try:
        cls = _GENERATOR_CLASSES[kind]
    except KeyError:
        raise ValueError(f"unknown generator {kind!r}; choose one of {GENERATORS}") from None
    return cls(context_dim, target, **kwargs)
