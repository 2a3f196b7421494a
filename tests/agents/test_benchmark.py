"""The benchmark machinery (grid, resume, aggregation), not learning outcomes."""

import dataclasses
import functools
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from stable_baselines3 import PPO

import envs
from agents.benchmark import (
    SUITE_VARIANTS,
    SUITES,
    VARIANTS,
    Cell,
    GridError,
    aggregate,
    collect,
    expand_grid,
    markdown,
    run_cell,
    run_grid,
)

_spec = importlib.util.spec_from_file_location(
    "benchmark_script", Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"
)
benchmark_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark_script)

TINY_PPO = ("n_steps:32", "batch_size:64", "n_epochs:1")


def test_grid_expansion():
    cells = expand_grid("quick", seeds=5)
    assert len(cells) == len(SUITES["quick"]) * len(SUITE_VARIANTS["quick"]) * 5
    assert len({c.name for c in cells}) == len(cells)
    chunked = [c for c in cells if c.variant == "chunked_hyper"][0]
    assert chunked.hyperparams == ("policy_kwargs:{generator: chunked}",)
    cheetah = [c for c in cells if "HalfCheetah" in c.env and c.variant == "chunked_hyper"][0]
    assert cheetah.hyperparams[-1] == "policy_kwargs:{generator: chunked}"
    assert "n_envs:4" in cheetah.hyperparams  # the suite's overrides come first
    assert {c.timesteps for c in expand_grid("quick", 1, ["hyper"], timesteps=100)} == {100}
    only = expand_grid("quick", 2, envs=["hyperrl/ContextualCartPole-v0"])
    assert {c.env for c in only} == {"hyperrl/ContextualCartPole-v0"} and len(only) == 12
    with pytest.raises(ValueError, match="unknown suite"):
        expand_grid("medium", 1)
    with pytest.raises(ValueError, match=r"unknown variants \['hypernet'\]"):
        expand_grid("quick", 1, ["hypernet"])


def test_suite_v2_runs_seed_by_seed_with_the_users_first_try_and_the_old_embedding():
    cells = expand_grid("v2", seeds=2)
    per_seed = len(SUITES["v2"]) * len(SUITE_VARIANTS["v2"])
    assert len(cells) == 2 * per_seed
    assert {c.seed for c in cells[:per_seed]} == {0}  # a grid stopped part way stays comparable
    by_variant = {c.variant: c for c in cells if c.env == "hyperrl/BatchedHalfCheetah-v0"}
    assert set(by_variant) == set(SUITE_VARIANTS["v2"]) <= set(VARIANTS)
    assert VARIANTS["sb3_multiinput"][0] == "mlp"
    assert by_variant["hyper_direction_only"].hyperparams == (
        "policy_kwargs:{linear_context: false}",
    )
    locomotion = [e for e in SUITES["v2"] if e.env.startswith("hyperrl/Batched")]
    assert len(locomotion) >= 3 and all(e.timesteps >= 5_000_000 for e in locomotion)


@pytest.mark.parametrize("variant", ["sb3_multiinput", "hyper_direction_only"])
def test_a_batched_cell_trains_on_the_device_trainer_and_evaluates_on_the_cpu_twin(
    tmp_path, variant
):
    cell = Cell(
        "hyperrl/TorchPendulum-v0",
        "ppo",
        variant,
        0,
        1024,
        ("n_envs:16", "n_steps:32", *VARIANTS[variant][1]),
    )
    run_dir = run_cell(cell, tmp_path, eval_episodes=1, grid=3, grid_episodes=1)
    for feature in ("gravity", "mass", "length"):  # each swept alone over its bounds
        sweep = json.loads((run_dir / "grid" / feature / "eval.json").read_text())["episodes"]
        values = sorted({e["context"][feature] for e in sweep})
        bounds = envs.context_space(cell.env).by_name[feature].bounds
        assert len(sweep) == 3 and values == pytest.approx(np.linspace(*bounds, 3))
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    assert config["trainer"] == "device" and config["policy"] == VARIANTS[variant][0]
    summary = json.loads((run_dir / "eval.json").read_text())["summary"]
    assert set(summary) == {"train", "interpolation", "extrapolation"}
    assert json.loads((run_dir / "meta.json").read_text())["params"] > 0


