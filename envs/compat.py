"""Fixes for third-party env packages on the MuJoCo this project uses (4.0). One place, tested.

gymnasium-robotics 1.4.2: its joint helpers test ``model.jnt_type[j] in (mjJNT_HINGE,
mjJNT_SLIDE)``. Since mujoco 3.12 ``jnt_type`` holds numpy ints, and ``enum == np.int32`` is
False (the reverse comparison is True), so every Fetch env fails at construction with an
AssertionError. :func:`patch_gymnasium_robotics` replaces the four helpers with ones that compare
plain ints.
"""

from __future__ import annotations

import mujoco
import numpy as np

# qpos / qvel widths of each joint type
_QPOS_WIDTH = {
    int(mujoco.mjtJoint.mjJNT_FREE): 7,
    int(mujoco.mjtJoint.mjJNT_BALL): 4,
    int(mujoco.mjtJoint.mjJNT_SLIDE): 1,
    int(mujoco.mjtJoint.mjJNT_HINGE): 1,
}
_QVEL_WIDTH = {
    int(mujoco.mjtJoint.mjJNT_FREE): 6,
    int(mujoco.mjtJoint.mjJNT_BALL): 3,
    int(mujoco.mjtJoint.mjJNT_SLIDE): 1,
    int(mujoco.mjtJoint.mjJNT_HINGE): 1,
}


def joint_slice(model: mujoco.MjModel, name: str, velocity: bool) -> slice:
    """Where joint ``name`` lives in ``data.qvel`` (``velocity``) or ``data.qpos``."""
    joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
    if joint_id == -1:
        raise ValueError(f"joint {name!r} is not part of the model")
    joint_type = int(model.jnt_type[joint_id])
    if velocity:
        start, width = int(model.jnt_dofadr[joint_id]), _QVEL_WIDTH[joint_type]
    else:
        start, width = int(model.jnt_qposadr[joint_id]), _QPOS_WIDTH[joint_type]
    return slice(start, start + width)


def _set(field: str, velocity: bool):
    def setter(model, data, name, value):
        where = joint_slice(model, name, velocity)
        value = np.asarray(value)
        if value.size != where.stop - where.start:
            raise ValueError(f"joint {name!r} takes {where.stop - where.start} values, got {value}")
        getattr(data, field)[where] = value

    return setter


def _get(field: str, velocity: bool):
    def getter(model, data, name):
        return getattr(data, field)[joint_slice(model, name, velocity)].copy()

    return getter


def patch_gymnasium_robotics() -> bool:
    """Install the fixed joint helpers into ``gymnasium_robotics.utils.mujoco_utils`` (which the
    envs call through ``self._utils``). Idempotent; ``False`` when the package is missing."""
    try:
        from gymnasium_robotics.utils import mujoco_utils
    except ImportError:
        return False
    mujoco_utils.set_joint_qpos = _set("qpos", velocity=False)
    mujoco_utils.set_joint_qvel = _set("qvel", velocity=True)
    mujoco_utils.get_joint_qpos = _get("qpos", velocity=False)
    mujoco_utils.get_joint_qvel = _get("qvel", velocity=True)
    return True
