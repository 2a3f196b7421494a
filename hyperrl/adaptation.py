"""Inferring an unknown context from recent experience (Rapid Motor Adaptation's phase 2).

A context-conditioned policy needs its context (gravity, masses, a target velocity) at every
step; a deployed robot does not know it. :class:`AdaptationModule` estimates it from the last
``k`` transitions ``(o_t, a_t, r_t, o_{t+1})`` of the running episode, which a
:class:`TransitionHistory` keeps per world; the estimate, in the policy's own context scale
(train interval -> [-1, 1]), takes the true context's place in the observation, so the same
generated heads run unchanged.

Why an MLP over a short flattened history rather than RMA's 1-D convolution over 50 steps or a
GRU: the contexts here (masses, friction, gravity, actuator strength, a target velocity) show
within a few dozen steps of motion, an MLP over ``k`` of them is the cheapest thing to train and
to export, and it has no recurrent state to carry across a deployment's control loop. What is
learned is the context itself, not the generator's embedding of it, so one module serves any
conditioning (hyper, FiLM, concat) and its error reads per feature in the context's units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TransitionHistory:
    """The last ``length`` transitions of each of ``num_envs`` worlds, oldest first.

    :param num_envs: worlds ``N``.
    :param length: transitions kept ``k``.
    :param dim: size ``d`` of one transition vector.
    :param device: where the buffers live.
    """

    def __init__(self, num_envs: int, length: int, dim: int, device: torch.device | str) -> None:
        if length < 1:
            raise ValueError(f"history length must be >= 1, got {length}")
        #: ``(N, k, d)`` transitions, zero where there is none yet
        self.transitions = torch.zeros(num_envs, length, dim, device=device)
        #: ``(N, k)`` which slots hold a transition of the running episode
        self.valid = torch.zeros(num_envs, length, dtype=torch.bool, device=device)

    def push(self, transition: torch.Tensor) -> None:
        """Append ``transition`` ``(N, d)`` to every world's history, dropping the oldest."""
        self.transitions[:, :-1] = self.transitions[:, 1:].clone()
        self.transitions[:, -1] = transition
        self.valid[:, :-1] = self.valid[:, 1:].clone()
        self.valid[:, -1] = True

    def clear(self, mask: torch.Tensor) -> None:
        """Forget the histories of the worlds in ``mask`` ``(N,)`` bool (a new episode)."""
        self.transitions[mask] = 0.0
        self.valid[mask] = False


def transition(
    obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    """``(N, 2 * obs_dim + act_dim + 1)``: one transition per world, as the history stores it
    (``obs``, ``next_obs`` ``(N, obs_dim)`` without the context, ``action`` ``(N, act_dim)`` as
    the env applied it, ``reward`` ``(N,)``)."""
    return torch.cat([obs, action, reward.unsqueeze(-1), next_obs], dim=-1)


class AdaptationModule(nn.Module):
    """history ``(B, k, d)`` and its validity ``(B, k)`` -> context estimate ``(B, c)``.

    Each transition is standardised by statistics of the data it is trained on (buffers, so an
    exported module carries them), invalid slots are zeroed and flagged, and an MLP reads the
    flattened history.

    :param transition_dim: ``d`` (:func:`transition`'s width).
    :param context_dim: ``c``, the policy's context size.
    :param history: ``k`` transitions.
    :param hidden: widths of the MLP's hidden layers.
    """

    def __init__(
        self,
        transition_dim: int,
        context_dim: int,
        history: int = 16,
        hidden: Sequence[int] = (256, 128),
    ) -> None:
        super().__init__()
        self.transition_dim, self.context_dim, self.history = transition_dim, context_dim, history
        self.hidden = tuple(int(h) for h in hidden)
        self.register_buffer("mean", torch.zeros(transition_dim))
        self.register_buffer("var", torch.ones(transition_dim))
        self.register_buffer("count", torch.tensor(0.0))
        layers: list[nn.Module] = []
        width = history * (transition_dim + 1)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ELU()]
            width = h
        layers.append(nn.Linear(width, context_dim))
        self.net = nn.Sequential(*layers)

    def config(self) -> dict[str, object]:
        """The constructor's arguments (saved beside the weights)."""
        return {
            "transition_dim": self.transition_dim,
            "context_dim": self.context_dim,
            "history": self.history,
            "hidden": list(self.hidden),
        }

    @torch.no_grad()
    def update_statistics(self, transitions: torch.Tensor) -> None:
        """Fold ``transitions`` ``(M, d)`` into the input standardisation (running mean and
        variance over everything seen)."""
        x = transitions.reshape(-1, self.transition_dim).double()
        n = x.shape[0]
        if n == 0:
            return
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count.double() + n
        delta = batch_mean - self.mean.double()
        mean = self.mean.double() + delta * n / total
        m2 = self.var.double() * self.count.double() + batch_var * n
        m2 = m2 + delta**2 * self.count.double() * n / total
        self.mean.copy_(mean.float())
        self.var.copy_((m2 / total).float())
        self.count.copy_(total.float())

    def forward(self, transitions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scaled = (transitions - self.mean) / torch.sqrt(self.var + 1e-8)
        flag = valid.unsqueeze(-1).to(scaled.dtype)
        x = torch.cat([scaled.clamp(-10.0, 10.0) * flag, flag], dim=-1)
        return self.net(x.flatten(1))

    def estimate(self, history: TransitionHistory) -> torch.Tensor:
        """``(N, c)`` estimates from a :class:`TransitionHistory`."""
        return self(history.transitions, history.valid)
