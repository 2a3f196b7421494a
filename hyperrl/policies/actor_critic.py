"""Hypernetwork policies for PPO and A2C."""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from hyperrl.policies.common import ContextPolicyMixin, context_dims
from hyperrl.policies.networks import ContextualNet


class _PassThrough(nn.Module):
    """Stands where SB3 expects its ``mlp_extractor``: the latents are the features themselves,
    and the actor's and critic's networks live in ``action_net`` and ``value_net``."""

    def __init__(self, features_dim: int) -> None:
        super().__init__()
        self.latent_dim_pi = self.latent_dim_vf = features_dim

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return features, features

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _pi_vf_arch(net_arch: list[int] | dict[str, list[int]]) -> tuple[list[int], list[int]]:
    if isinstance(net_arch, dict):
        return list(net_arch.get("pi", [])), list(net_arch.get("vf", []))
    return list(net_arch), list(net_arch)


class HyperActorCriticPolicy(ContextPolicyMixin, ActorCriticPolicy):
    """SB3 actor-critic policy (PPO, A2C; Box, Discrete, MultiDiscrete, MultiBinary actions) whose
    actor and critic heads are conditioned on the context, by a hypernetwork by default.

    Each of actor and critic is a :class:`~hyperrl.policies.networks.ContextualNet`: an MLP trunk
    over the observation (``net_arch``, SB3's meaning: a list, or ``dict(pi=..., vf=...)``) and a
    head with hidden widths ``head_arch`` whose input is the trunk's output. The default
    (``net_arch=[64]``, ``head_arch=(64,)``) has the shape of SB3's default ``[64, 64]`` MLP.

    Keywords, besides every ``ActorCriticPolicy`` one:

    :param context_keys: keys of the Dict observation holding the context (``("context",)``).
    :param conditioning: rung of the ladder: ``"hyper"`` (default), ``"lowrank_hyper"``,
        ``"film"``, ``"concat"``, ``"none"``.
    :param generator: for ``"hyper"``: ``"per_layer"``, ``"shared"``, ``"chunked"``, ``"lowrank"``.
    :param init: generator init: ``"bias"``, ``"hyperfan_in"``, ``"hyperfan_out"``.
    :param head_arch: hidden widths of the conditioned head.
    :param generator_input: ``"context"``, ``"observation"`` or ``"both"``.
    :param linear_context: ``True`` (default): FiLM and the generators read the context through a
        normalised embedding *and* a linear term, so their output keeps following the context
        beyond the training range; ``False``: the normalised embedding alone (direction only).
    :param generator_kwargs: passed to the generator (``hidden``, ``rank``, ``chunk_size``...).

    With ``ortho_init`` (SB3's default) the trunk gets orthogonal init with gain sqrt(2) and the
    head reproduces SB3's gains (sqrt(2) hidden, 0.01 actor output, 1 critic output); hyper heads
    reproduce them through their generator's init.
    """

    _default_net_arch = dict(pi=[64], vf=[64])
    _adam_eps_1e5 = True

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _PassThrough(self.features_dim)

    def _build(self, lr_schedule: Schedule) -> None:
        # SB3 builds the distribution (log_std), a linear action_net and value_net, and applies
        # orthogonal init; the two linear heads are then replaced, so the optimizer is rebuilt.
        super()._build(lr_schedule)
        obs_dim, context_dim = context_dims(self.features_extractor)
        pi_arch, vf_arch = _pi_vf_arch(self.net_arch)
        sqrt2 = float(np.sqrt(2))

        def net(arch: list[int], out_dim: int, out_gain: float) -> ContextualNet:
            gains = (sqrt2, sqrt2, out_gain) if self.ortho_init else None
            return ContextualNet(
                obs_dim,
                context_dim,
                out_dim,
                arch,
                self.activation_fn,
                self.head_options,
                gains=gains,
            )

        # action_net's width is what the distribution needs (means, or logits)
        self.action_net = net(pi_arch, self.action_net.out_features, 0.01)
        self.value_net = net(vf_arch, 1, 1.0)
        self.action_net.enable_head_reuse()
        self.value_net.enable_head_reuse()
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )


class ConcatActorCriticPolicy(HyperActorCriticPolicy):
    """:class:`HyperActorCriticPolicy` with ``conditioning="concat"``: the head reads
    ``[trunk output, context]``."""

    _default_conditioning = "concat"


class FiLMActorCriticPolicy(HyperActorCriticPolicy):
    """:class:`HyperActorCriticPolicy` with ``conditioning="film"``."""

    _default_conditioning = "film"
