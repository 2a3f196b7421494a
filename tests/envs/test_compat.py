import mujoco
import numpy as np
import pytest

from envs.compat import joint_slice, patch_gymnasium_robotics

XML = """<mujoco><worldbody>
  <body><freejoint name="free"/><geom size=".1"/></body>
  <body pos="1 0 0"><joint name="ball" type="ball"/><geom size=".1"/>
    <body pos="0 0 -.3"><joint name="hinge" type="hinge"/><geom size=".1"/></body></body>
  <body pos="2 0 0"><joint name="slide" type="slide"/><geom size=".1"/></body>
</worldbody></mujoco>"""


def test_the_bug_it_works_around_is_real_on_this_mujoco():
    model = mujoco.MjModel.from_xml_string(XML)
    hinge = model.jnt_type[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "hinge")]
    # what gymnasium-robotics 1.4.2 asserts; fails since mujoco 3.12
    assert hinge not in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)


def test_joint_slices_and_patched_helpers():
    model = mujoco.MjModel.from_xml_string(XML)
    data = mujoco.MjData(model)
    widths = {
        name: joint_slice(model, name, velocity=False)
        for name in ("free", "ball", "hinge", "slide")
    }
    assert [w.stop - w.start for w in widths.values()] == [7, 4, 1, 1]
    assert (
        joint_slice(model, "ball", velocity=True).stop - joint_slice(model, "ball", True).start == 3
    )
    with pytest.raises(ValueError, match="'elbow' is not part of the model"):
        joint_slice(model, "elbow", velocity=False)
    assert patch_gymnasium_robotics()
    from gymnasium_robotics.utils import mujoco_utils

    mujoco_utils.set_joint_qpos(model, data, "hinge", 0.5)
    mujoco_utils.set_joint_qvel(model, data, "free", np.arange(6.0))
    assert mujoco_utils.get_joint_qpos(model, data, "hinge")[0] == 0.5
    np.testing.assert_array_equal(mujoco_utils.get_joint_qvel(model, data, "free"), np.arange(6.0))
    with pytest.raises(ValueError, match="takes 7 values"):
        mujoco_utils.set_joint_qpos(model, data, "free", [0.0, 1.0])
