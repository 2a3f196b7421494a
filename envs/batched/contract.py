"""The contract of batched contextual envs, whose state lives in torch tensors on one device.

A :class:`BatchedContextualEnv` steps ``num_envs`` worlds at once, each with its own context drawn
from the same :class:`~envs.context.ContextSpace` as the CPU env, and resets finished worlds by
itself with freshly drawn contexts. Everything it returns is a tensor on ``device`` and nothing goes
through numpy. Two host synchronisations remain per step, both small: whether any world finished
(``done.any()``), and, when one did, drawing its new contexts and initial states with a CPU
``torch.Generator`` (seeded, so runs reproduce across devices) and copying them over.

The contract (shapes for ``N = num_envs``):

- ``observation_space`` / ``action_space``: the *single-world* gymnasium spaces, identical to the
  CPU env's (``Dict(observation=..., context=...)``), so the same policy class serves both;
- ``reset(seed) -> obs``: ``{"observation": (N, obs_dim), "context": (N, k)}`` float32;
- ``step(actions (N, act_dim)) -> obs, reward (N,), terminated (N,) bool, truncated (N,) bool,
  info``: ``obs`` is already the first observation of the next episode for finished worlds;
  ``info["final_observation"]`` holds every world's observation *before* that auto-reset (for
  bootstrapping truncated episodes; when no world finished it *is* ``obs``, the same dict, so a
  trainer can skip the bootstrap without another host sync) and ``info["context"]`` the raw
  ``(N, k)`` context values that produced this step; goal-reaching envs add
  ``info["is_success"]`` ``(N,)`` float (1.0 where the goal is reached), which the trainers log
  as ``rollout/success_rate``.

Implementations: :class:`envs.classic.batched.TorchPendulum` (plain torch), the locomotion and
Fetch envs on MuJoCo threads (:mod:`envs.batched.native`) and on MuJoCo Warp
(:mod:`envs.batched.warp`).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.context import SPLITS, ContextSpace

Obs = dict[str, torch.Tensor]


def sample_contexts(
    space: ContextSpace, n: int, split: str, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``(n, len(space))`` raw context values drawn like :meth:`ContextSpace.sample`, vectorised:
    every feature uniform over its train pieces; for held-out splits one random feature per row
    (among those that have such values) drawn from its held-out pieces instead."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    out = torch.empty(n, len(space), dtype=torch.float64)
    for i, f in enumerate(space.features):
        out[:, i] = _sample_pieces(f.pieces("train", task=split == "train"), n, generator)
    if split != "train":
        held = [i for i, f in enumerate(space.features) if f.pieces(split)]
        if not held:
            raise ValueError(f"no feature of this space has {split} values")
        which = torch.tensor(held)[torch.randint(len(held), (n,), generator=generator)]
        for i in held:
            rows = which == i
            values = _sample_pieces(space.features[i].pieces(split), n, generator)
            out[rows, i] = values[rows]
    return out.to(device=device, dtype=torch.float32)


def _sample_pieces(pieces, n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` float64 uniform over the union of ``pieces`` (by length)."""
    lengths = torch.tensor([hi - lo for lo, hi in pieces], dtype=torch.float64)
    starts = torch.tensor([lo for lo, _ in pieces], dtype=torch.float64)
    # position along the concatenated pieces, then back to the piece it falls in
    u = torch.rand(n, generator=generator, dtype=torch.float64) * lengths.sum()
    edges = torch.cumsum(lengths, 0)
    k = torch.searchsorted(edges, u, right=True).clamp(max=len(pieces) - 1)
    return starts[k] + u - (edges[k] - lengths[k])


def scale_contexts(space: ContextSpace, values: torch.Tensor) -> torch.Tensor:
    """``(N, k)`` raw values -> what the observation carries (train interval -> [-1, 1]), as
    :meth:`ContextSpace.to_array`."""
    center, half = (
        torch.as_tensor(a, dtype=values.dtype, device=values.device) for a in space.train_scaling()
    )
    return (values - center) / half


