"""The benchmark machinery (grid, resume, aggregation), not learning outcomes."""

import json

import numpy as np
import pytest

from agents.benchmark import (
    SUITES,
    VARIANTS,
    Cell,
    aggregate,
    collect,
    expand_grid,
    markdown,
    run_cell,
    run_grid,
)


def test_grid_expansion():
    cells = expand_grid("quick", seeds=5)
    assert len(cells) == len(SUITES["quick"]) * len(VARIANTS) * 5
    assert len({c.name for c in cells}) == len(cells)
    chunked = [c for c in cells if c.variant == "chunked_hyper"][0]
    assert chunked.hyperparams == ("policy_kwargs:{generator: chunked}",)
    assert {c.timesteps for c in expand_grid("quick", 1, ["hyper"], timesteps=100)} == {100}
    only = expand_grid("quick", 2, envs=["hyperrl/ContextualCartPole-v0"])
    assert {c.env for c in only} == {"hyperrl/ContextualCartPole-v0"} and len(only) == 12
    with pytest.raises(ValueError, match="unknown suite"):
        expand_grid("medium", 1)
    with pytest.raises(ValueError, match=r"unknown variants \['hypernet'\]"):
        expand_grid("quick", 1, ["hypernet"])


def test_run_grid_skips_finished_cells(tmp_path):
    cells = expand_grid("quick", seeds=2, variants=["hyper", "concat"])
    done = cells[:3]
    for cell in done:
        (tmp_path / cell.name).mkdir(parents=True)
        (tmp_path / cell.name / "eval.json").write_text("{}")
    ran = []

    def fake(cell, root):
        ran.append(cell)
        return root / cell.name

    run_grid(cells, tmp_path, runner=fake)
    assert ran == cells[3:]


def _record(env, variant, seed, train, extrap):
    return {
        "env": env,
        "variant": variant,
        "seed": seed,
        "params": 10,
        "train_seconds": 1.0,
        "returns": {"train": train, "extrapolation": extrap},
    }


def test_aggregation_on_synthetic_results_with_known_answers():
    records = []
    for seed in range(4):
        # env a spans [0, 100], env b spans [-10, 10]: normalised, "best" scores 1, "worst" 0
        records += [
            _record("a", "best", seed, 100.0, 100.0),
            _record("a", "worst", seed, 0.0, 0.0),
            _record("b", "best", seed, 10.0, 10.0),
            _record("b", "worst", seed, -10.0, -10.0),
        ]
        # "mid" scores 0.5 on both envs in training, 0.25 in extrapolation
        records += [_record("a", "mid", seed, 50.0, 25.0), _record("b", "mid", seed, 0.0, -5.0)]
    summary = aggregate(records, reps=200)
    train, extrap = summary["splits"]["train"], summary["splits"]["extrapolation"]
    assert train["best"]["iqm"] == pytest.approx(1.0) and train["worst"]["iqm"] == pytest.approx(0)
    assert train["mid"]["iqm"] == pytest.approx(0.5) and extrap["mid"]["iqm"] == pytest.approx(0.25)
    assert train["mid"]["ci"] == pytest.approx([0.5, 0.5])  # no spread, no interval
    assert "| mid | 0.50 [0.50, 0.50] | 0.25 [0.25, 0.25] | 10 | 1 |" in markdown(summary)


def test_iqm_ignores_the_outer_quartiles():
    seeds = [0.0, 0.4, 0.5, 0.6, 1.0, 0.45, 0.55, 0.5]
    records = [_record("a", "v", i, s, s) for i, s in enumerate(seeds)]
    records += [_record("a", "ref", 0, 0.0, 0.0), _record("a", "ref", 1, 1.0, 1.0)]
    iqm = aggregate(records, reps=100)["splits"]["train"]["v"]["iqm"]
    assert iqm == pytest.approx(np.mean(sorted(seeds)[2:6]))


def test_one_real_cell_end_to_end(tmp_path):
    cell = Cell(
        "hyperrl/ContextualCartPole-v0",
        "ppo",
        "hyper",
        0,
        256,
        ("n_steps:32", "batch_size:64", "n_epochs:1"),
    )
    run_dir = run_cell(cell, tmp_path, eval_episodes=1)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["params"] > 10_000 and meta["train_seconds"] > 0
    assert run_cell(cell, tmp_path) == run_dir  # finished: not run again
    records = collect(tmp_path)
    assert len(records) == 1 and set(records[0]["returns"]) == {
        "train",
        "interpolation",
        "extrapolation",
    }
