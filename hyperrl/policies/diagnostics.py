"""What generators produce: norms of generated head weights, and how they vary with context."""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.policies import BasePolicy

from hyperrl.conditioning import HyperHead
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
