"""Classic control with physics contexts: Pendulum and CartPole (gymnasium,
:mod:`~envs.classic.contextual`) and Pendulum batched in torch (:mod:`~envs.classic.batched`)."""

from envs.classic.contextual import (
    CARTPOLE_CONTEXT,
    PENDULUM_CONTEXT,
    ContextualCartPole,
    ContextualPendulum,
)

__all__ = ["CARTPOLE_CONTEXT", "PENDULUM_CONTEXT", "ContextualCartPole", "ContextualPendulum"]
