"""What generators produce: norms of generated head weights, and how they vary with context."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from stable_baselines3.common.policies import BasePolicy
from torch import nn

from hyperrl.conditioning import FiLMHead, HyperHead
from hyperrl.policies.extractors import ContextFeaturesExtractor
from hyperrl.policies.networks import ContextualNet


@torch.no_grad()
def generated_weight_stats(policy: BasePolicy, obs: dict[str, np.ndarray]) -> dict[str, float]:
    """For each context-conditioned hyper head of ``policy``: the mean Frobenius norm of its
    generated weights over the contexts in ``obs`` (``<net>/weight_norm``) and their mean
    standard deviation across those contexts (``<net>/weight_spread``; 0 means the head ignores
    the context).

    :param obs: a batch of Dict observations, ``{key: (N, ...)}``.
    """
    extractor = next((m for m in policy.modules() if isinstance(m, ContextFeaturesExtractor)), None)
    if extractor is None or not extractor.context_keys:
        return {}
    obs_t, _ = policy.obs_to_tensor(obs)
    context = torch.cat([obs_t[k].flatten(1).float() for k in extractor.context_keys], dim=1)
    stats = {}
    for name, net in policy.named_modules():
        if not isinstance(net, ContextualNet) or not isinstance(net.head, HyperHead):
            continue
        if net.generator_input != "context" or "target" in name:
            continue
        weights = torch.cat([w.flatten(1) for w, _ in net.head.generate(context)], dim=1)
        stats[f"{name}/weight_norm"] = weights.norm(dim=1).mean().item()
        stats[f"{name}/weight_spread"] = (
            weights.std(dim=0).mean().item() if len(weights) > 1 else 0.0
        )
    return stats


def conditioned_parameters(net: ContextualNet, context: torch.Tensor) -> torch.Tensor | None:
    """What the context sets in ``net``'s head, flat ``(N, K)`` for contexts ``(N, C)``: the
    generated parameters of a hyper head, FiLM's scales and shifts; ``None`` for heads whose
    context enters only as an input (concat, none) or that read the observation."""
    head = net.head
    if net.generator_input != "context":
        return None
    if isinstance(head, HyperHead):
        return torch.cat([torch.cat([w.flatten(1), b], 1) for w, b in head.generate(context)], 1)
    if isinstance(head, FiLMHead):
        return head.film_out(head.film_embedding(context))
    return None


@torch.no_grad()
def context_response(
    policy: nn.Module, values: Sequence[float] = (1.0, 2.0, 3.0, 4.0)
) -> dict[str, np.ndarray]:
    """How far the context-set parameters move as one context feature moves out, the others at
    0: for every conditioned net of ``policy`` (:func:`conditioned_parameters`) an array
    ``(C, len(values))`` of ``|P(v e_k) - P(0)| / |P(values[0] e_k) - P(0)|``.

    With contexts scaled so the train range is ``[-1, 1]`` (the context convention) and
    ``values[0] = 1``, a map that follows the context linearly gives ``values`` itself; a
    normalised embedding that keeps only the context's direction stays near 1 beyond the range.
    """
    out = {}
    for name, net in policy.named_modules():
        if not isinstance(net, ContextualNet) or "target" in name or net.context_dim == 0:
            continue
        device = next(net.parameters()).device
        c = net.context_dim
        steps = torch.tensor([0.0, *values], device=device)
        # (C, 1 + len(values), C): feature k set to each value, the others 0
        contexts = torch.eye(c, device=device)[:, None, :] * steps[None, :, None]
        params = conditioned_parameters(net, contexts.reshape(-1, c))
        if params is None:
            continue
        params = params.reshape(c, len(steps), -1)
        moved = (params[:, 1:] - params[:, :1]).norm(dim=-1)
        out[name] = (moved / moved[:, :1]).cpu().numpy()
    return out
