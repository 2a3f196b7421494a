"""A PPO policy whose actor can be any member of an architecture space (architecture generation,
:mod:`hyperrl.architecture`).

The observation carries, beside the env's keys, an ``architecture`` key: the member each world
acts with, as its hidden widths (``(max_depth,)``, 0 past its depth), drawn per episode by the
trainer (:class:`agents.batched.architecture.ArchitectureSampling`). The actor is an
:class:`~hyperrl.architecture.ArchitectureHead` from the observation to the action mean, its
weights generated from ``[context, member]``; no trunk sits in front of it, so a member is the
whole actor and exports as a plain MLP of its own size. The critic stays a plain MLP over the
observation, the context and the member's descriptor (only the actor is deployed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from hyperrl.architecture import ArchitectureHead, ArchitectureSpace, check_sandwich
from hyperrl.init import init_linear
from hyperrl.policies.actor_critic import _PassThrough
from hyperrl.policies.extractors import ContextFeaturesExtractor, check_context_keys

#: the observation key holding each world's member
ARCHITECTURE_KEY = "architecture"


class _Columns(nn.Module):
    """Splits the features ``[observation, context and architecture keys in space order]``."""

    def __init__(self, extractor: ContextFeaturesExtractor, space: gym.spaces.Dict) -> None:
        super().__init__()
        self.obs_dim = extractor.obs_dim
        at, self.slices = self.obs_dim, {}
        for key in extractor.context_keys:
            width = int(np.prod(space[key].shape))
            self.slices[key] = (at, at + width)
            at += width

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(observation (B, obs), context (B, C), member (B, max_depth) long)``."""
        lo, hi = self.slices[ARCHITECTURE_KEY]
        context = [features[:, a:b] for k, (a, b) in self.slices.items() if k != ARCHITECTURE_KEY]
        context = torch.cat(context, -1) if context else features[:, :0]
        return features[:, : self.obs_dim], context, features[:, lo:hi].round().long()


class _Actor(nn.Module):
    def __init__(self, columns: _Columns, head: ArchitectureHead) -> None:
        super().__init__()
        self.columns, self.head = columns, head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        obs, context, member = self.columns.split(features)
        return self.head(obs, context if context.shape[1] else None, member)


