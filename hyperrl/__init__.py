"""hyperrl: hypernetwork-generated policy and critic heads, conditioned on context or task."""

from hyperrl.conditioning import (
    CONDITIONINGS,
    ConcatHead,
    ConditionedHead,
    FiLMHead,
    HyperHead,
    MLPHead,
    make_head,
)
from hyperrl.generators import (
    GENERATORS,
    ChunkedGenerator,
    Generator,
    LowRankGenerator,
    PerLayerGenerator,
    SharedGenerator,
    make_generator,
)
from hyperrl.init import INIT_SCHEMES
from hyperrl.policies import (
    ConcatActorCriticPolicy,
    ConcatSACPolicy,
    ConcatTD3Policy,
    ContextFeaturesExtractor,
    FiLMActorCriticPolicy,
    FiLMSACPolicy,
    FiLMTD3Policy,
    HyperActorCriticPolicy,
    HyperSACPolicy,
    HyperTD3Policy,
)
from hyperrl.target import TargetSpec

__version__ = "0.1.0"

__all__ = [
    "CONDITIONINGS",
    "GENERATORS",
    "INIT_SCHEMES",
    "ChunkedGenerator",
    "ConcatActorCriticPolicy",
    "ConcatHead",
    "ConcatSACPolicy",
    "ConcatTD3Policy",
    "ConditionedHead",
    "ContextFeaturesExtractor",
    "FiLMActorCriticPolicy",
    "FiLMHead",
    "FiLMSACPolicy",
    "FiLMTD3Policy",
    "Generator",
    "HyperActorCriticPolicy",
    "HyperHead",
    "HyperSACPolicy",
    "HyperTD3Policy",
    "LowRankGenerator",
    "MLPHead",
    "PerLayerGenerator",
    "SharedGenerator",
    "TargetSpec",
    "make_generator",
    "make_head",
]