class BatchedContextualEnv(ABC):
    """Base class: context sampling, auto-reset and the observation dict; subclasses hold the
    physics (:meth:`_reset_worlds`, :meth:`_step_worlds`, :meth:`_observe`).

    :param num_envs: worlds stepped together.
    :param space: the context space (the CPU env's); ``None`` for task suites, whose context is
        a task descriptor the subclass observes (no context is drawn; ``split`` is theirs).
    :param split: which split contexts are drawn from at every (auto-)reset.
    :param max_episode_steps: truncation horizon.
    :param device: where every tensor lives.
    :param seed: seeds the context and initial-state generator (``reset(seed=...)`` re-seeds).
    """

    observation_space: gym.spaces.Dict
    action_space: gym.spaces.Box

    def __init__(
        self,
        num_envs: int,
        space: ContextSpace | None,
        split: str = "train",
        max_episode_steps: int = 1000,
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if space is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        self.num_envs, self.context_space, self.split = num_envs, space, split
        self.max_episode_steps = max_episode_steps
        self.device = torch.device(device)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        self.contexts = torch.zeros(num_envs, len(space or ()), device=self.device)
        #: what observations carry; replaced at every reset
        self.scaled_contexts = (
            scale_contexts(space, self.contexts) if space is not None else self.contexts
        )
        self.episode_steps = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    @functools.cached_property
    def action_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` of the action space on the device, ``(act_dim,)`` each."""
        low = torch.as_tensor(self.action_space.low, dtype=torch.float32, device=self.device)
        high = torch.as_tensor(self.action_space.high, dtype=torch.float32, device=self.device)
        return low, high

    @property
    def context_names(self) -> tuple[str, ...]:
        return self.context_space.names if self.context_space is not None else ()

    def context_values(self, mask: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """feature -> ``(n,)`` raw values of the ``n`` worlds in ``mask``, for those of ``names``
        this env's context has."""
        column = {name: i for i, name in enumerate(self.context_names)}
        return {f: self.contexts[mask, column[f]] for f in names if f in column}

    def _context_box(self) -> gym.spaces.Box:
        low, high = self.context_space.observation_bounds()
        return gym.spaces.Box(low, high, dtype=np.float32)

    def reset(self, seed: int | None = None, contexts: torch.Tensor | None = None) -> Obs:
        """Reset every world. ``contexts`` ``(N, k)`` raw values pins them (else drawn)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        everyone = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._reset(everyone, contexts)
        return self._obs()

    def stagger_episodes(self, granularity: int = 1) -> None:
        """Draw every world's elapsed step count uniformly from the multiples of ``granularity``
        in ``[0, max_episode_steps)`` (from ``self.generator``), so that the first truncations,
        and every reset after them, spread over the horizon instead of coming all at once
        (rsl_rl's ``init_at_random_ep_len``). With ``granularity=k`` the first truncations fall
        on one step in ``k``, and later ones on the few steps ``t0 + j * max_episode_steps``
        reaches modulo ``k`` (one when ``k`` divides the horizon), which keeps the per-reset work
        (context draws, derived masses) off most steps; ``k >= max_episode_steps`` staggers
        nothing. Call it after :meth:`reset`; the worlds' states are not touched."""
        slots = -(-self.max_episode_steps // granularity)  # ceil
        slot = torch.randint(slots, (self.num_envs,), generator=self.generator)
        self.episode_steps.copy_((slot * granularity).to(self.device))

    def step(
        self, actions: torch.Tensor
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step every world with ``actions`` ``(N, act_dim)``, clipped here to the action space;
        finished worlds auto-reset."""
        low, high = self.action_bounds
        actions = torch.maximum(torch.minimum(actions.to(self.device), high), low)
        context = self.contexts  # a reset replaces the tensor, so this stays the step's
        reward, terminated = self._step_worlds(actions)
        self.episode_steps += 1
        truncated = (self.episode_steps >= self.max_episode_steps) & ~terminated
        final = self._obs()
        done = terminated | truncated
        info = {"final_observation": final, "context": context, **self._step_info()}
        if not bool(done.any()):
            return final, reward, terminated, truncated, info
        self._reset(done, None)
        return self._obs(), reward, terminated, truncated, info

    def _reset(self, mask: torch.Tensor, contexts: torch.Tensor | None) -> None:
        if self.context_space is not None:
            self._set_contexts(mask, contexts)
        elif contexts is not None and torch.as_tensor(contexts).numel():
            raise ValueError(f"{type(self).__name__} has no context space; reset takes no contexts")
        self.episode_steps[mask] = 0
        self._reset_worlds(mask)

    def _set_contexts(self, mask: torch.Tensor, contexts: torch.Tensor | None) -> None:
        """Draw (or pin to ``contexts`` ``(n, k)`` raw values) the worlds' contexts."""
        n = int(mask.sum())
        if contexts is None:
            contexts = sample_contexts(
                self.context_space, n, self.split, self.generator, self.device
            )
        else:
            given = torch.as_tensor(contexts)
            if given.shape != (n, len(self.context_space)):
                raise ValueError(
                    f"contexts must be ({n}, {len(self.context_space)}) raw values "
                    f"{self.context_names}, got {tuple(given.shape)}"
                )
            # in the given dtype: a value at a bound stays at it before the float32 cast
            for column, feature in zip(given.T.cpu(), self.context_space.features, strict=True):
                lo, hi = (torch.tensor(b, dtype=column.dtype) for b in feature.bounds)
                outside = column[(column < lo) | (column > hi) | column.isnan()]
                if outside.numel():
                    raise ValueError(
                        f"context feature {feature.name!r}={float(outside[0])} is outside its "
                        f"allowed range [{feature.bounds[0]}, {feature.bounds[1]}]"
                    )
            contexts = given.to(dtype=torch.float32, device=self.device)
        # new tensors rather than in-place writes: observations and infos already handed out
        # keep the contexts they were made with
        updated = self.contexts.clone()
        updated[mask] = contexts
        self.contexts = updated
        self.scaled_contexts = scale_contexts(self.context_space, updated)

    #: whether :meth:`change_contexts` works (the backend implements :meth:`_apply_contexts`)
    supports_context_change: bool = False

    def change_contexts(self, mask: torch.Tensor, contexts: torch.Tensor | None = None) -> Obs:
        """Give the worlds in ``mask`` ``(N,)`` bool new contexts mid-episode (drawn from the
        split, or ``contexts`` ``(n, k)`` raw values), their states and step counts untouched:
        a robot whose load or floor changes while it runs. Returns the observation with the new
        contexts (what the next :meth:`step` continues from).

        :raises NotImplementedError: for a backend that cannot (:attr:`supports_context_change`).
        """
        if self.context_space is None or not self.supports_context_change:
            raise NotImplementedError(f"{type(self).__name__} cannot change contexts mid-episode")
        mask = mask.to(self.device)
        self._set_contexts(mask, contexts)
        self._apply_contexts(mask)
        return self._obs()

    def _apply_contexts(self, mask: torch.Tensor) -> None:
        """Write the contexts of the worlds in ``mask`` into their physics (a backend whose step
        reads :attr:`contexts` directly has nothing to do)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the next steps depend on, as tensors (for checkpoints, ``torch.save`` with
        ``weights_only`` loading): the contexts, the step counts, the generator's state and the
        physics (:meth:`_physics_state`). :meth:`load_state_dict` into an env built with the same
        arguments continues exactly where this one is.

        :raises NotImplementedError: for an env whose physics state cannot be captured
            (:attr:`supports_state` is ``False``)."""
        if not self.supports_state:
            raise NotImplementedError(f"{type(self).__name__} cannot capture its state")
        return {
            "contexts": self.contexts,
            "scaled_contexts": self.scaled_contexts,
            "episode_steps": self.episode_steps,
            "generator": self.generator.get_state(),
            **{f"physics.{k}": v for k, v in self._physics_state().items()},
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`state_dict`'s state.

        :raises ValueError: for a state of another number of worlds or context width."""
        if tuple(state["contexts"].shape) != tuple(self.contexts.shape):
            raise ValueError(
                f"the saved env state is for contexts {tuple(state['contexts'].shape)}, this env "
                f"has {tuple(self.contexts.shape)} (another n_envs or env?)"
            )
        self.contexts = state["contexts"].to(self.device)
        self.scaled_contexts = state["scaled_contexts"].to(self.device)
        self.episode_steps = state["episode_steps"].to(self.device)
        self.generator.set_state(state["generator"].cpu())
        prefix = "physics."
        self._load_physics_state(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )

    #: whether :meth:`state_dict` works (the backend implements :meth:`_physics_state`)
    supports_state: bool = False

    def _physics_state(self) -> dict[str, torch.Tensor]:
        """The physics' part of :meth:`state_dict`."""
        raise NotImplementedError

    def _load_physics_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`_physics_state` returned (the contexts are already set)."""
        raise NotImplementedError

    def _obs(self) -> Obs:
        return {
            "observation": self._observe(),
            "context": self.scaled_contexts,
        }

    @abstractmethod
    def _reset_worlds(self, mask: torch.Tensor) -> None:
        """Draw initial states for the worlds in ``mask`` ``(N,)`` bool (contexts already set)."""

    @abstractmethod
    def _step_worlds(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance every world; return ``reward (N,)`` and ``terminated (N,)`` bool."""

    @abstractmethod
    def _observe(self) -> torch.Tensor:
        """``(N, obs_dim)`` float32 observation of every world."""

    def _step_info(self) -> dict[str, torch.Tensor]:
        """What this step adds to ``info`` (e.g. ``"is_success"``), ``(N,)`` tensors."""
        return {}
