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


def test_train_ranges_move_the_train_split_only():
    task = SPACE.with_train_ranges({"gravity": [20.0, 25.0]})
    rng = np.random.default_rng(0)
    train = [task.sample(rng, "train") for _ in range(1000)]
    g = np.array([c["gravity"] for c in train])
    assert g.min() >= 20.0 and g.max() <= 25.0 and g.max() - g.min() > 4.5
    mass = np.array([c["mass"] for c in train])  # the other feature keeps its train values
    assert mass.min() >= 0.5 and mass.max() <= 1.5 and not np.any((mass > 0.9) & (mass < 1.1))
    for split in ("interpolation", "extrapolation"):
        held_out = [task.sample(rng, split) for _ in range(500)]
        assert {SPACE.split_of(c) for c in held_out} == {split}
    # the observation reads a context as the pretrained space did
    assert np.array_equal(task.to_array({"gravity": 22.0, "mass": 1.0}),
                          SPACE.to_array({"gravity": 22.0, "mass": 1.0}))  # fmt: skip


@pytest.mark.parametrize(
    ("ranges", "match"),
    [
        ({"gravty": [1.0, 2.0]}, r"unknown context features \['gravty'\].*'gravity', 'mass'"),
        ({"gravity": [20.0, 30.0]}, r"low < high <= 25.0 \(its bounds\), got \[20.0, 30.0\]"),
        ({"gravity": [9.0, 8.0]}, "low < high"),
        ({"gravity": 9.0}, r"must be \[low, high\]"),
        ([("gravity", [1.0, 2.0])], r"takes \{feature: \[low, high\]\}"),
    ],
)
def test_bad_train_ranges_name_the_problem(ranges, match):
    with pytest.raises(ValueError, match=match):
        SPACE.with_train_ranges(ranges)