def test_run_grid_skips_finished_cells_and_those_in_the_archive(tmp_path):
    cells = expand_grid("quick", seeds=2, variants=["hyper", "concat"])
    root, archive = tmp_path / "runs", tmp_path / "archive"
    for cell in cells[:3]:
        (root / cell.name).mkdir(parents=True)
        (root / cell.name / "eval.json").write_text("{}")
    for cell in cells[3:5]:  # finished on another machine
        (archive / cell.name).mkdir(parents=True)
        (archive / cell.name / "meta.json").write_text("{}")
    (archive / cells[5].name).mkdir(parents=True)  # an archive copy cut short: no meta.json
    (archive / cells[5].name / "eval.json").write_text("{}")
    ran = []

    def fake(cell, root):
        ran.append(cell)
        return root / cell.name

    run_grid(cells, root, runner=fake, archive=archive)
    assert ran == cells[5:]
    ran.clear()
    run_grid(cells, root, runner=fake)
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


def test_aggregate_takes_the_first_seeds_of_every_env_and_leaves_partial_envs_out():
    from agents.benchmark import AGGREGATE_CORE, aggregate_envs

    records = [_record("a", v, seed, 1.0, 1.0) for v in AGGREGATE_CORE for seed in range(3)]
    records += [_record("b", "hyper", 0, 1.0, 1.0), _record("b", "concat", 0, 1.0, 1.0)]
    envs, left_out = aggregate_envs(records)
    assert envs == ["a"]
    assert left_out == {"b": "mlp_no_context 0, sb3_multiinput 0, concat 1, film 0, hyper 1 seeds"}
    assert aggregate_envs(records, min_seeds=1)[0] == ["a"]  # b lacks three core variants
    # a smoke run's single seed, a suite without sb3_multiinput: the default takes what there is
    quick = [r for r in records if r["seed"] == 0 and r["variant"] != "sb3_multiinput"]
    quick += [_record("b", v, 0, 1.0, 1.0) for v in ("mlp_no_context", "film")]
    assert aggregate_envs(quick) == (["a", "b"], {})
    assert aggregate_envs(quick, min_seeds=2) == (
        [],
        {e: "mlp_no_context 1, concat 1, film 1, hyper 1 seeds" for e in ("a", "b")},
    )
    # "v" has one seed on env b and four on env a, the last its worst: the aggregate takes seed
    # 0 of both (taking env a's lowest would make it 0.25)
    records = [_record(e, "ref", s, float(s), float(s)) for e in ("a", "b") for s in (0, 1)]
    records += [_record("a", "v", seed, 0.5, 0.5) for seed in range(3)]
    records += [_record("a", "v", 3, 0.0, 0.0), _record("b", "v", 0, 0.5, 0.5)]
    assert aggregate(records, reps=100)["splits"]["train"]["v"]["iqm"] == pytest.approx(0.5)


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
        TINY_PPO,
    )
    # a run killed before its first save leaves only config.yml: started over, not resumed
    (tmp_path / cell.name).mkdir(parents=True)
    (tmp_path / cell.name / "config.yml").write_text("algo: ppo\n")
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


def test_a_cell_killed_after_a_checkpoint_resumes_from_it(tmp_path):
    from agents.train import TrainArgs, train

    cell = Cell("hyperrl/ContextualCartPole-v0", "ppo", "hyper", 0, 256, TINY_PPO)
    run_dir = tmp_path / cell.name
    common = dict(seed=0, progress_bar=False, eval_freq=0)
    train(TrainArgs(env=cell.env, hyperparams=list(TINY_PPO), run_dir=str(run_dir),
                    timesteps=128, save_freq=64, **common))  # fmt: skip
    (run_dir / "model.zip").unlink()  # killed before its final save
    checkpoint = run_dir / "checkpoints" / "step_128"
    assert checkpoint.is_dir()
    run_cell(cell, tmp_path, eval_episodes=1, grid=0)
    assert checkpoint.is_dir()  # resumed from, not started over
    assert PPO.load(run_dir / "model.zip", device="cpu").num_timesteps >= 256


@pytest.fixture
def ray_module():
    """``ray``, shut down afterwards whatever the test left connected."""
    ray = pytest.importorskip("ray")
    yield ray
    ray.shutdown()


