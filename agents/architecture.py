"""What a run of ``--policy architecture`` (one generator for a family of actor sizes,
:mod:`hyperrl.architecture`) needs outside the policy: its space from the run's
``policy_kwargs``, and gymnasium envs whose observation carries the member to act with
(:class:`MemberObservation`, for evaluating one member on the CPU twin). Training draws members
per world in :mod:`agents.batched.architecture`; :mod:`agents.architecture_search` evaluates
members and picks one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from hyperrl.architecture import ArchitectureSpace, Member
from hyperrl.policies.architecture import ARCHITECTURE_KEY


def space_of(policy_kwargs: dict[str, Any]) -> ArchitectureSpace:
    """The architecture space of a run's ``policy_kwargs`` (``widths``, ``max_depth``,
    ``min_depth``; the policy's defaults otherwise)."""
    names = ("widths", "max_depth", "min_depth")
    given = {k: policy_kwargs[k] for k in names if k in policy_kwargs}
    if "widths" in given:
        given["widths"] = tuple(given["widths"])
    return ArchitectureSpace(**given)


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


class MemberObservation(gym.ObservationWrapper):
    """A gymnasium env whose observations carry one member of ``space`` under
    :data:`~hyperrl.policies.architecture.ARCHITECTURE_KEY` (what the policy acts with).

    :raises ValueError: when ``member`` is not in ``space``."""

    def __init__(self, env: gym.Env, space: ArchitectureSpace, member: Sequence[int]) -> None:
        super().__init__(env)
        self.member = space.check(member)
        encoded = space.encode([self.member])[0].numpy().astype(np.float32)
        self._encoded = encoded
        box = gym.spaces.Box(0.0, float(space.max_width), encoded.shape, np.float32)
        self.observation_space = gym.spaces.Dict({**env.observation_space.spaces,
                                                  ARCHITECTURE_KEY: box})  # fmt: skip

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, ARCHITECTURE_KEY: self._encoded.copy()}


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
