"""What a run of ``--policy architecture`` (one generator for a family of actor sizes,
:mod:`hyperrl.architecture`) needs outside the policy: its space from the run's
``policy_kwargs``, and gymnasium envs whose observation carries the member to act with
(:class:`MemberObservation`, for evaluating one member on the CPU twin; :class:`MemberSampling`,
a member drawn per episode, for training through SB3's PPO). The batched trainers draw members
per world in :mod:`agents.batched.architecture`; :mod:`agents.architecture_search` evaluates
members and picks one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from hyperrl.architecture import ArchitectureSpace, Member, check_sandwich
from hyperrl.policies.architecture import ARCHITECTURE_KEY


def space_of(policy_kwargs: dict[str, Any]) -> ArchitectureSpace:
    """The architecture space of a run's ``policy_kwargs`` (``widths``, ``max_depth``,
    ``min_depth``; the policy's defaults otherwise)."""
    names = ("widths", "max_depth", "min_depth")
    given = {k: policy_kwargs[k] for k in names if k in policy_kwargs}
    if "widths" in given:
        given["widths"] = tuple(given["widths"])
    return ArchitectureSpace(**given)


def sandwich_of(policy_kwargs: dict[str, Any]) -> float:
    """The share of a run's member draws that are its largest or smallest member
    (``policy_kwargs``' ``sandwich``, default 0; the samplers check it)."""
    return policy_kwargs.get("sandwich", 0.0)


def parse_member(text: str) -> Member:
    """``"64,16"`` -> ``(64, 16)``.

    :raises ValueError: for anything but comma-separated positive integers."""
    try:
        member = tuple(int(w) for w in text.split(","))
    except ValueError:
        member = ()
    if not member or min(member) < 1:
        raise ValueError(f"a member is its hidden widths, such as 64,16; got {text!r}")
    return member


def _with_member_space(env: gym.Env, space: ArchitectureSpace) -> gym.spaces.Dict:
    """``env``'s Dict observation space with the member key added (widths, 0 past the depth)."""
    spaces = dict(getattr(env.observation_space, "spaces", {}))
    if not spaces:
        raise ValueError(
            f"architecture generation needs a Dict observation; {env.spec.id if env.spec else env} "
            f"has {type(env.observation_space).__name__}"
        )
    if ARCHITECTURE_KEY in spaces:
        raise ValueError(f"the env already has an {ARCHITECTURE_KEY!r} key")
    box = gym.spaces.Box(0.0, float(space.max_width), (space.max_depth,), np.float32)
    return gym.spaces.Dict({**spaces, ARCHITECTURE_KEY: box})


class MemberObservation(gym.ObservationWrapper):
    """A gymnasium env whose observations carry one member of ``space`` under
    :data:`~hyperrl.policies.architecture.ARCHITECTURE_KEY` (what the policy acts with).

    :raises ValueError: when ``member`` is not in ``space``."""

    def __init__(self, env: gym.Env, space: ArchitectureSpace, member: Sequence[int]) -> None:
        super().__init__(env)
        self.member = space.check(member)
        self._encoded = space.encode([self.member])[0].numpy().astype(np.float32)
        self.observation_space = _with_member_space(env, space)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, ARCHITECTURE_KEY: self._encoded.copy()}


class MemberSampling(gym.Wrapper):
    """A gymnasium env that acts with a member of ``space`` drawn afresh at every reset (evenly
    over depths and widths, :meth:`~hyperrl.architecture.ArchitectureSpace.sample`), carried in
    its observations under :data:`~hyperrl.policies.architecture.ARCHITECTURE_KEY`: how SB3's PPO
    trains every member of one generator; ``sandwich`` of the draws are the largest or the
    smallest member. ``reset(seed=...)`` seeds the draws too."""

    def __init__(self, env: gym.Env, space: ArchitectureSpace, sandwich: float = 0.0) -> None:
        super().__init__(env)
        self.space, self.sandwich = space, check_sandwich(sandwich)
        self.observation_space = _with_member_space(env, space)
        self._generator = torch.Generator().manual_seed(0)
        self._encoded = np.zeros(space.max_depth, np.float32)

    @property
    def member(self) -> Member:
        """The widths of the member acting in the current episode."""
        return tuple(int(w) for w in self._encoded if w > 0)

    def reset(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        if kwargs.get("seed") is not None:
            self._generator.manual_seed(int(kwargs["seed"]))
        drawn = self.space.sample(1, self._generator, self.sandwich)[0]
        self._encoded = drawn.numpy().astype(np.float32)
        obs, info = self.env.reset(**kwargs)
        return self._observation(obs), info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observation(obs), reward, terminated, truncated, info

    def _observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, ARCHITECTURE_KEY: self._encoded.copy()}


def training_wrapper(
    policy: str, policy_kwargs: dict[str, Any] | None
) -> Callable[[gym.Env], gym.Env] | None:
    """How ``--policy policy`` wraps its SB3 training envs: :class:`MemberSampling` over the
    space of ``policy_kwargs`` for ``architecture``, nothing (``None``) otherwise."""
    if policy != "architecture":
        return None
    space, sandwich = space_of(policy_kwargs or {}), sandwich_of(policy_kwargs or {})
    return lambda env: MemberSampling(env, space, sandwich)


def member_wrapper(
    config: Any, member: Sequence[int] | None
) -> tuple[Callable[[gym.Env], gym.Env], Member | None]:
    """``(wrap, member)``: how a run's CPU env is wrapped to play its policy, with the member to
    act with for an architecture run (``member``, default its largest), as it is otherwise
    (member ``None``).

    :raises ValueError: for a member outside the run's space, or a member given to another run.
    """
    if config.policy != "architecture":
        if member is not None:
            raise ValueError(f"--member is for --policy architecture runs, not {config.policy}")
        return (lambda env: env), None
    space = space_of(config.hyperparams.get("policy_kwargs") or {})
    chosen = space.check(member if member is not None else space.largest)
    return (lambda env: MemberObservation(env, space, chosen)), chosen
