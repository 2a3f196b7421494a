"""The context convention as a wrapper: Dict observations, one context per episode, pinning."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from envs.context import SPLITS, ContextSpace


class ContextualEnv(gym.Wrapper):
    """Base wrapper: draws a context per episode, writes it into the env, and shows it.

    - observation: ``Dict(observation=<the env's>, context=Box(len(space)))``, the context scaled
      so the train interval is [-1, 1] (:meth:`ContextSpace.to_array`); an env whose observation
      is already a Dict (goal-conditioned robotics) keeps its keys and gains ``context``; with
      ``hidden_context=True`` no ``context`` key (for agents that must infer the context);
    - ``reset(options={"context": {name: value}})`` pins a context (missing names nominal);
      otherwise the sampler draws one from ``split`` (``"train"`` by default);
    - ``info["context"]`` always holds the named values.

    Subclasses define :meth:`apply_context`, which writes a validated context into ``self.env``.

    :param env: the env to wrap.
    :param space: its context space.
    :param split: which split the per-episode sampler draws from.
    :param hidden_context: leave the context out of the observation.
    :param contexts: a fixed list of contexts (name -> value) to draw from uniformly instead of
        sampling ``split``; each is validated (missing names nominal).
    """

    def __init__(
        self,
        env: gym.Env,
        space: ContextSpace,
        split: str = "train",
        hidden_context: bool = False,
        contexts: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        super().__init__(env)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        self.context_space, self.split, self.hidden_context = space, split, hidden_context
        self.contexts = None if contexts is None else [space.validate(c) for c in contexts]
        if self.contexts == []:
            raise ValueError("contexts is empty; pass None to sample the split instead")
        self._dict_obs = isinstance(env.observation_space, gym.spaces.Dict)
        spaces = (
            dict(env.observation_space)
            if self._dict_obs
            else {"observation": env.observation_space}
        )
        if not hidden_context:
            low, high = space.observation_bounds()
            spaces["context"] = gym.spaces.Box(low, high, dtype=np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self._context_rng = np.random.default_rng()
        self._set_context(space.nominal)

    def _set_context(self, context: dict[str, float]) -> None:
        self.context = context
        self._context_array = self.context_space.to_array(context)  # once, not every step

    @abstractmethod
    def apply_context(self, context: Mapping[str, float]) -> None:
        """Write ``context`` (complete, validated) into the wrapped env before its reset."""

    def _observe(self, obs: Any) -> dict[str, Any]:
        out = dict(obs) if self._dict_obs else {"observation": obs}
        if not self.hidden_context:
            out["context"] = self._context_array.copy()
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if seed is not None:
            self._context_rng = np.random.default_rng(seed)
        options = dict(options or {})
        pinned = options.pop("context", None)
        if pinned is not None:
            context = self.context_space.validate(pinned)
        elif self.contexts is not None:
            context = dict(self.contexts[self._context_rng.integers(len(self.contexts))])
        else:
            context = self.context_space.sample(self._context_rng, self.split)
        self._set_context(context)
        self.apply_context(context)
        obs, info = self.env.reset(seed=seed, options=options or None)
        return self._observe(obs), info | {"context": dict(self.context)}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = info | {"context": dict(self.context)}
        return self._observe(obs), float(reward), bool(terminated), bool(truncated), info
