"""A recurrent actor-critic that reads no context: the memory baseline for unknown contexts.

Where an adaptation module infers the context from the last k transitions and hands it to a
context policy (:mod:`hyperrl.adaptation`), this policy carries a GRU state through the episode
instead and never sees the context: its input at step ``t`` is the observation (every key but
``context_keys``) and the previous action, from which it can tell the dynamics it is in. Actor and
critic share the GRU (one memory, as RMA's and RL²'s baselines do); their heads are SB3's
``MlpExtractor`` over the GRU's output.

It trains on the batched PPO (:class:`agents.batched.ppo.DevicePPO`), whose minibatches already
hold every step of a subset of worlds: the update unrolls the GRU over each world's rollout from
the state stored at the rollout's start, zeroing it where an episode began (truncated
backpropagation through one rollout, as CleanRL's recurrent PPO does). The state is explicit:
:meth:`~RecurrentActorCriticPolicy.step` takes one and returns the next, so every caller (the
rollout, the evaluators, SB3's :meth:`predict` with ``state`` and ``episode_start``) keeps its
own for its own worlds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from hyperrl.policies.extractors import ContextFeaturesExtractor, check_context_keys


class Memory(NamedTuple):
    """What a :class:`RecurrentActorCriticPolicy` carries from one step to the next, per world.

    :param hidden: ``(N, memory_size)`` the GRU's state after the last step.
    :param action: ``(N, act_dim)`` the last action, clipped to the action space.
    """

    hidden: torch.Tensor
    action: torch.Tensor


class RecurrentActorCriticPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy (Box actions) with a GRU memory and no context input.

    Keywords, besides every ``ActorCriticPolicy`` one:

    :param context_keys: keys of the Dict observation it must not read (``("context",)``).
    :param memory_size: width of the GRU state (default 128).

    ``net_arch`` (default ``dict(pi=[64], vf=[64])``) is the actor's and critic's MLP over the GRU
    output. Act with :meth:`step` (batched, explicit :class:`Memory`) or SB3's :meth:`predict`
    with ``state`` and ``episode_start``; train with :meth:`evaluate_sequences`.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        context_keys: Sequence[str] = ("context",),
        memory_size: int = 128,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, gym.spaces.Box):
            raise ValueError(
                f"the recurrent policy takes Box actions, not {type(action_space).__name__}"
            )
        if int(memory_size) < 1:
            raise ValueError(f"memory_size must be a positive integer, got {memory_size!r}")
        self.context_keys = check_context_keys(context_keys)
        self.memory_size = int(memory_size)
        kwargs.setdefault("net_arch", dict(pi=[64], vf=[64]))
        # always: it is what drops the context (SB3's load passes the saved keywords back)
        kwargs["features_extractor_class"] = ContextFeaturesExtractor
        kwargs["features_extractor_kwargs"] = {"context_keys": self.context_keys}
        kwargs["share_features_extractor"] = True
        if kwargs.get("optimizer_class", torch.optim.Adam) is torch.optim.Adam:
            kwargs.setdefault("optimizer_kwargs", {"eps": 1e-5})  # SB3's PPO default
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)
        for name, bound in (("action_low", action_space.low), ("action_high", action_space.high)):
            bound = torch.as_tensor(bound, dtype=torch.float32).flatten()
            self.register_buffer(name, bound, persistent=False)

    def _build_mlp_extractor(self) -> None:
        obs_dim = self.features_extractor.obs_dim
        act_dim = int(np.prod(self.action_space.shape))
        self.gru = nn.GRUCell(obs_dim + act_dim, self.memory_size)
        self.mlp_extractor = MlpExtractor(
            self.memory_size, self.net_arch, self.activation_fn, device=self.device
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("features_extractor_class", "features_extractor_kwargs"):
            data.pop(key, None)
        return data | {"context_keys": self.context_keys, "memory_size": self.memory_size}

    # --- memory ----------------------------------------------------------------------------

    def initial_memory(self, num_envs: int) -> Memory:
        """The memory of ``num_envs`` worlds at the start of their episodes (zeros)."""
        act_dim = self.action_low.shape[0]
        return Memory(
            torch.zeros(num_envs, self.memory_size, device=self.device),
            torch.zeros(num_envs, act_dim, device=self.device),
        )

    @staticmethod
    def forget(memory: Memory, done: torch.Tensor) -> Memory:
        """``memory`` with the worlds where ``done`` (``(N,)`` bool) back at their start."""
        keep = (~done.bool()).float().unsqueeze(-1)
        return Memory(memory.hidden * keep, memory.action * keep)

    def _clip(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(actions.flatten(1), self.action_high), self.action_low)

    def _advance(self, obs: PyTorchObs, memory: Memory) -> torch.Tensor:
        """``(N, memory_size)``: the GRU state after ``obs``, from ``memory``."""
        return self.gru(torch.cat([self._observed(obs), memory.action], dim=-1), memory.hidden)

    def _observed(self, obs: PyTorchObs) -> torch.Tensor:
        """``(N, obs_dim)``: the observation keys, without the context."""
        return self.extract_features(obs)[:, : self.features_extractor.obs_dim]

    # --- acting ----------------------------------------------------------------------------

    def step(
        self, obs: PyTorchObs, memory: Memory, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Memory]:
        """One step of ``N`` worlds: ``(actions (N, act_dim), values (N, 1), log_prob (N,),
        memory after the step)``. The actions are sampled (not clipped); the memory keeps them
        clipped, as the env applies them."""
        hidden = self._advance(obs, memory)
        latent_pi, latent_vf = self.mlp_extractor(hidden)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        values = self.value_net(latent_vf)
        return actions, values, log_prob, Memory(hidden, self._clip(actions))

    def step_values(self, obs: PyTorchObs, memory: Memory) -> torch.Tensor:
        """``(N, 1)`` values of observations that follow ``memory`` (bootstrapping)."""
        return self.value_net(self.mlp_extractor.forward_critic(self._advance(obs, memory)))

    def act(
        self, obs: PyTorchObs, memory: Memory | None, deterministic: bool = True
    ) -> tuple[torch.Tensor, Memory]:
        """``(actions, memory after)`` for worlds acting from ``memory`` (``None``: at the start
        of their episodes), what an evaluator keeps from one call to the next."""
        if memory is None:
            memory = self.initial_memory(next(iter(obs.values())).shape[0])
        actions, _, _, memory = self.step(obs, memory, deterministic)
        return actions, memory

    def forward(self, *args: Any, **kwargs: Any):
        raise TypeError(
            "a recurrent policy acts with step(obs, memory) (batched) or predict(obs, state, "
            "episode_start) and trains on the batched PPO (train_agent.py --env "
            "hyperrl/Batched...-v0 --policy recurrent)"
        )

    # SB3's memoryless entry points would feed the observation where the memory goes
    _predict = evaluate_actions = get_distribution = predict_values = forward

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """SB3's ``predict`` for one env or a vectorised batch: ``state`` is what the previous
        call returned (``None`` at the start), ``episode_start`` ``(N,)`` marks the envs whose
        episode begins with this observation. Returns the actions clipped to the action space
        and the next state."""
        self.set_training_mode(False)
        obs, vectorized = self.obs_to_tensor(observation)
        num_envs = next(iter(obs.values())).shape[0] if isinstance(obs, dict) else obs.shape[0]
        if state is None:
            memory = self.initial_memory(num_envs)
        else:
            memory = Memory(*(torch.as_tensor(s, device=self.device).float() for s in state))
        if episode_start is not None:
            start = torch.as_tensor(np.asarray(episode_start).reshape(-1), device=self.device)
            memory = self.forget(memory, start.bool())
        with torch.no_grad():
            actions, _, _, memory = self.step(obs, memory, deterministic)
        actions = self._clip(actions).cpu().numpy().reshape((-1, *self.action_space.shape))
        if not vectorized:
            actions = actions.squeeze(axis=0)
        return actions, tuple(m.cpu().numpy() for m in memory)

    # --- training --------------------------------------------------------------------------

    def evaluate_sequences(
        self,
        obs: PyTorchObs,
        actions: torch.Tensor,
        memory: Memory,
        starts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values, log-probabilities and entropies of ``n`` worlds' rollouts of ``T`` steps.

        :param obs: ``(n * T, ...)`` per key, each world's steps contiguous (world-major).
        :param actions: ``(n * T, act_dim)`` the actions taken.
        :param memory: each world's memory before its first step, ``(n, ...)``.
        :param starts: ``(n * T,)`` 1 where an episode begins at that step (memory zeroed first).
        :return: ``(values (n * T, 1), log_prob (n * T,), entropy (n * T,))``.
        """
        n = memory.hidden.shape[0]
        x = self._observed(obs).reshape(n, -1, self.features_extractor.obs_dim)
        steps = x.shape[1]
        taken = self._clip(actions).reshape(n, steps, -1)
        previous = torch.cat([memory.action.unsqueeze(1), taken[:, :-1]], dim=1)
        keep = 1.0 - starts.float().reshape(n, steps, 1)
        x = torch.cat([x, previous * keep], dim=-1)
        hidden, outputs = memory.hidden, []
        for t in range(steps):
            hidden = self.gru(x[:, t], hidden * keep[:, t])
            outputs.append(hidden)
        latent_pi, latent_vf = self.mlp_extractor(torch.stack(outputs, dim=1).flatten(0, 1))
        distribution = self._get_action_dist_from_latent(latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()
