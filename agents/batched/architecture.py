"""Training one generator for a family of policy sizes: each world of a batched env acts with a
member of the policy's architecture space, drawn afresh for every episode
(:class:`ArchitectureSampling`), so one PPO run trains every member, evenly over depths and
widths (:meth:`hyperrl.architecture.ArchitectureSpace.sample`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.architecture import sandwich_of, space_of
from envs.batched import BatchedContextualEnv, Obs
from hyperrl.architecture import ArchitectureSpace, check_sandwich
from hyperrl.policies.architecture import ARCHITECTURE_KEY


class ArchitectureSampling:
    """``env`` whose observations carry the member each world acts with under
    :data:`~hyperrl.policies.architecture.ARCHITECTURE_KEY` (hidden widths, 0 past the depth):
    drawn from ``space`` at every world's reset, or always ``member`` when given (evaluating one
    member). The rest of the contract is ``env``'s.

    :param env: the batched env (Dict observations).
    :param space: the members.
    :param member: one member for every world and episode (``None``: drawn).
    :param seed: seeds the draws.
    :param sandwich: the share of draws that are the largest or the smallest member.
    """

    supports_state = False

    def __init__(
        self,
        env: BatchedContextualEnv,
        space: ArchitectureSpace,
        member: Sequence[int] | None = None,
        seed: int | None = None,
        sandwich: float = 0.0,
    ) -> None:
        spaces = dict(env.observation_space.spaces)
        if ARCHITECTURE_KEY in spaces:
            raise ValueError(f"the env already has an {ARCHITECTURE_KEY!r} key")
        self.env, self.space, self.sandwich = env, space, check_sandwich(sandwich)
        self.member = None if member is None else space.encode([member])[0].to(env.device)
        box = gym.spaces.Box(0.0, float(space.max_width), (space.max_depth,), np.float32)
        self.observation_space = gym.spaces.Dict({**spaces, ARCHITECTURE_KEY: box})
        self.action_space = env.action_space
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.members = self._draw(env.num_envs)

    def __getattr__(self, name: str) -> Any:  # num_envs, device, contexts, split...
        return getattr(self.env, name)

    def _draw(self, n: int) -> torch.Tensor:
        if self.member is not None:
            return self.member.expand(n, -1).clone()
        return self.space.sample(n, self.generator, self.sandwich).to(self.env.device)

    def _with_members(self, obs: Obs, members: torch.Tensor) -> Obs:
        return {**obs, ARCHITECTURE_KEY: members.float()}

    def reset(self, seed: int | None = None, contexts: torch.Tensor | None = None) -> Obs:
        if seed is not None:
            self.generator.manual_seed(seed)
        self.members = self._draw(self.env.num_envs)
        return self._with_members(self.env.reset(seed=seed, contexts=contexts), self.members)

    def stagger_episodes(self, granularity: int = 1) -> None:
        self.env.stagger_episodes(granularity)

    def change_contexts(self, mask: torch.Tensor, contexts: torch.Tensor | None = None) -> Obs:
        return self._with_members(self.env.change_contexts(mask, contexts), self.members)

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError("architecture sampling does not capture its state")

    def step(
        self, actions: torch.Tensor
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        some_finished = info["final_observation"] is not obs
        final = self._with_members(info["final_observation"], self.members)
        info = {**info, "final_observation": final}
        if not some_finished:  # the same dict as obs, as the contract says
            return final, reward, terminated, truncated, info
        done = terminated | truncated
        members = self.members.clone()
        members[done] = self._draw(int(done.sum()))
        self.members = members
        return self._with_members(obs, members), reward, terminated, truncated, info


def for_policy(
    env: BatchedContextualEnv,
    policy: str,
    policy_kwargs: dict[str, Any],
    seed: int | None = None,
    member: Sequence[int] | None = None,
):
    """``env`` as ``--policy policy`` trains on it: wrapped in :class:`ArchitectureSampling`
    (the space from ``policy_kwargs``: ``widths``, ``max_depth``, ``min_depth``; and its
    ``sandwich``) for ``architecture``, as it is otherwise."""
    if policy != "architecture":
        return env
    space, sandwich = space_of(policy_kwargs), sandwich_of(policy_kwargs)
    return ArchitectureSampling(env, space, member, seed, sandwich)
