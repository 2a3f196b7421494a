import numpy as np
import pytest

from envs.context import SPLITS, ContextFeature, ContextSpace, scaled_feature

SPACE = ContextSpace([scaled_feature("gravity", 10.0), scaled_feature("mass", 1.0)])


def test_feature_ordering_is_checked():
    with pytest.raises(ValueError, match="'g' needs bounds.low <= train.low"):
        ContextFeature("g", 1.0, train=(0.5, 1.5), holdout=(1.2, 1.1), bounds=(0.0, 2.0))
    with pytest.raises(ValueError, match="distinct names"):
        ContextSpace([scaled_feature("g", 1.0), scaled_feature("g", 2.0)])


@pytest.mark.parametrize("split", SPLITS)
def test_samplers_draw_only_from_their_split(split):
    rng = np.random.default_rng(0)
    draws = [SPACE.sample(rng, split) for _ in range(2000)]
    assert {SPACE.split_of(c) for c in draws} == {split}
    for name in SPACE.names:
        values = np.array([c[name] for c in draws])
        lo, hi = SPACE.by_name[name].bounds
        assert values.min() >= lo and values.max() <= hi


def test_train_sampler_covers_the_train_range_around_the_hole():
    rng = np.random.default_rng(0)
    g = np.array([SPACE.sample(rng)["gravity"] for _ in range(4000)])
    assert g.min() < 5.2 and g.max() > 14.8
    assert not np.any((g >= 9.0) & (g <= 11.0))
    assert np.mean(g < 9.0) == pytest.approx(0.5, abs=0.05)  # both sides, by length


def test_validate_fills_defaults_and_names_problems():
    assert SPACE.validate({"mass": 2.0}) == {"gravity": 10.0, "mass": 2.0}
    assert SPACE.validate({"mass": np.float32(2.0)})["mass"] == 2.0
    with pytest.raises(ValueError, match=r"unknown context features \['gravty'\]"):
        SPACE.validate({"gravty": 9.0})
    with pytest.raises(
        ValueError, match=r"'gravity'=30.0 is outside its allowed range \[2.5, 25.0\]"
    ):
        SPACE.validate({"gravity": 30.0})
    with pytest.raises(ValueError, match="'mass' must be a scalar"):
        SPACE.validate({"mass": [1.0, 2.0]})
    with pytest.raises(ValueError, match="mapping of feature names"):
        SPACE.validate([9.81, 1.0])


def test_split_of_and_observation_scaling():
    assert SPACE.split_of({"gravity": 6.0, "mass": 1.4}) == "train"
    assert SPACE.split_of({"gravity": 10.0, "mass": 1.4}) == "interpolation"
    assert SPACE.split_of({"gravity": 10.0, "mass": 2.0}) == "extrapolation"
    np.testing.assert_allclose(SPACE.to_array({"gravity": 5.0, "mass": 1.5}), [-1.0, 1.0])
    low, high = SPACE.observation_bounds()
    assert np.all(low < -1) and np.all(high > 1)


def test_grid():
    grid = SPACE.grid(points=4)
    assert len(grid) == 16 and grid[0] == {"gravity": 2.5, "mass": 0.25}
    assert all(c["mass"] == 1.0 for c in SPACE.grid(points=3, names=["gravity"]))
