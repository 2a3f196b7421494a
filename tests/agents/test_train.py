"""train_agent.py / evaluate.py machinery on tiny budgets, and every error a user can hit."""

import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
from stable_baselines3.common.callbacks import BaseCallback

import envs
from agents import sb3_train as train_module
from agents.algos import algo_class, policy_for
from agents.config import load_preset, parse_overrides, resolve
from agents.evaluation import evaluate_run
from agents.run_config import load_model
from agents.run_folder import TrainingInterruptedError
from agents.train import TrainArgs, train

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import evaluate as evaluate_script  # noqa: E402
import record_video  # noqa: E402
import train_agent  # noqa: E402

FAST = dict(
    algo="ppo",
    env="hyperrl/ContextualCartPole-v0",
    eval_freq=512,
    eval_episodes=2,
    save_freq=512,
    progress_bar=False,
    tensorboard=True,
    hyperparams=["n_steps:64", "batch_size:64", "n_epochs:2"],
)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "ppo"
    train(TrainArgs(**FAST, timesteps=1024, n_envs=2, run_dir=str(run_dir)))
    return run_dir


def test_a_run_folder_has_everything(ppo_run):
    names = {p.name for p in ppo_run.iterdir()}
    assert {
        "config.yml",
        "contexts.yml",
        "model.zip",
        "best_model.zip",
        "checkpoints",
        "tb",
    } <= names
    config = yaml.safe_load((ppo_run / "config.yml").read_text())
    assert config["env"] == "hyperrl/ContextualCartPole-v0" and config["n_envs"] == 2
    assert config["hyperparams"]["n_steps"] == 64  # the override won over the preset
    assert "pole_length" in yaml.safe_load((ppo_run / "contexts.yml").read_text())
    events = list((ppo_run / "tb").rglob("events.out.tfevents*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    for split in ("train", "interpolation", "extrapolation"):
        assert f"eval/{split}_return" in tags
    assert {"hyper/action_net/weight_norm", "hyper/value_net/weight_spread"} <= set(tags)


def test_resume_continues_the_step_count(ppo_run, tmp_path):
    copy = tmp_path / "resumed"
    import shutil

    shutil.copytree(ppo_run, copy)
    train(TrainArgs(**FAST | {"eval_freq": 0}, resume=str(copy), timesteps=1536))
    model = load_model(algo_class("ppo")[0], copy / "model.zip")
    assert model.num_timesteps >= 1536


def test_resume_keeps_the_runs_own_schedule_unless_given_again(ppo_run, tmp_path):
    import shutil

    recorded = yaml.safe_load((ppo_run / "config.yml").read_text())["schedule"]
    assert recorded == {"eval_freq": 512, "eval_episodes": 2, "save_freq": 512,
                        "keep_checkpoints": 3}  # fmt: skip
    kept, given = tmp_path / "kept", tmp_path / "given"
    shutil.copytree(ppo_run, kept)
    shutil.copytree(ppo_run, given)
    common = dict(timesteps=1536, progress_bar=False, tensorboard=False)
    train(TrainArgs(resume=str(kept), **common))  # checkpoints every 512 steps, as recorded
    assert (kept / "checkpoints" / "step_1536").is_dir()
    train(TrainArgs(resume=str(given), save_freq=0, **common))
    assert not (given / "checkpoints" / "step_1536").exists()


def test_off_policy_resume_keeps_the_replay_buffer(tmp_path):
    args = dict(
        algo="sac",
        env="hyperrl/ContextualPendulum-v0",
        eval_freq=0,
        save_freq=0,
        progress_bar=False,
        tensorboard=False,
        hyperparams=["learning_starts:50", "policy_kwargs:{net_arch: [16, 16]}"],
    )
    train(TrainArgs(**args, timesteps=120, run_dir=str(tmp_path / "sac")))
    assert (tmp_path / "sac" / "replay_buffer.pkl").is_file()
    train(TrainArgs(**args, timesteps=200, resume=str(tmp_path / "sac")))
    from stable_baselines3 import SAC

    model = SAC.load(tmp_path / "sac" / "model.zip")
    model.load_replay_buffer(tmp_path / "sac" / "replay_buffer.pkl")
    assert model.replay_buffer.size() == 200 and model.num_timesteps == 200


def test_ctrl_c_saves_a_resumable_model(tmp_path, monkeypatch, capsys):
    class Interrupt(BaseCallback):
        def _on_step(self):
            if self.num_timesteps >= 256:
                raise KeyboardInterrupt
            return True

    monkeypatch.setattr(train_module, "_callbacks", lambda *a: [Interrupt()])
    run_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterruptedError, match="stopped by SIGINT") as stopped:
        train(TrainArgs(**FAST, timesteps=4096, n_envs=2, run_dir=str(run_dir)))
    assert stopped.value.exit_code == 130 and stopped.value.run_dir == run_dir
    assert "--resume" in capsys.readouterr().out
    model = load_model(algo_class("ppo")[0], run_dir / "model.zip")
    assert 256 <= model.num_timesteps < 4096


def test_evaluate_writes_results_plot_and_videos(ppo_run, tmp_path):
    result = evaluate_run(ppo_run, episodes=2, video=True, out_dir=tmp_path)
    assert set(result["summary"]) == {"train", "interpolation", "extrapolation"}
    rows = json.loads((tmp_path / "eval.json").read_text())["episodes"]
    assert len(rows) == 6 and (tmp_path / "eval.csv").read_text().count("\n") == 7
    assert (tmp_path / "eval.png").stat().st_size > 10_000
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert [v.name.split("_")[0] for v in videos] == ["extrapolation", "interpolation", "train"]
    first = {r["split"]: r for r in reversed(rows)}  # the recorded episode is each split's first
    for video in videos:
        frames = iio.imread(video)
        assert frames.shape[0] == first[video.name.split("_")[0]]["length"]
        assert "pole_length=" in video.name


def test_evaluate_on_a_grid(ppo_run, tmp_path):
    result = evaluate_run(
        ppo_run, episodes=1, grid=3, grid_features=["pole_length", "cart_mass"], out_dir=tmp_path
    )
    contexts = {
        (r["context"]["pole_length"], r["context"]["cart_mass"]) for r in result["episodes"]
    }
    assert len(contexts) == 9 and (tmp_path / "eval.png").is_file()


def test_config_validation():
    from stable_baselines3 import PPO

    assert load_preset("hyperrl/ContextualCartPole-v0", "ppo")["n_envs"] == 8
    assert load_preset("CartPole-v1", "ppo") == {}
    assert parse_overrides(["learning_rate:0.01", "policy_kwargs:{head_arch: [8]}"]) == {
        "learning_rate": 0.01,
        "policy_kwargs": {"head_arch": [8]},
    }
    with pytest.raises(
        ValueError,
        match=r"unknown config key 'learnin_rate' \(did you mean "
        r"'learning_rate'\?\) for PPO; valid keys: .*n_steps",
    ):
        resolve("hyperrl/ContextualCartPole-v0", "ppo", PPO, overrides={"learnin_rate": 1e-3})
    with pytest.raises(ValueError, match="key:value"):
        parse_overrides(["learning_rate=0.1"])
    from stable_baselines3 import SAC

    merged = resolve(
        "hyperrl/ContextualPendulum-v0",
        "sac",
        SAC,
        overrides={"policy_kwargs": {"generator": "chunked"}},
    )
    assert merged["policy_kwargs"] == {"net_arch": [64, 64], "generator": "chunked"}
    with pytest.raises(ValueError, match="'n_envs' must be a positive whole number"):
        resolve("CartPole-v1", "ppo", PPO, overrides={"n_envs": 0})


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("hyperrl/ContextualCartPole-v0: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_preset("hyperrl/ContextualCartPole-v0", "ppo", bad)


def test_clear_errors_from_the_command_line(capsys, tmp_path):
    def error(*argv):
        assert train_agent.main([*argv, "--no-progress", "-f", str(tmp_path / "x")]) == 2
        return capsys.readouterr().err

    assert "did you mean 'hyperrl/ContextualCartPole-v0'" in error(
        "--env", "hyperrl/ContextualCartpole-v0"
    )
    assert "unknown algorithm 'ppo2' (did you mean 'ppo'?)" in error("--algo", "ppo2")
    assert "unknown policy 'hypr'" in error("--policy", "hypr")
    assert "has no 'context'" in error("--env", "Pendulum-v1", "--algo", "sac")
    assert "has no 'context'" in error("--env", "CartPole-v1", "--policy", "film")
    assert "PPO rejected the config" in error("--hyperparams", "policy_kwargs:{head_arc: [8]}")
    for flag, value, expected in [
        ("-n", "-5", "-n/--timesteps must be a positive integer, got -5"),
        ("-n", "0", "-n/--timesteps must be a positive integer, got 0"),
        ("--n-envs", "0", "--n-envs must be a positive integer, got 0"),
        ("--eval-episodes", "0", "--eval-episodes must be a positive integer"),
        ("--save-freq", "-1", "--save-freq must be a non-negative integer (0 disables it)"),
        ("--eval-freq", "-10", "--eval-freq must be a non-negative integer (0 disables it)"),
        ("--seed", "-1", "--seed must be a non-negative integer, got -1"),
    ]:
        assert expected in error(flag, value)
    for argv, expected in [
        (["--hyperparams", "gamma:abc"], "config key 'gamma' must be a number, got 'abc'"),
        (["--hyperparams", "gamma:1.5"], "config key 'gamma' must be in [0, 1], got 1.5"),
        (["--hyperparams", "n_epochs:0"], "'n_epochs' must be a positive whole number, got 0"),
        (["--hyperparams", "batch_size:6.5"], "'batch_size' must be a whole number"),
        (["--hyperparams", "learning_rate:-1"], "'learning_rate' must be a positive number"),
        (["--hyperparams", "policy_kwargs:abc"], "'policy_kwargs' must be a mapping"),
        (["--device", "bogus"], "--device must be auto, cpu, cuda or cuda:<index>"),
        (["--algo", "her"], "is not goal-conditioned"),
    ]:
        err = error(*argv)
        assert expected in err and "Traceback" not in err, argv
    assert not (tmp_path / "x").exists()  # nothing half-made to refuse the next try
    for flag, value in [("--env", "CartPole-v1"), ("--hyperparams", "gamma:0.9"), ("--seed", "3")]:
        with pytest.raises(SystemExit):
            train_agent.main(["--resume", str(tmp_path / "x"), flag, value])
        assert f"{flag} cannot change it" in capsys.readouterr().err


def test_evaluate_refuses_bad_counts_and_features_and_takes_a_checkpoint(ppo_run, tmp_path, capsys):
    out = ["-o", str(tmp_path / "new" / "dir")]  # parents are made
    for argv, expected in [
        (["-n", "0"], "-n/--episodes must be a positive integer, got 0"),
        (["-n", "-3"], "-n/--episodes must be a positive integer, got -3"),
        (["--grid", "0"], "--grid must be an integer >= 2"),
        (["--max-videos", "-1"], "--max-videos must be >= 0"),
        (["--grid", "3", "--grid-features", "gravity"], "--grid-features takes one or two of"),
    ]:
        assert evaluate_script.main([str(ppo_run), *argv, *out]) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, argv
    checkpoint = sorted((ppo_run / "checkpoints").glob("step_*/model.zip"))[-1]
    assert evaluate_script.main([str(checkpoint), "-n", "1", "--splits", "train", *out]) == 0
    assert (tmp_path / "new" / "dir" / "eval.json").is_file()


def test_record_video_pins_a_context_and_refuses_what_it_cannot_pin(ppo_run, tmp_path, capsys):
    out = ["-o", str(tmp_path / "video")]
    assert record_video.main([str(ppo_run), "--context", "pole_length=0.8", *out]) == 0
    assert "'pole_length': 0.8" in capsys.readouterr().out
    assert len(list((tmp_path / "video" / "videos").glob("*.mp4"))) == 1
    assert record_video.main([str(ppo_run), "--context", "pole_length=99", *out]) == 2
    assert "'pole_length'=99.0 is outside its allowed range" in capsys.readouterr().err
    plain = tmp_path / "plain"
    args = ["--env", "CartPole-v1", "--policy", "mlp", "-n", "64", "--hyperparams", "n_steps:32",
            "batch_size:32", "--eval-freq", "0", "--save-freq", "0", "--no-progress", "-f",
            str(plain)]  # fmt: skip
    assert train_agent.main(args) == 0
    assert record_video.main([str(plain), "--context", "gravity=12", *out]) == 2
    assert "CartPole-v1 has no context features to pin" in capsys.readouterr().err


def test_missing_or_corrupt_model(tmp_path, capsys, ppo_run):
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "config.yml").write_text((ppo_run / "config.yml").read_text())
    (bad / "model.zip").write_bytes(b"not a zip")
    assert evaluate_script.main([str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert evaluate_script.main([str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    from stable_baselines3 import PPO

    PPO("MlpPolicy", "Pendulum-v1").save(bad / "model.zip")  # another env's model
    assert evaluate_script.main([str(bad), "-n", "1"]) == 2
    err = capsys.readouterr().err
    assert "was trained on other spaces than its run's env hyperrl/ContextualCartPole-v0" in err
    assert "Traceback" not in err


def test_policy_must_fit_the_env():
    import gymnasium as gym
    from stable_baselines3 import PPO

    env = gym.make("CartPole-v1")
    assert policy_for(PPO, "mlp", env, "CartPole-v1")[0] == "MlpPolicy"
    with pytest.raises(ValueError, match="has no 'context'"):
        policy_for(PPO, "hyper", env, "CartPole-v1")


def test_every_shipped_preset_is_valid():
    import yaml as _yaml

    from agents.config import CONFIG_DIR

    checked = 0
    for path in CONFIG_DIR.glob("*.yml"):
        for env_id, sections in _yaml.safe_load(path.read_text()).items():
            for algo_name in sections:
                if algo_name == "adaptation":  # train_agent.py --adapt's section
                    from agents.adaptation import AdaptationConfig
                    from agents.config import load_preset

                    AdaptationConfig.from_dict(load_preset(env_id, algo_name, path))
                    checked += 1
                    continue
                algo, _ = algo_class(algo_name)
                if env_id in envs.BATCHED_ENVS:  # trained by the on-device PPO or SAC
                    from agents.batched.train import TRAINERS

                    algo = TRAINERS[algo_name].config_class
                resolve(env_id, algo_name, algo, conf_file=path)
                checked += 1
    assert checked >= 20


def test_a_rendering_failure_says_which_backend_to_set(ppo_run, tmp_path, monkeypatch):
    import gymnasium as gym

    def broken(self):
        raise RuntimeError("cannot open display")

    monkeypatch.setattr(gym.Wrapper, "render", broken)
    with pytest.raises(ValueError, match="MUJOCO_GL=egl"):
        evaluate_run(ppo_run, splits=["train"], episodes=1, video=True, out_dir=tmp_path)


def test_her_from_the_command_line(tmp_path):
    run_dir = tmp_path / "her"
    code = train_agent.main(
        [
            "--algo",
            "her",
            "--env",
            "hyperrl/FetchReach-v0",
            "-n",
            "150",
            "--eval-freq",
            "0",
            "--save-freq",
            "0",
            "--no-progress",
            "--tensorboard-log",
            str(tmp_path / "tb"),
            "-f",
            str(run_dir),
            "--hyperparams",
            "learning_starts:100",
            "batch_size:32",
            "policy_kwargs:{net_arch: [16, 16]}",
        ]
    )
    assert code == 0
    assert (run_dir / "replay_buffer.pkl").is_file() and (tmp_path / "tb" / "her").is_dir()
    # SB3 loads a HerReplayBuffer model only with an env: the evaluation must pass one
    result = evaluate_run(run_dir, splits=["train"], episodes=1)
    assert result["summary"]["train"]["episodes"] == 1


def test_normalized_runs_keep_the_context_raw_and_evaluate(tmp_path):
    run_dir = tmp_path / "norm"
    train(
        TrainArgs(
            **FAST
            | {
                "eval_freq": 0,
                "save_freq": 0,
                "hyperparams": FAST["hyperparams"] + ["normalize:true"],
            },
            timesteps=256,
            n_envs=2,
            run_dir=str(run_dir),
        )
    )
    import pickle

    from stable_baselines3.common.vec_env import VecNormalize

    vecnorm = pickle.loads((run_dir / "vecnormalize.pkl").read_bytes())
    assert isinstance(vecnorm, VecNormalize) and vecnorm.norm_obs_keys == ["observation"]
    result = evaluate_run(run_dir, splits=["train"], episodes=1, out_dir=tmp_path)
    assert result["summary"]["train"]["episodes"] == 1


def test_caption_writes_on_a_top_band_only():
    from agents.evaluation import caption

    frame = np.full((60, 200, 3), 128, np.uint8)
    out = caption(frame, "gravity=12.3")
    changed = np.any(out != frame, axis=2)
    rows = np.nonzero(changed.any(axis=1))[0]
    assert rows.size and rows.max() < 20  # only the band at the top
    assert out.shape == frame.shape and out.dtype == np.uint8


def test_best_model_on_a_tie_is_the_later_one(tmp_path, monkeypatch):
    """A saturated return (CartPole's 500) must not pin best_model.zip to the first, least
    trained policy that reached it."""
    import agents.sb3_train as train_module

    returns = iter([400.0, 500.0, 500.0, 450.0])
    monkeypatch.setattr(train_module, "evaluate_policy", lambda *a, **k: (next(returns), 0.0))
    saved = []

    class Model:
        num_timesteps = 0
        logger = type("Logger", (), {"record": lambda *a: None, "dump": lambda *a: None})()

        def save(self, path):  # written through a temporary file, then renamed
            saved.append(self.num_timesteps)
            path.write_text(str(self.num_timesteps))

        def get_vec_normalize_env(self):  # no normalisation: no statistics of its own
            return None

    callback = train_module.SplitEvalCallback({"train": None}, 1, 1, tmp_path)
    callback.model = Model()
    monkeypatch.setattr(callback, "_log_generated_weights", lambda: None)
    for step in range(1, 5):
        callback.model.num_timesteps = step
        callback.n_calls = step
        callback._on_step()
    assert saved == [1, 2, 3] and (tmp_path / "best_model.zip").read_text() == "3"
    # a resumed run compares against the kept score: a worse first evaluation saves nothing
    returns = iter([480.0, 500.0])
    resumed = train_module.SplitEvalCallback({"train": None}, 1, 1, tmp_path)
    resumed.model = callback.model
    monkeypatch.setattr(resumed, "_log_generated_weights", lambda: None)
    for step in (5, 6):
        resumed.model.num_timesteps = resumed.n_calls = step
        resumed._on_step()
    assert saved == [1, 2, 3, 6] and (tmp_path / "best_model.zip").read_text() == "6"


def test_normalized_goal_runs_keep_the_goal_raw(tmp_path):
    """The hyper policies condition on the goal of a goal env: normalising it with running
    statistics would change it at every step."""
    run_dir = tmp_path / "goal"
    code = train_agent.main(
        ["--algo", "ppo", "--env", "hyperrl/FetchReach-v0", "-n", "64", "--eval-freq", "0"]
        + ["--save-freq", "0", "--no-progress", "-f", str(run_dir), "--hyperparams"]
        + ["normalize:true", "n_steps:64", "batch_size:32", "policy_kwargs:{net_arch: [16]}"]
    )
    assert code == 0
    import pickle

    vecnorm = pickle.loads((run_dir / "vecnormalize.pkl").read_bytes())
    assert sorted(vecnorm.norm_obs_keys) == ["achieved_goal", "observation"]
