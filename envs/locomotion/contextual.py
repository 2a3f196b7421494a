"""MuJoCo locomotion (gymnasium v5) with physics and task contexts.

Physics features scale the compiled model's nominal values
(:data:`envs.physics.LOCOMOTION_FIELDS`), which are kept at construction, so a context is never
applied on top of another and the nominal context restores the original model exactly.
``mujoco.mj_setConst`` recomputes the derived quantities (subtree masses, inverse weights...)
after each change, before the env's reset.

Task features replace the env's forward reward: ``target_velocity`` rewards
``-w |v_x - target|`` and ``direction`` (Ant, Humanoid) rewards ``w (v_x cos a + v_y sin a)``,
with the env's own forward weight ``w``; the other reward terms (control, contact, survival) stay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from envs.context import ContextFeature, ContextSpace, scaled_feature
from envs.physics import LOCOMOTION_FIELDS, PhysicsTable
from envs.wrappers import ContextualEnv

#: what a MuJoCo state is made of (beside ``time``)
_STATE_FIELDS = ("qpos", "qvel", "act", "ctrl", "qacc_warmstart")

LOCOMOTION = ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid")

PHYSICS_FEATURES: dict[str, ContextFeature] = {
    "gravity": scaled_feature("gravity", 9.81),
    "mass_scale": scaled_feature("mass_scale", 1.0),
    "friction_scale": scaled_feature("friction_scale", 1.0, train=(0.4, 1.6)),
    "damping_scale": scaled_feature("damping_scale", 1.0),
    "actuator_scale": scaled_feature("actuator_scale", 1.0, train=(0.6, 1.4), bounds=(0.3, 2.0)),
}

TASK_FEATURES: dict[str, ContextFeature] = {
    "target_velocity": ContextFeature(
        "target_velocity", 1.5, train=(0.0, 3.0), holdout=(1.25, 1.75), bounds=(-1.0, 4.0)
    ),
    "direction": ContextFeature(
        "direction",
        0.0,
        train=(-math.pi / 2, math.pi / 2),
        holdout=(-0.3, 0.3),
        bounds=(-math.pi, math.pi),
    ),
}


class ContextualLocomotion(ContextualEnv):
    """A gymnasium MuJoCo v5 locomotion env whose physics and/or task follow a context.

    :param env_id: ``"HalfCheetah-v5"``, ``"Hopper-v5"``, ``"Walker2d-v5"``, ``"Ant-v5"``,
        ``"Humanoid-v5"`` (or another v5 env with the same model and info keys).
    :param features: names from :data:`PHYSICS_FEATURES` and :data:`TASK_FEATURES`.
    :param split: which split the per-episode sampler draws from.
    :param hidden_context: leave the context out of the observation.
    :param contexts: a fixed list of contexts to draw from instead of sampling ``split``.
    :param kwargs: passed to ``gym.make`` (``render_mode``, ``xml_file``...).
    """

    def __init__(
        self,
        env_id: str,
        features: Sequence[str] = tuple(PHYSICS_FEATURES),
        split: str = "train",
        hidden_context: bool = False,
        contexts: Sequence[Mapping[str, float]] | None = None,
        **kwargs: Any,
    ) -> None:
        space = ContextSpace.choose(PHYSICS_FEATURES | TASK_FEATURES, features, "locomotion")
        chosen = {"camera_name", "camera_id", "xml_file"} & set(kwargs)
        if kwargs.get("render_mode") in ("rgb_array", "depth_array") and not chosen:
            # the stock models' tracking camera: the free default one stays put while a runner
            # leaves the frame within a second
            kwargs["camera_name"] = "track"
        env = gym.make(env_id, **kwargs)
        if "direction" in features and "y_velocity" not in _info_keys(env):
            raise ValueError(f"'direction' needs an env that reports y_velocity, not {env_id}")
        super().__init__(env, space, split, hidden_context, contexts)
        #: applies the physics features to the model
        self.physics = PhysicsTable(env.unwrapped.model, LOCOMOTION_FIELDS, PHYSICS_FEATURES)
        self._forward_weight = float(getattr(env.unwrapped, "_forward_reward_weight", 1.0))

    def apply_context(self, context: Mapping[str, float]) -> None:
        model, data = self.env.unwrapped.model, self.env.unwrapped.data
        self.physics.apply(model, context)
        # mj_setConst works in ``data`` from qpos0: keep the state, for a change mid-episode
        saved, time = [getattr(data, k).copy() for k in _STATE_FIELDS], data.time
        mujoco.mj_setConst(model, data)
        for k, value in zip(_STATE_FIELDS, saved, strict=True):
            getattr(data, k)[...] = value
        data.time = time
        mujoco.mj_forward(model, data)

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        task = self._task_reward(info)
        if task is not None:
            reward = float(reward - info["reward_forward"] + task)
            info["reward_forward"] = task
        return obs, reward, terminated, truncated, info

    def _task_reward(self, info: Mapping[str, Any]) -> float | None:
        context = info["context"]  # the step's own (a change mid-episode comes after it)
        if "target_velocity" in context:
            return -self._forward_weight * abs(info["x_velocity"] - context["target_velocity"])
        if "direction" in context:
            a = context["direction"]
            v = info["x_velocity"] * math.cos(a) + info["y_velocity"] * math.sin(a)
            return self._forward_weight * v
        return None


def _info_keys(env: gym.Env) -> set[str]:
    env.reset(seed=0)
    info = env.step(np.zeros(env.action_space.shape, env.action_space.dtype))[-1]
    return set(info)