def test_grid_on_a_local_ray_instance(ray_module, tmp_path):
    """Real cells in Ray workers: they import the project, write the run folders; a failing cell
    is named once the others have finished; a second call finds nothing to do."""
    cells = [
        dataclasses.replace(c, hyperparams=c.hyperparams + TINY_PPO)
        for c in expand_grid(
            "quick",
            seeds=2,
            variants=["hyper"],
            timesteps=256,
            envs=["hyperrl/ContextualCartPole-v0"],
        )
    ]
    broken = dataclasses.replace(cells[0], algo="no_such_algo", seed=7)
    runner = functools.partial(run_cell, eval_episodes=1)
    with pytest.raises(GridError, match=r"1 of 3 .*/seed7: ValueError: unknown algorithm") as err:
        run_grid([*cells, broken], tmp_path, runner=runner, ray_address="local")
    assert list(err.value.failures) == [broken.name]
    assert not ray_module.is_initialized()  # the connection run_grid made is closed
    for cell in cells:
        meta = json.loads((tmp_path / cell.name / "meta.json").read_text())
        assert meta["cell"]["seed"] == cell.seed and meta["params"] > 10_000
        assert (tmp_path / cell.name / "eval.json").is_file()
    assert len(collect(tmp_path)) == 2

    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert run_grid(cells, tmp_path, runner=runner, ray_address="local") == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == files


def test_ray_connection_of_the_caller_is_used_and_kept(ray_module, tmp_path):
    ray_module.init(num_cpus=1, include_dashboard=False)
    broken = Cell("hyperrl/ContextualCartPole-v0", "no_such_algo", "hyper", 0, 256)
    with pytest.raises(GridError, match="seed0: ValueError"):
        run_grid([broken], tmp_path, ray_address="ray://nowhere:1")  # not connected to
    assert ray_module.is_initialized()