class _Critic(nn.Module):
    def __init__(
        self, columns: _Columns, space: ArchitectureSpace, arch: list[int], act, ortho: bool
    ) -> None:
        super().__init__()
        self.columns, self.space = columns, space
        obs_dim = columns.obs_dim
        context_dim = sum(b - a for k, (a, b) in columns.slices.items() if k != ARCHITECTURE_KEY)
        sizes = [obs_dim + context_dim + space.descriptor_dim, *arch, 1]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            linear = nn.Linear(fan_in, fan_out)
            if ortho:  # SB3's: sqrt(2) hidden, 1 on the value
                init_linear(linear, 1.0 if i == len(sizes) - 2 else float(np.sqrt(2)))
            layers += [linear, act()]
        self.mlp = nn.Sequential(*layers[:-1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        obs, context, member = self.columns.split(features)
        return self.mlp(torch.cat([obs, context, self.space.describe(member).to(obs)], dim=-1))


class ArchitectureActorCriticPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy (Box actions) for PPO whose actor is generated for the member in
    the observation's ``architecture`` key.

    Keywords, besides every ``ActorCriticPolicy`` one:

    :param widths: the hidden widths members choose from.
    :param max_depth: the most hidden layers; ``min_depth`` the fewest.
    :param context_keys: keys holding the context the weights are also generated from.
    :param generator: the generator kind (``"chunked"``); ``generator_kwargs`` its keywords.
    :param member_offsets: a learned offset per member on its generated parameters
        (:class:`~hyperrl.architecture.ArchitectureHead`).
    :param sandwich: the share of training draws that are the largest or the smallest member
        (:meth:`~hyperrl.architecture.ArchitectureSpace.sample`; the trainers' member sampling
        reads it, the policy keeps it with its space).

    ``net_arch`` (default ``[64, 64]``) is the critic's MLP.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        widths: Sequence[int] = (4, 8, 16, 32, 64, 128),
        max_depth: int = 3,
        min_depth: int = 1,
        context_keys: Sequence[str] = ("context",),
        generator: str = "chunked",
        generator_kwargs: dict | None = None,
        member_offsets: bool = False,
        sandwich: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, gym.spaces.Box):
            raise ValueError(f"architecture generation takes Box actions, not {action_space}")
        keys = list(getattr(observation_space, "spaces", {}))
        if ARCHITECTURE_KEY not in keys:
            raise ValueError(
                f"the observation has no {ARCHITECTURE_KEY!r} key ({keys}): train through "
                "--policy architecture, whose trainer draws a member per world"
            )
        self.space = ArchitectureSpace(tuple(widths), int(max_depth), int(min_depth))
        self.sandwich = check_sandwich(sandwich)
        if not isinstance(member_offsets, bool):
            raise ValueError(f"member_offsets is true or false, got {member_offsets!r}")
        self.member_offsets = member_offsets
        if observation_space[ARCHITECTURE_KEY].shape != (self.space.max_depth,):
            raise ValueError(
                f"the observation's {ARCHITECTURE_KEY!r} key has shape "
                f"{observation_space[ARCHITECTURE_KEY].shape}, max_depth is {max_depth}"
            )
        given = [k for k in check_context_keys(context_keys) if k in keys and k != ARCHITECTURE_KEY]
        #: what is not an observation to normalise: the context keys and the member
        self.context_keys = (*given, ARCHITECTURE_KEY)
        self.generator_kind, self.generator_kwargs = generator, dict(generator_kwargs or {})
        kwargs.setdefault("net_arch", [64, 64])
        kwargs["features_extractor_class"] = ContextFeaturesExtractor
        kwargs["features_extractor_kwargs"] = {"context_keys": self.context_keys}
        kwargs["share_features_extractor"] = True
        if kwargs.get("optimizer_class", torch.optim.Adam) is torch.optim.Adam:
            kwargs.setdefault("optimizer_kwargs", {"eps": 1e-5})
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _PassThrough(self.features_dim)

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # SB3's log_std; its linear heads are replaced below
        columns = _Columns(self.features_extractor, self.observation_space)
        context_dim = sum(b - a for k, (a, b) in columns.slices.items() if k != ARCHITECTURE_KEY)
        gains = None
        if self.ortho_init:  # SB3's gains: sqrt(2) hidden, 0.01 on the action mean
            gains = [float(np.sqrt(2))] * self.space.max_depth + [0.01]
        head = ArchitectureHead(
            columns.obs_dim,
            int(np.prod(self.action_space.shape)),
            context_dim,
            self.space,
            self.activation_fn,
            self.generator_kind,
            layer_gains=gains,
            generator_kwargs=self.generator_kwargs,
            member_offsets=self.member_offsets,
        )
        head.reuse_heads = True  # a rollout generates each world's head once per episode
        self.action_net = _Actor(columns, head)
        arch = self.net_arch if isinstance(self.net_arch, list) else self.net_arch.get("vf", [])
        self.value_net = _Critic(
            columns, self.space, list(arch), self.activation_fn, self.ortho_init
        )
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("features_extractor_class", "features_extractor_kwargs"):
            data.pop(key, None)
        return data | {
            "widths": self.space.widths,
            "max_depth": self.space.max_depth,
            "min_depth": self.space.min_depth,
            "context_keys": self.context_keys[:-1],
            "generator": self.generator_kind,
            "generator_kwargs": self.generator_kwargs,
            "member_offsets": self.member_offsets,
            "sandwich": self.sandwich,
        }

    def member_actor(
        self, member: Sequence[int], context: torch.Tensor | None = None
    ) -> nn.Sequential:
        """The deterministic actor of one member for one context (``(C,)`` in the observation's
        scale; ``None`` without context) as a plain ``nn.Sequential`` over the observation keys
        (flattened, in the features extractor's order): ``Linear, activation, ..., Linear``."""
        head = self.action_net.head
        layers = head.member_layers(context, member)
        modules: list[nn.Module] = []
        for i, linear in enumerate(layers):
            modules.append(linear)
            if i < len(layers) - 1:
                modules.append(self.activation_fn())
        return nn.Sequential(*modules)
