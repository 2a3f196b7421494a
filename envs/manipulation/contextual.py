"""Fetch manipulation (gymnasium-robotics) with object and table physics as the context.

The goal-conditioned keys stay as they are (``observation``, ``achieved_goal``,
``desired_goal``: the goal is the task descriptor, and HER relabels it); the physics context is an
extra ``context`` key. Needs the ``robotics`` extra (``pip install -e ".[robotics]"``); importing
this module applies :func:`envs.compat.patch_gymnasium_robotics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from envs.compat import patch_gymnasium_robotics
from envs.context import ContextFeature, ContextSpace, scaled_feature
from envs.physics import FETCH_FIELDS, PhysicsTable
from envs.wrappers import ContextualEnv

FETCH_TASKS = ("Push", "Slide", "PickAndPlace")

#: FetchReach's goal as a context: its offset (m) from where the gripper starts. FetchReach draws
#: it uniformly from [-0.15, 0.15] per axis; held out are a slab of each axis inside that range
#: and, beyond it, offsets up to 0.25 m (z only upwards: lower goals would sit inside the table).
REACH_FEATURES: dict[str, ContextFeature] = {
    f"goal_{axis}": ContextFeature(
        f"goal_{axis}",
        0.0,
        train=(-0.15, 0.15),
        holdout=(0.03, 0.09),
        bounds=(-0.15 if axis == "z" else -0.25, 0.25),
    )
    for axis in "xyz"
}

FETCH_FEATURES: dict[str, ContextFeature] = {
    "object_mass_scale": scaled_feature("object_mass_scale", 1.0),
    "object_friction_scale": scaled_feature("object_friction_scale", 1.0),
    "table_friction_scale": scaled_feature("table_friction_scale", 1.0),
}


def scale_fetch_model(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    physics: PhysicsTable,
    eq_data: np.ndarray,
    context: Mapping[str, float],
) -> None:
    """Write a Fetch physics context into ``model`` (``physics``: :data:`FETCH_FIELDS` of its
    object and table; features left out stay nominal), then what ``mj_setConst`` derives,
    computed with ``data`` as scratch, keeping ``eq_data`` (the mocap weld as built)."""
    physics.apply(model, context)
    mujoco.mj_setConst(model, data)
    # mj_setConst also recomputes the mocap weld's relative pose from qpos0, which is not where
    # gymnasium-robotics set it up; keep the env's own
    model.eq_data[:] = eq_data


def make_robotics_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` of a gymnasium-robotics env, patched for this MuJoCo, with a clear error when
    the package is missing."""
    if not patch_gymnasium_robotics():
        raise ImportError(
            f"{env_id} needs gymnasium-robotics: pip install -e '.[robotics]' "
            "(or HYPERRL_EXTRAS=dev,robotics bash scripts/setup.sh)"
        )
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    return gym.make(env_id, **kwargs)


class ContextualFetch(ContextualEnv):
    """A Fetch task whose object mass, object friction and table friction follow a context.

    :param env_id: ``"FetchPush-v4"``, ``"FetchSlide-v4"`` or ``"FetchPickAndPlace-v4"``.
    :param features: names from :data:`FETCH_FEATURES`.
    :param split: which split the per-episode sampler draws from.
    :param hidden_context: leave the ``context`` key out.
    :param contexts: a fixed list of contexts to draw from instead of sampling ``split``.
    :param kwargs: passed to ``gym.make`` (``render_mode``...).
    """

    def __init__(
        self,
        env_id: str,
        features: Sequence[str] = tuple(FETCH_FEATURES),
        split: str = "train",
        hidden_context: bool = False,
        contexts: Sequence[Mapping[str, float]] | None = None,
        **kwargs: Any,
    ) -> None:
        space = ContextSpace.choose(FETCH_FEATURES, features, "Fetch")
        env = make_robotics_env(env_id, **kwargs)
        super().__init__(env, space, split, hidden_context, contexts)
        model = env.unwrapped.model
        body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "object0")
        table = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "table0")
        if body < 0 or table < 0:
            raise ValueError(
                f"{env_id} has no object0/table0 body; use a Fetch task with an object"
            )
        #: applies the context to the object's body and geoms and the table's geoms
        self.physics = PhysicsTable(
            model,
            FETCH_FIELDS,
            FETCH_FEATURES,
            {
                "object": np.array([body]),
                "object_geoms": (model.geom_bodyid == body).nonzero()[0],
                "table_geoms": (model.geom_bodyid == table).nonzero()[0],
            },
        )
        self.eq_data = model.eq_data.copy()  #: the mocap weld as built

    #: the Fetch models are rescaled for a new episode only
    supports_context_change = False

    def apply_context(self, context: Mapping[str, float]) -> None:
        env = self.env.unwrapped
        scale_fetch_model(env.model, env.data, self.physics, self.eq_data, context)

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> Any:
        """The wrapped task's reward, for ``HerReplayBuffer``."""
        return self.env.unwrapped.compute_reward(achieved_goal, desired_goal, info)


