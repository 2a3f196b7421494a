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
from hyperrl.target import TargetSpec

__version__ = "0.1.0"

__all__ = [
    "CONDITIONINGS",
    "GENERATORS",
    "INIT_SCHEMES",
    "ChunkedGenerator",
    "ConcatHead",
    "ConditionedHead",
    "FiLMHead",
    "Generator",
    "HyperHead",
    "LowRankGenerator",
    "MLPHead",
    "PerLayerGenerator",
    "SharedGenerator",
    "TargetSpec",
    "make_generator",
    "make_head",
]
