"""The physics-context layer: one table applies contexts alike to a host MjModel and to
per-world field tensors (MuJoCo Warp), scaling nominal values so the nominal context restores
the model."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs.locomotion import PHYSICS_FEATURES
from envs.physics import LOCOMOTION_FIELDS, PhysicsTable, Scaled, model_field


@pytest.fixture(scope="module")
def model():
    env = gym.make("HalfCheetah-v5")
    yield env.unwrapped.model
    env.close()


CONTEXT = {"gravity": 4.0, "mass_scale": 1.7, "friction_scale": 0.5, "actuator_scale": 1.3}


def test_a_context_scales_each_field_from_its_nominal_and_the_nominal_context_restores_it(model):
    table = PhysicsTable(model, LOCOMOTION_FIELDS, PHYSICS_FEATURES)
    nominal = {k: v.copy() for k, v in table.nominal.items()}
    table.apply(model, CONTEXT)
    table.apply(model, CONTEXT)  # applied twice: not compounded
    np.testing.assert_allclose(model.opt.gravity, nominal["gravity"] * 4.0 / 9.81)
    np.testing.assert_allclose(model.body_inertia, nominal["body_inertia"] * 1.7)
    np.testing.assert_allclose(model.geom_friction[:, 0], nominal["geom_friction"][:, 0] * 0.5)
    np.testing.assert_array_equal(model.geom_friction[:, 1:], nominal["geom_friction"][:, 1:])
    np.testing.assert_array_equal(model.dof_damping, nominal["dof_damping"])  # not in CONTEXT
    table.apply(model, {})
    for name, value in nominal.items():
        np.testing.assert_array_equal(model_field(model, name), value)


def test_the_batched_fields_match_the_model_applied_world_by_world(model):
    table = PhysicsTable(model, LOCOMOTION_FIELDS, PHYSICS_FEATURES)
    worlds = [CONTEXT, {"gravity": 12.0, "mass_scale": 0.6, "friction_scale": 1.4}]
    values = {
        f: torch.tensor(
            [w.get(f, PHYSICS_FEATURES[f].nominal) for w in worlds], dtype=torch.float64
        )
        for f in ("gravity", "mass_scale", "friction_scale")
    }
    nominal = {k: torch.tensor(v) for k, v in table.nominal.items()}
    batched = table.batched(nominal, values)
    assert set(batched) == {"gravity", "body_mass", "body_inertia", "geom_friction"}
    for i, world in enumerate(worlds):
        table.apply(model, {k: v for k, v in world.items() if k in values})
        for name, tensor in batched.items():
            np.testing.assert_allclose(tensor[i].numpy(), model_field(model, name), rtol=1e-12)
    table.apply(model, {})


def test_row_sets_limit_a_feature_to_their_entities(model):
    features = {"mass_scale": PHYSICS_FEATURES["mass_scale"]}
    table = PhysicsTable(
        model, {"mass_scale": (Scaled("body_mass", rows="torso"),)}, features, {"torso": [1]}
    )
    before = model.body_mass.copy()
    table.apply(model, {"mass_scale": 2.0})
    assert model.body_mass[1] == pytest.approx(2 * before[1])
    np.testing.assert_array_equal(np.delete(model.body_mass, 1), np.delete(before, 1))
    out = table.batched({"body_mass": torch.tensor(before)}, {"mass_scale": torch.tensor([3.0])})
    assert out["body_mass"][0, 1] == pytest.approx(3 * before[1])
    table.apply(model, {})
    with pytest.raises(ValueError, match=r"row sets \['torso'\]"):
        PhysicsTable(model, {"mass_scale": (Scaled("body_mass", rows="torso"),)}, features)
