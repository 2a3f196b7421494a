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

from envs.compat import patch_gymnasium_robotics
from envs.context import ContextFeature, ContextSpace, scaled_feature
from envs.wrappers import ContextualEnv

FETCH_TASKS = ("Push", "Slide", "PickAndPlace")

FETCH_FEATURES: dict[str, ContextFeature] = {
    "object_mass_scale": scaled_feature("object_mass_scale", 1.0),
    "object_friction_scale": scaled_feature("object_friction_scale", 1.0),
    "table_friction_scale": scaled_feature("table_friction_scale", 1.0),
}


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
        unknown = [f for f in features if f not in FETCH_FEATURES]
        if unknown:
            raise ValueError(
                f"unknown Fetch features {unknown}; choose from {list(FETCH_FEATURES)}"
            )
        env = make_robotics_env(env_id, **kwargs)
        space = ContextSpace([FETCH_FEATURES[f] for f in features])
        super().__init__(env, space, split, hidden_context, contexts)
        model = env.unwrapped.model
        self._object_body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "object0")
        table = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "table0")
        if self._object_body < 0 or table < 0:
            raise ValueError(
                f"{env_id} has no object0/table0 body; use a Fetch task with an object"
            )
        self._object_geoms = (model.geom_bodyid == self._object_body).nonzero()[0]
        self._table_geoms = (model.geom_bodyid == table).nonzero()[0]
        self._nominal = {
            "body_mass": model.body_mass.copy(),
            "body_inertia": model.body_inertia.copy(),
            "geom_friction": model.geom_friction.copy(),
            "eq_data": model.eq_data.copy(),
        }

    def apply_context(self, context: Mapping[str, float]) -> None:
        model, nominal, body = self.env.unwrapped.model, self._nominal, self._object_body
        scale = {name: context.get(name, f.nominal) for name, f in FETCH_FEATURES.items()}
        model.body_mass[body] = nominal["body_mass"][body] * scale["object_mass_scale"]
        model.body_inertia[body] = nominal["body_inertia"][body] * scale["object_mass_scale"]
        model.geom_friction[:] = nominal["geom_friction"]
        model.geom_friction[self._object_geoms, 0] *= scale["object_friction_scale"]
        model.geom_friction[self._table_geoms, 0] *= scale["table_friction_scale"]
        mujoco.mj_setConst(model, self.env.unwrapped.data)
        # mj_setConst also recomputes the mocap weld's relative pose from qpos0, which is not
        # where gymnasium-robotics set it up; keep the env's own
        model.eq_data[:] = nominal["eq_data"]

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