class PlainRewards(gym.Wrapper):
    """Returns rewards as Python floats (gymnasium-robotics returns numpy floats, which SB3's
    checker rejects) and exposes ``compute_reward`` for HER."""

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> Any:
        return self.env.unwrapped.compute_reward(achieved_goal, desired_goal, info)


def fetch_reach(**kwargs: Any) -> gym.Env:
    """FetchReach-v4 (patched): the goal, ``desired_goal``, is its only context. Registered as
    ``hyperrl/FetchReach-v0``."""
    return PlainRewards(make_robotics_env("FetchReach-v4", **kwargs))


class ContextualFetchReach(ContextualEnv):
    """FetchReach whose goal is a context: the target's offset from the gripper's start.

    The goal-conditioned keys go: the observation is ``Dict(observation=<FetchReach's 10
    values>, context=<the scaled offset>)``, as for the locomotion envs, so the descriptor reaches
    the policy as context and held-out goals are a split like any other (for the goal as
    ``desired_goal`` with HER, use ``hyperrl/FetchReach-v0``). The reward is FetchReach's, by
    default its dense one (minus the distance to the goal, in metres); ``info["is_success"]``
    says whether the gripper is within 5 cm of it. :class:`envs.manipulation.warp.WarpFetchReach`
    is its batched twin.

    :param features: names from :data:`REACH_FEATURES` (the offsets left out stay 0).
    :param split: which split the per-episode sampler draws from.
    :param hidden_context: leave the ``context`` key out.
    :param contexts: a fixed list of contexts to draw from instead of sampling ``split``.
    :param reward_type: ``"dense"`` or ``"sparse"`` (-1 until within 5 cm, then 0).
    :param kwargs: passed to ``gym.make`` (``render_mode``...).
    """

    def __init__(
        self,
        features: Sequence[str] = tuple(REACH_FEATURES),
        split: str = "train",
        hidden_context: bool = False,
        contexts: Sequence[Mapping[str, float]] | None = None,
        reward_type: str = "dense",
        **kwargs: Any,
    ) -> None:
        space = ContextSpace.choose(REACH_FEATURES, features, "FetchReach")
        if reward_type not in ("dense", "sparse"):
            raise ValueError(f"reward_type is 'dense' or 'sparse', not {reward_type!r}")
        env = make_robotics_env("FetchReach-v4", reward_type=reward_type, **kwargs)
        super().__init__(env, space, split, hidden_context, contexts)
        spaces = {"observation": env.observation_space["observation"]}
        if not hidden_context:
            spaces["context"] = self.observation_space["context"]
        self.observation_space = gym.spaces.Dict(spaces)
        self._offset = np.zeros(3)

    #: the goal is placed at reset only
    supports_context_change = False

    def apply_context(self, context: Mapping[str, float]) -> None:
        self._offset = np.array([context.get(f"goal_{axis}", 0.0) for axis in "xyz"])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        # FetchReach drew a goal of its own while resetting; the context's replaces it (the
        # observation kept here does not depend on the goal)
        env = self.env.unwrapped
        env.goal = env.initial_gripper_xpos[:3] + self._offset
        return obs, info

    @property
    def goal(self) -> np.ndarray:
        """``(3,)`` the current target position (world frame, m)."""
        return self.env.unwrapped.goal.copy()

    def _observe(self, obs: Any) -> dict[str, Any]:
        out = {"observation": obs["observation"]}
        if not self.hidden_context:
            out["context"] = self._context_array.copy()
        return out
