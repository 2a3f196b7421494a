"""One context's policy as a plain network: generate the heads once, then keep only ordinary
``nn.Linear`` layers (no hypernetwork, no context input), for deployment where the context is
known (TorchScript or ONNX on a robot's computer).

:func:`plain_layers` turns any head of the conditioning ladder into the layers it computes for a
fixed context: a hyper head's generated weights; FiLM's scale and shift folded into the layers
they modulate; concatenation's context columns folded into the first bias. :func:`export_actor`
does it for the actor of an SB3 policy of this package (PPO/A2C, SAC, TD3) and adds what turns
the network's output into the action ``predict(deterministic=True)`` returns, so the exported
module gives the same actions as the full policy for that context.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from hyperrl.conditioning import ConcatHead, ConditionedHead, FiLMHead, HyperHead, MLPHead
from hyperrl.policies.networks import ContextualNet


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin


@torch.no_grad()
def plain_layers(head: ConditionedHead, context: torch.Tensor) -> list[nn.Linear]:
    """The layers ``head`` applies to its input for one context.

    :param context: ``(context_dim,)`` the head's context, as the head reads it.
    :returns: ``len(hidden_sizes) + 1`` layers; between them the head's activation.
    :raises ValueError: for a head whose weights depend on its input (``generator_input``
        ``"input"`` or ``"both"``): it has no fixed weights to export.
    """
    c = context.reshape(1, -1).to(next(head.parameters()).dtype)
    if isinstance(head, HyperHead):
        if head.generator_input != "context":
            raise ValueError(
                f"a head generated from its input (generator_input={head.generator_input!r}) "
                "has no weights of its own for a context; only context-generated heads export"
            )
        params = [(w[0], b[0]) for w, b in head.target.unflatten(head.generator(c))]
    elif isinstance(head, FiLMHead):
        gamma, beta = (t[0] for t in head.film_out(head.film_embedding(c)).chunk(2, dim=-1))
        layers = [(lin.weight, lin.bias) for lin in head.linears]
        if not head.hidden_sizes:  # W (gamma x + beta) + b
            (w, b), params = layers[0], []
            params.append((w * gamma, w @ beta + b))
        else:  # gamma (W h + b) + beta per hidden layer
            params, at = [], 0
            for (w, b), width in zip(layers[:-1], head.hidden_sizes, strict=True):
                g, s = gamma[at : at + width], beta[at : at + width]
                params.append((w * g[:, None], b * g + s))
                at += width
            params.append(layers[-1])
    elif isinstance(head, ConcatHead):  # W [x, c] + b = W_x x + (W_c c + b)
        layers = [(lin.weight, lin.bias) for lin in head.linears]
        w, b = layers[0]
        params = [(w[:, : head.in_dim], w[:, head.in_dim :] @ c[0] + b), *layers[1:]]
    elif isinstance(head, MLPHead):
        params = [(lin.weight, lin.bias) for lin in head.linears]
    else:
        raise ValueError(f"cannot export a {type(head).__name__}")
    return [_linear(w, b) for w, b in params]


def plain_net(net: ContextualNet, context: torch.Tensor) -> nn.Sequential:
    """``obs (B, obs_dim) -> (B, out_dim)``: ``net``'s trunk and its head for one context
    (``(context_dim,)``), as one ``nn.Sequential`` of copies."""
    if net.generator_input != "context" or not net.trunk_reads_obs:
        raise ValueError(
            f"a network conditioned on its observation (generator_input={net.generator_input!r}) "
            "has no fixed weights for a context; only context-conditioned networks export"
        )
    modules: list[nn.Module] = []
    for module in net.trunk:
        modules.append(_linear(module.weight, module.bias) if isinstance(module, nn.Linear)
                       else type(module)())  # fmt: skip
    head_layers = plain_layers(net.head, context)
    for i, lin in enumerate(head_layers):
        modules.append(lin)
        if i < len(head_layers) - 1:
            modules.append(type(net.head.activation)())
    return nn.Sequential(*modules)


class _DeployedActor(nn.Module):
    """What an exported actor adds around its network: the run's observation normalisation on
    the way in, the network's output turned into the action on the way out.

    :param obs_dim: width of the flattened raw observation.
    :param obs_keys: which observation keys, flattened and concatenated in this order, make
        ``obs`` (recorded for the user; the context keys are not among them).
    :param action: ``"clip"`` (a Gaussian's mean, clipped to ``low``/``high``: PPO and A2C on
        Box actions), ``"squash"`` (``tanh``, then scaled to ``low``/``high``: SAC and TD3) or
        ``"argmax"`` (Discrete actions).
    :param obs_mean: ``(obs_dim,)`` with ``obs_std`` and ``clip_obs``: normalise ``obs`` first.
    """

    def __init__(
        self,
        obs_dim: int,
        obs_keys: Sequence[str],
        action: str,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
        clip_obs: float = 10.0,
    ) -> None:
        super().__init__()
        if action not in ("clip", "squash", "argmax"):
            raise ValueError(f"action is 'clip', 'squash' or 'argmax', not {action!r}")
        self.obs_keys, self.action = list(obs_keys), action

        def buffer(value: np.ndarray | None, default: float) -> torch.Tensor:
            if value is None:
                return torch.full((obs_dim,), default)
            return torch.as_tensor(np.asarray(value, dtype=np.float32).reshape(-1))

        self.normalize = obs_mean is not None
        self.register_buffer("obs_mean", buffer(obs_mean, 0.0))
        self.register_buffer("obs_std", buffer(obs_std, 1.0))
        self.clip_obs = float(clip_obs)
        bounds = (np.zeros(1), np.zeros(1)) if low is None else (low, high)
        self.register_buffer("low", torch.as_tensor(np.asarray(bounds[0], dtype=np.float32)))
        self.register_buffer("high", torch.as_tensor(np.asarray(bounds[1], dtype=np.float32)))

    def _normalized(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return obs
        return ((obs - self.obs_mean) / self.obs_std).clamp(-self.clip_obs, self.clip_obs)

    def _to_action(self, out: torch.Tensor) -> torch.Tensor:
        if self.action == "argmax":
            return out.argmax(dim=-1)
        if self.action == "squash":
            out = out[:, : self.low.shape[0]]  # SAC's net gives mean and log-std
            return self.low + 0.5 * (torch.tanh(out) + 1.0) * (self.high - self.low)
        return torch.maximum(torch.minimum(out, self.high), self.low)


class ExportedActor(_DeployedActor):
    """``obs (B, obs_dim) float32 -> action (B, act_dim)``: the deterministic action of one
    context's policy, with the observation normalisation of the run folded in.

    :param net: the plain network (:func:`plain_net`); the other parameters are
        :class:`_DeployedActor`'s.
    """

    def __init__(self, net: nn.Sequential, *args, **kwargs) -> None:
        super().__init__(net[0].in_features, *args, **kwargs)
        self.net = net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self._to_action(self.net(self._normalized(obs)))


class InferredActor(_DeployedActor):
    """``obs (B, obs_dim)``, ``transitions (B, k, d)``, ``valid (B, k)`` (1 where a slot holds a
    transition of the running episode) ``-> action (B, act_dim)``: a policy for unknown contexts,
    its adaptation module's estimate (:mod:`hyperrl.adaptation`) in place of the context, the
    generator kept (the context changes from step to step, so no head is fixed).

    :param net: the policy's actor network (copied; its hyper heads generate per sample, which
        traces to TorchScript and ONNX).
    :param adaptation: the run's adaptation module (copied).
    :param context_low: with ``context_high``: the bounds the estimate is clipped to (the
        context's observation box).
    The other parameters are :class:`_DeployedActor`'s.
    """

    def __init__(
        self,
        net: ContextualNet,
        adaptation: nn.Module,
        context_low: np.ndarray,
        context_high: np.ndarray,
        *args,
        **kwargs,
    ) -> None:
        super().__init__(net.obs_dim, *args, **kwargs)
        if net.generator_input != "context" or not net.trunk_reads_obs:
            raise ValueError(
                f"a network conditioned on its observation (generator_input="
                f"{net.generator_input!r}) does not read an estimated context"
            )
        self.net = copy.deepcopy(net).cpu()
        for module in self.net.modules():
            if isinstance(module, HyperHead):  # per-sample generation: no sort, traceable
                module.dedup, module.reuse_heads, module.given_groups = False, False, None
        self.adaptation = copy.deepcopy(adaptation).cpu()
        as_tensor = functools.partial(torch.as_tensor, dtype=torch.float32)
        self.register_buffer("context_low", as_tensor(np.asarray(context_low).reshape(-1)))
        self.register_buffer("context_high", as_tensor(np.asarray(context_high).reshape(-1)))

    def context(self, transitions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, context_dim)`` the estimate the policy reads."""
        estimate = self.adaptation(transitions, valid > 0.5)
        return torch.maximum(torch.minimum(estimate, self.context_high), self.context_low)

    def forward(
        self, obs: torch.Tensor, transitions: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        features = torch.cat([self._normalized(obs), self.context(transitions, valid)], dim=1)
        return self._to_action(self.net(features))


def actor_net(policy: nn.Module) -> tuple[ContextualNet, str]:
    """The policy's actor network and how its output becomes an action (see
    :class:`ExportedActor`).

    :raises ValueError: for a policy without one (not one of this package's policies)."""
    from hyperrl.policies.actor_critic import HyperActorCriticPolicy
    from hyperrl.policies.off_policy import HyperSACPolicy, HyperTD3Policy

    if isinstance(policy, HyperActorCriticPolicy):
        kind = "argmax" if isinstance(policy.action_space, spaces.Discrete) else "clip"
        if not isinstance(policy.action_space, spaces.Box | spaces.Discrete):
            raise ValueError(f"cannot export {type(policy.action_space).__name__} actions")
        return policy.action_net, kind
    if isinstance(policy, HyperSACPolicy | HyperTD3Policy):
        if getattr(policy.actor, "use_sde", False):
            raise ValueError("cannot export a gSDE actor")
        return policy.actor.contextual_net, "squash"
    raise ValueError(
        f"{type(policy).__name__} is not one of hyperrl's policies (HyperActorCriticPolicy, "
        "HyperSACPolicy, HyperTD3Policy and their concat/FiLM variants): nothing to export"
    )


def export_actor(
    policy: nn.Module,
    context: np.ndarray,
    obs_mean: np.ndarray | None = None,
    obs_std: np.ndarray | None = None,
    clip_obs: float = 10.0,
) -> ExportedActor:
    """The deterministic actor of ``policy`` for one context, as a plain module.

    :param context: ``(context_dim,)`` the context as the policy reads it (the observation's
        context keys, concatenated: for this package's envs the *scaled* values,
        :meth:`envs.context.ContextSpace.to_array`).
    :param obs_mean: with ``obs_std``: the normalisation the policy's observations had
        (``VecNormalize``), folded in so the module takes raw observations.
    :raises ValueError: for a policy or head that cannot be exported, or a context of the wrong
        width.
    """
    net, kind = actor_net(policy)
    context = np.asarray(context, dtype=np.float32).reshape(-1)
    if context.shape != (net.context_dim,):
        raise ValueError(f"the policy reads a context of {net.context_dim} values, got {context}")
    device = next(policy.parameters()).device
    plain = plain_net(net, torch.as_tensor(context, device=device)).cpu()
    space = policy.action_space
    low, high = (space.low, space.high) if isinstance(space, spaces.Box) else (None, None)
    extractor = policy.actor.features_extractor if kind == "squash" else policy.features_extractor
    actor = ExportedActor(plain, extractor.obs_keys, kind, low, high, obs_mean, obs_std, clip_obs)
    return actor.requires_grad_(False).eval()