def test_ray_missing_or_misconfigured(monkeypatch, tmp_path):
    cells = expand_grid("quick", seeds=1, variants=["hyper"])
    with pytest.raises(ValueError, match="ray_cpus_per_run must be positive"):
        run_grid(cells, tmp_path, ray_address="local", ray_cpus_per_run=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # makes ``import ray`` fail
    with pytest.raises(ImportError, match="'bench' extra"):
        run_grid(cells, tmp_path, ray_address="local")


def test_cli_passes_ray_options(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(benchmark_script, "run_grid", lambda *a, **kw: calls.append(kw))
    argv = ["--seeds", "1", "--variants", "hyper", "--root", str(tmp_path)]
    assert benchmark_script.main([*argv, "--ray-address", "auto", "--ray-cpus-per-run", "2"]) == 2
    expected = {"jobs": 1, "ray_address": "auto", "ray_cpus_per_run": 2.0, "archive": None}
    assert calls[-1] == expected
    assert benchmark_script.main(argv) == 2  # nothing ran, nothing to report
    assert calls[-1] == expected | {"ray_address": None, "ray_cpus_per_run": 1}
    for bad, message in [
        (["--ray-cpus-per-run", "2"], "--ray-cpus-per-run needs --ray-address"),
        (["--ray-address", "auto", "--jobs", "2"], "--jobs is for local processes"),
    ]:
        with pytest.raises(SystemExit):
            benchmark_script.main([*argv, *bad])
        assert message in capsys.readouterr().err


def _synthetic_cells(root: Path) -> None:
    """Four finished Pendulum cells (hyper and concat, seeds 0-1) under ``root/x``, with an
    evaluation, a gravity sweep and a TensorBoard training curve each."""
    from torch.utils.tensorboard import SummaryWriter

    env = "hyperrl/ContextualPendulum-v0"
    for variant, returns in (("hyper", [-200.0, -300.0]), ("concat", [-400.0, -600.0])):
        for seed, ret in enumerate(returns):
            run = root / f"x/{variant}/seed{seed}"
            (run / "tb" / "run_1").mkdir(parents=True)
            cell = {"env": env, "variant": variant, "seed": seed, "timesteps": 100}
            (run / "meta.json").write_text(
                json.dumps({"cell": cell, "train_seconds": 1.0, "params": 7})
            )
            episodes = [
                {
                    "split": "train",
                    "context": {"gravity": g, "mass": 1.0, "length": 1.0},
                    "return": ret,
                    "length": 200,
                }
                for g in (6.0, 12.0)
            ]
            summary = {"train": {"mean_return": ret, "std_return": 0.0, "episodes": 2}}
            (run / "eval.json").write_text(json.dumps({"summary": summary, "episodes": episodes}))
            sweep = [  # a gravity sweep: the return falls off away from nominal
                {"context": {"gravity": g, "mass": 1.0, "length": 1.0}, "return": ret - abs(g - 10)}
                for g in (2.5, 10.0, 25.0)
            ]
            (run / "grid" / "gravity").mkdir(parents=True)
            (run / "grid" / "gravity" / "eval.json").write_text(json.dumps({"episodes": sweep}))
            with SummaryWriter(str(run / "tb" / "run_1")) as writer:
                for step in (10, 50, 100):
                    writer.add_scalar("rollout/ep_rew_mean", ret * 100 / step, step)


def test_report_tables_and_figures_from_finished_cells(tmp_path):
    from agents.benchmark_report import (
        _curve,
        best_in_distribution_markdown,
        per_env_markdown,
        plot_feature_sweeps,
        plot_iqm,
        plot_learning_curves,
        plot_return_vs_context,
        ratios_markdown,
    )

    _synthetic_cells(tmp_path)
    records = collect(tmp_path)
    table = per_env_markdown(records)
    # mean and standard error (std with ddof=1 over sqrt(n)) over the two seeds
    assert "| hyper | -250.0 ± 50.0 (2) |" in table
    assert "| concat | -500.0 ± 100.0 (2) |" in table
    summary = aggregate(records, reps=100)
    ratios = ratios_markdown(summary)
    hyper, concat = (summary["splits"]["train"][v]["iqm"] for v in ("hyper", "concat"))
    assert f"| concat | {hyper / concat:.2f} |" in ratios and "| film | – |" in ratios
    # hyper is the best variant on train contexts here: 1.00 of the best
    assert "| train | hyper | 1.00 |" in best_in_distribution_markdown(summary)
    plot_iqm(summary, tmp_path / "iqm.png")
    figures = plot_return_vs_context(tmp_path, tmp_path)
    curves = plot_learning_curves(tmp_path, tmp_path)
    for path in (tmp_path / "iqm.png", *figures, curves):
        assert path.is_file() and path.stat().st_size > 5_000
    assert [f.name for f in figures] == ["return_vs_context_ContextualPendulum-v0.png"]
    sweeps = plot_feature_sweeps(tmp_path, tmp_path)
    assert [f.name for f in sweeps] == ["sweeps_ContextualPendulum-v0.png"]
    assert sweeps[0].stat().st_size > 5_000
    steps, values = _curve(tmp_path / "x/hyper/seed1")
    assert steps.tolist() == [10, 50, 100] and values.tolist() == [-3000.0, -600.0, -300.0]


def test_equal_size_pairs_with_bootstrap_intervals_and_parameter_columns():
    from agents.benchmark_report import paired_markdown, per_env_markdown

    records = []
    for seed in range(3):
        # env a: hyper_embed8 10 ahead of concat_256 on every seed; lowrank_256 as far either side
        records += [
            _record("a", "hyper_embed8", seed, 110.0, 55.0),
            _record("a", "concat_256", seed, 100.0, 50.0),
            _record("a", "lowrank_256", seed, 100.0 + 30.0 * (seed - 1), 50.0),
            _record("b", "hyper_embed8", seed, -90.0, -40.0),
            _record("b", "concat_256", seed, -100.0, -50.0),
        ]
    records.append(_record("a", "hyper", 0, 500.0, 500.0))  # one seed, no concat_large: no row
    table = paired_markdown(records, reps=500)
    lines = table.splitlines()
    row = next(
        line for line in lines if line.startswith("| hyper_embed8 − concat_256") and "×" in line
    )
    assert (
        row
        == "| hyper_embed8 − concat_256 | +10 [+10, +10] (1.10×) | +5 [+5, +5] (1.10×) | 10 / 10 |"
    )
    lowrank = next(line for line in lines if line.startswith("| lowrank_256"))
    low, high = (float(x) for x in lowrank.split("[")[1].split("]")[0].split(","))
    assert low < 0 < high  # a spread that does not resolve the difference
    # env b's plain mean is negative: a difference, no ratio
    assert "| hyper_embed8 − concat_256 | +10 [+10, +10] | +10 [+10, +10] | 10 / 10 |" in table
    assert "hyper − concat_large" not in table
    assert paired_markdown([r for r in records if r["variant"] != "concat_256"]) == ""
    candidates = paired_markdown(records, {"lowrank_256": "hyper_embed8"}, heading="cand")
    assert "**a**: cand, mean return" in candidates
    assert "| lowrank_256 − hyper_embed8 |" in candidates
    assert "| train | extrapolation | params | train min |" in per_env_markdown(records)
    assert "| concat_256 | 100.0 ± 0.0 (3) | 50.0 ± 0.0 (3) | 10 | 0.0 |" in per_env_markdown(
        records
    )


def test_the_archive_keeps_what_the_report_reads_and_the_report_runs_on_it_alone(tmp_path):
    from agents.benchmark_archive import archive_cell, archive_cells
    from agents.benchmark_report import _curve, plot_feature_sweeps

    root, archive = tmp_path / "runs" / "quick", tmp_path / "archive" / "quick"
    _synthetic_cells(root)
    (root / "x/film/seed0/tb").mkdir(parents=True)  # still training: no meta.json
    eval_json = root / "x/hyper/seed0/eval.json"
    found = json.loads(eval_json.read_text())
    found["episodes"][0]["return"] = -200.123456789
    eval_json.write_text(json.dumps(found | {"model": "/this/machine/model.zip"}))

    names = archive_cells(root, archive)
    assert names == [f"x/{v}/seed{s}" for v in ("concat", "hyper") for s in (0, 1)]
    assert not (archive / "x" / "film").exists()
    assert collect(archive) == collect(root)
    assert not list(archive.rglob("events.out.tfevents.*"))
    kept = json.loads((archive / "x/hyper/seed0/eval.json").read_text())
    assert "model" not in kept and kept["episodes"][0]["return"] == -200.123
    for name in names:
        (steps, values), (steps_kept, values_kept) = _curve(root / name), _curve(archive / name)
        assert steps_kept.tolist() == steps.tolist() and np.allclose(values_kept, values)
    assert [f.name for f in plot_feature_sweeps(archive, tmp_path)] == [
        "sweeps_ContextualPendulum-v0.png"
    ]
    assert archive_cells(root, archive) == []  # nothing changed, nothing copied
    meta = root / "x/concat/seed1/meta.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"train_seconds": 2.5}))
    assert archive_cells(root, archive) == ["x/concat/seed1"]
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        archive_cell(root / "x/film/seed0", archive / "x/film/seed0")

    # a clean clone: no runs, the report made from the archive alone
    fresh = tmp_path / "clean"
    argv = ["--report", "--root", str(fresh), "--archive", str(tmp_path / "archive")]
    assert benchmark_script.main(argv) == 0
    assert "| hyper | -250.0 ± 50.0 (2) |" in (fresh / "quick" / "results.md").read_text()
    assert (fresh / "quick" / "learning_curves.png").is_file()
    # too few seeds to aggregate: the per-env tables all the same, and no error
    assert benchmark_script.main([*argv, "--aggregate-seeds", "3"]) == 0
    report = (fresh / "quick" / "results.md").read_text()
    assert report.startswith("No aggregate yet: no env has 3 seed(s)")
    assert "| hyper | -250.0 ± 50.0 (2) |" in report and "IQM" not in report
    assert benchmark_script.main([*argv[:-1], "none"]) == 2  # no archive: nothing to report
    # by default the archive is the committed one, unless the runs go elsewhere
    repo_archive = Path(benchmark_script.__file__).resolve().parents[1] / "docs/results/cells/v2"
    assert benchmark_script._archive(None, True, "v2") == repo_archive
    assert benchmark_script._archive(None, False, "v2") is None


def _stops_or_marks(cell: Cell, root: Path) -> Path:
    """A stand-in cell: seed 0 of a 64-step grid is interrupted (as by SIGTERM); the others take
    a while and then mark that they ran."""
    import time

    if cell.seed == 0 and cell.timesteps == 64:
        raise KeyboardInterrupt("SIGTERM")
    time.sleep(3)
    root.mkdir(exist_ok=True)
    (root / f"ran{cell.seed}").write_text("")
    return root


def test_a_stopped_cell_ends_the_parallel_grid_instead_of_the_workers_going_on(tmp_path):
    cells = [Cell("hyperrl/ContextualCartPole-v0", "ppo", "hyper", s, 64) for s in range(8)]
    with pytest.raises(KeyboardInterrupt):
        run_grid(cells, tmp_path, jobs=2, runner=_stops_or_marks)
    time.sleep(4)  # long enough for a worker that went on to mark its next cell
    assert len(list(tmp_path.glob("ran*"))) <= 1  # at most the cell the other worker had begun
    done = [Cell("hyperrl/ContextualCartPole-v0", "ppo", "hyper", s, 32) for s in range(3)]
    assert run_grid(done, tmp_path / "ok", jobs=2, runner=_stops_or_marks) == [tmp_path / "ok"] * 3
