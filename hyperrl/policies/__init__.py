"""Stable-Baselines3 policy classes with context-conditioned (hypernetwork) heads."""

from hyperrl.policies.actor_critic import (
    ConcatActorCriticPolicy,
    FiLMActorCriticPolicy,
    HyperActorCriticPolicy,
)
from hyperrl.policies.common import GENERATOR_INPUTS, HEAD_OPTIONS
from hyperrl.policies.extractors import ContextFeaturesExtractor, norm_obs_keys
from hyperrl.policies.networks import ContextualNet, contexts_grouped
from hyperrl.policies.off_policy import (
    ConcatSACPolicy,
    ConcatTD3Policy,
    FiLMSACPolicy,
    FiLMTD3Policy,
    HyperSACPolicy,
    HyperTD3Policy,
)
from hyperrl.policies.recurrent import Memory, RecurrentActorCriticPolicy

__all__ = [
    "GENERATOR_INPUTS",
    "HEAD_OPTIONS",
    "ConcatActorCriticPolicy",
    "ConcatSACPolicy",
    "ConcatTD3Policy",
    "ContextFeaturesExtractor",
    "ContextualNet",
    "FiLMActorCriticPolicy",
    "FiLMSACPolicy",
    "FiLMTD3Policy",
    "HyperActorCriticPolicy",
    "HyperSACPolicy",
    "HyperTD3Policy",
    "Memory",
    "RecurrentActorCriticPolicy",
    "contexts_grouped",
    "norm_obs_keys",
]
