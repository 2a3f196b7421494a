"""Fast classic-control envs with physical contexts, for tests, demos and quick learning checks."""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym

from envs.context import ContextSpace, scaled_feature
from envs.wrappers import ContextualEnv

PENDULUM_CONTEXT = ContextSpace(
    [
        scaled_feature("gravity", 10.0),
        scaled_feature("mass", 1.0),
        scaled_feature("length", 1.0, bounds=(0.4, 2.0)),
    ]
)

CARTPOLE_CONTEXT = ContextSpace(
    [
        scaled_feature("cart_mass", 1.0),
        scaled_feature("pole_mass", 0.1),
        scaled_feature("pole_length", 0.5, bounds=(0.4, 2.0)),
    ]
)


class ContextualPendulum(ContextualEnv):
    """Pendulum-v1 with gravity, mass and length as the context."""

    def __init__(
        self, split: str = "train", hidden_context: bool = False, contexts=None, **kwargs
    ) -> None:
        env = gym.make("Pendulum-v1", **kwargs)
        super().__init__(env, PENDULUM_CONTEXT, split, hidden_context, contexts)

    def apply_context(self, context: Mapping[str, float]) -> None:
        pendulum = self.env.unwrapped
        pendulum.g, pendulum.m, pendulum.l = context["gravity"], context["mass"], context["length"]


class ContextualCartPole(ContextualEnv):
    """CartPole-v1 with cart mass, pole mass and pole (half-)length as the context."""

    def __init__(
        self, split: str = "train", hidden_context: bool = False, contexts=None, **kwargs
    ) -> None:
        env = gym.make("CartPole-v1", **kwargs)
        super().__init__(env, CARTPOLE_CONTEXT, split, hidden_context, contexts)

    def apply_context(self, context: Mapping[str, float]) -> None:
        cartpole = self.env.unwrapped
        cartpole.masscart = context["cart_mass"]
        cartpole.masspole = context["pole_mass"]
        cartpole.length = context["pole_length"]
        # derived quantities CartPole caches in __init__
        cartpole.total_mass = cartpole.masspole + cartpole.masscart
        cartpole.polemass_length = cartpole.masspole * cartpole.length
