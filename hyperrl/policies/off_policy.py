"""Hypernetwork policies for SAC and TD3 (and so for HER, which wraps their replay buffer).

The actor and every Q network are :class:`~hyperrl.policies.networks.ContextualNet`s. A Q network's
trunk reads ``[observation, action]`` and its head is conditioned on the context; in dynamic mode
(``generator_input="observation"`` or ``"both"``) the trunk reads only the action and the state
generates the head over it (Sarafian et al., 2021). Module names follow SB3 (``latent_pi``,
``mu``, ``qf0``, ``qf1``...), so state dicts, target networks and ``polyak_update`` line up.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, SACPolicy
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.td3.policies import Actor as TD3Actor
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from hyperrl.policies.common import ContextPolicyMixin, context_dims
from hyperrl.policies.networks import ContextualNet


class HyperSACActor(SACActor):
    """SAC's squashed-Gaussian actor with a :class:`ContextualNet` producing mean and log-std
    (``2 * action_dim`` outputs), or only the mean with gSDE."""

    def __init__(self, *args: Any, head_options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_options = head_options
        obs_dim, context_dim = context_dims(self.features_extractor)
        action_dim = get_action_dim(self.action_space)
        out_dim = action_dim if self.use_sde else 2 * action_dim
        self.latent_pi = ContextualNet(
            obs_dim, context_dim, out_dim, self.net_arch, self.activation_fn, head_options
        )
        if self.use_sde:  # exploration noise from the features: log_std is (features_dim, act)
            _, self.log_std = self.action_dist.proba_distribution_net(
                latent_dim=self.features_dim,
                latent_sde_dim=self.features_dim,
                log_std_init=self.log_std_init,
            )
            clip = self.clip_mean
            self.mu = nn.Hardtanh(-clip, clip) if clip > 0 else nn.Identity()
        else:
            self.mu, self.log_std = nn.Identity(), nn.Identity()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | {"head_options": self.head_options}

    @property
    def contextual_net(self) -> ContextualNet:
        return self.latent_pi

    def get_action_dist_params(
        self, obs: PyTorchObs
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        features = self.extract_features(obs, self.features_extractor)
        out = self.latent_pi(features)
        if self.use_sde:
            return self.mu(out), self.log_std, {"latent_sde": features}
        mean, log_std = out.chunk(2, dim=-1)
        return mean, torch.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX), {}


class HyperTD3Actor(TD3Actor):
    """TD3's deterministic actor: ``tanh(ContextualNet(features))``."""

    def __init__(self, *args: Any, head_options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_options = head_options
        obs_dim, context_dim = context_dims(self.features_extractor)
        net = ContextualNet(
            obs_dim,
            context_dim,
            get_action_dim(self.action_space),
            self.net_arch,
            self.activation_fn,
            head_options,
        )
        self.mu = nn.Sequential(net, nn.Tanh())

    @property
    def contextual_net(self) -> ContextualNet:
        return self.mu[0]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | {"head_options": self.head_options}


class HyperContinuousCritic(ContinuousCritic):
    """``n_critics`` Q networks ``(features, action) -> (B, 1)``, registered as ``qf0``,
    ``qf1``..."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: nn.Module,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_critics: int = 2,
        share_features_extractor: bool = True,
        *,
        head_options: dict[str, Any],
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            net_arch,
            features_extractor,
            features_dim,
            activation_fn,
            normalize_images,
            n_critics,
            share_features_extractor,
        )
        obs_dim, context_dim = context_dims(self.features_extractor)
        self.q_networks = []
        for idx in range(self.n_critics):
            q_net = ContextualNet(
                obs_dim,
                context_dim,
                1,
                net_arch,
                activation_fn,
                head_options,
                extra_dim=get_action_dim(self.action_space),
                trunk_reads_obs=head_options["generator_input"] == "context",
            )
            self.add_module(f"qf{idx}", q_net)  # replaces SB3's nn.Sequential of that name
            self.q_networks.append(q_net)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.set_grad_enabled(not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        return tuple(q_net(features, actions) for q_net in self.q_networks)

    def q1_forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.extract_features(obs, self.features_extractor)
        return self.q_networks[0](features, actions)


class _OffPolicyMixin(ContextPolicyMixin):
    """Builds the hyper actor and critics in place of SB3's."""

    _actor_class: type[nn.Module]
    _default_head_arch: tuple[int, ...] = ()

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, *args, **kwargs
    ) -> None:
        if not isinstance(action_space, spaces.Box):
            raise ValueError(
                f"{type(self).__name__} is for SAC/TD3, whose actions are Box, but this env's "
                f"are {action_space}; use PPO or A2C with HyperActorCriticPolicy"
            )
        super().__init__(observation_space, action_space, *args, **kwargs)

    def make_actor(self, features_extractor=None):
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return self._actor_class(**kwargs, head_options=self.head_options).to(self.device)

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        # the online actor only: target networks are polyak-updated through .data
        self.actor.contextual_net.enable_head_reuse()

    def make_critic(self, features_extractor=None):
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return HyperContinuousCritic(**kwargs, head_options=self.head_options).to(self.device)


class HyperSACPolicy(_OffPolicyMixin, SACPolicy):
    """SB3 SAC policy whose actor and Q heads are conditioned on the context (a hypernetwork by
    default). Default shape: trunk ``net_arch=[256, 256]`` (SB3's) and a conditioned output layer
    (``head_arch=()``): replay minibatches carry about one context per sample, so generation runs
    per sample and its cost grows with the generated head; generating the output layer keeps SAC
    near plain speed (see ``scripts/bench_policies.py``). Pass ``head_arch=(256,)`` with
    ``net_arch=[256]`` to generate more. Takes every ``SACPolicy`` keyword and the head options of
    :class:`~hyperrl.policies.actor_critic.HyperActorCriticPolicy` (``context_keys``,
    ``conditioning``, ``generator``, ``init``, ``head_arch``, ``generator_input``,
    ``linear_context``, ``generator_kwargs``)."""

    _actor_class = HyperSACActor
    _default_net_arch = [256, 256]


class HyperTD3Policy(_OffPolicyMixin, TD3Policy):
    """SB3 TD3 policy with context-conditioned actor and Q heads. Default shape: trunk
    ``net_arch=[400, 300]`` (SB3's) and a conditioned output layer, for the reasons given in
    :class:`HyperSACPolicy`. Same keywords as :class:`HyperSACPolicy`."""

    _actor_class = HyperTD3Actor
    _default_net_arch = [400, 300]


class ConcatSACPolicy(HyperSACPolicy):
    """:class:`HyperSACPolicy` with ``conditioning="concat"``."""

    _default_conditioning = "concat"


class FiLMSACPolicy(HyperSACPolicy):
    """:class:`HyperSACPolicy` with ``conditioning="film"``."""

    _default_conditioning = "film"


class ConcatTD3Policy(HyperTD3Policy):
    """:class:`HyperTD3Policy` with ``conditioning="concat"``."""

    _default_conditioning = "concat"


class FiLMTD3Policy(HyperTD3Policy):
    """:class:`HyperTD3Policy` with ``conditioning="film"``."""

    _default_conditioning = "film"
