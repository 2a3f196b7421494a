"""The network every hyper policy is made of: a trunk over the observation and a conditioned head.

``ContextualNet`` reads the features of ``ContextFeaturesExtractor`` (``[observation, context]``),
runs an ordinary MLP trunk over the observation (and, for Q networks, the action), and a head from
the conditioning ladder over the trunk's output. What conditions the head is chosen by
``generator_input``:

- ``"context"``: the context (default);
- ``"observation"``: the observation itself ("dynamic"; Sarafian et al., 2021);
- ``"both"``: ``[observation, context]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from hyperrl.conditioning import HyperHead, make_head
from hyperrl.functional import Grouping
from hyperrl.init import init_linear


class ContextualNet(nn.Module):
    """``features (B, obs_dim + context_dim)`` [+ ``extra (B, E)``] -> ``(B, out_dim)``.

    :param obs_dim: width of the observation part of the features.
    :param context_dim: width of the context part.
    :param out_dim: output width.
    :param trunk_arch: hidden widths of the trunk (may be empty: the head reads its input as is).
    :param activation_fn: activation class of trunk and head.
    :param extra_dim: width of an extra input the trunk reads (the action, for Q networks).
    :param trunk_reads_obs: ``False`` for a Q network in dynamic mode: the trunk reads only the
        action and the observation reaches the head through its generator.
    :param gains: ``(trunk gain, head hidden gain, output gain)`` for SB3's orthogonal init, or
        ``None`` for PyTorch's defaults.
    :param head_options: see :data:`hyperrl.policies.common.HEAD_OPTIONS`.
    """

    def __init__(
        self,
        obs_dim: int,
        context_dim: int,
        out_dim: int,
        trunk_arch: Sequence[int],
        activation_fn: type[nn.Module],
        head_options: dict[str, Any],
        extra_dim: int = 0,
        trunk_reads_obs: bool = True,
        gains: tuple[float, float, float] | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.context_dim = obs_dim, context_dim
        self.trunk_reads_obs = trunk_reads_obs
        self.generator_input = head_options["generator_input"]
        trunk_in = extra_dim + (obs_dim if trunk_reads_obs else 0)
        layers: list[nn.Module] = []
        for a, b in zip((trunk_in, *trunk_arch[:-1]), trunk_arch, strict=True):
            lin = nn.Linear(a, b)
            init_linear(lin, None if gains is None else gains[0])
            layers += [lin, activation_fn()]
        self.trunk = nn.Sequential(*layers)
        self.latent_dim = trunk_arch[-1] if trunk_arch else trunk_in
        cond_dim = {
            "context": context_dim,
            "observation": obs_dim,
            "both": obs_dim + context_dim,
        }[self.generator_input]
        conditioning = head_options["conditioning"]
        if cond_dim == 0 and conditioning != "none":
            raise ValueError(
                f"conditioning={conditioning!r} with generator_input='context' needs a context, "
                "but the observation has none; use conditioning='none' or name context_keys"
            )
        head_arch = head_options["head_arch"]
        layer_gains = None if gains is None else (gains[1],) * len(head_arch) + (gains[2],)
        kwargs: dict[str, Any] = {}
        if conditioning in ("film", "hyper", "lowrank_hyper"):
            kwargs["linear_context"] = head_options["linear_context"]
        if conditioning in ("hyper", "lowrank_hyper"):
            kwargs |= {
                "init": head_options["init"],
                "generator_kwargs": head_options["generator_kwargs"],
            }
            if conditioning == "hyper":
                kwargs["generator"] = head_options["generator"]
        self.head = make_head(
            conditioning,
            self.latent_dim,
            out_dim,
            cond_dim,
            head_arch,
            activation_fn,
            layer_gains,
            **kwargs,
        )

    def enable_head_reuse(self) -> None:
        """Let a hyper head reuse generated weights across no-grad calls (rollouts). Only for a
        network its optimizer updates: polyak-updated target networks must not."""
        if isinstance(self.head, HyperHead):
            self.head.reuse_heads = True

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features (B, obs_dim + context_dim) -> (obs (B, obs_dim), ctx (B, context_dim))``."""
        return features[:, : self.obs_dim], features[:, self.obs_dim :]

    def forward(self, features: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        obs, ctx = self.split(features)
        parts = ([obs] if self.trunk_reads_obs else []) + ([] if extra is None else [extra])
        x = self.trunk(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
        if self.generator_input == "context":
            return self.head(x, ctx)
        return self.head(x, obs if self.generator_input == "observation" else features)


@contextlib.contextmanager
def contexts_grouped(policy: nn.Module, groups: Grouping | None) -> Iterator[None]:
    """Within, the context-conditioned hyper heads of ``policy`` take ``groups`` as which samples
    of each batch share a context instead of deduplicating the contexts (no sort, no host sync).
    For a caller that knows its batches' layout: an env-major minibatch of whole worlds
    (:func:`hyperrl.functional.runs_grouping`). ``None`` changes nothing."""
    nets = [] if groups is None else policy.modules()
    heads = [
        net.head
        for net in nets
        if isinstance(net, ContextualNet)
        and net.generator_input == "context"
        and isinstance(net.head, HyperHead)
    ]
    for head in heads:
        head.given_groups = groups
    try:
        yield
    finally:
        for head in heads:
            head.given_groups = None
