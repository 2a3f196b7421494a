"""``--policy architecture``: every world acts with a member drawn per episode, the policy acts
for any member exactly as that member's plain network does, one run trains members of every
size, and evaluate.py plays the member asked for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents import sb3_train
from agents.architecture import MemberSampling
from agents.architecture_search import choose, compare, frontier
from agents.batched.architecture import ArchitectureSampling, for_policy
from agents.batched.evaluation import evaluate_batched
from agents.batched.ppo import DevicePPO, DevicePPOConfig
from agents.run_config import load_run
from agents.safe_pickle import load_vecnormalize
from agents.train import TrainArgs, train
from envs.classic.batched import TorchPendulum
from hyperrl.architecture import ArchitectureSpace
from hyperrl.policies.architecture import ARCHITECTURE_KEY, ArchitectureActorCriticPolicy

learn_sb3 = sb3_train._learn
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import evaluate  # noqa: E402
import search_architecture  # noqa: E402

SPACE = ArchitectureSpace(widths=(4, 16, 32), max_depth=2)


def test_each_world_draws_a_member_per_episode():
    env = ArchitectureSampling(TorchPendulum(64, seed=0), SPACE, seed=0)
    obs = env.reset(seed=0)
    first = obs[ARCHITECTURE_KEY].clone()
    assert env.observation_space[ARCHITECTURE_KEY].shape == (2,)
    assert {tuple(int(w) for w in m if w > 0) for m in first} <= set(SPACE.members())
    assert len({tuple(m.tolist()) for m in first}) > 5
    env.stagger_episodes(granularity=50)  # some worlds end early
    finished = redrawn = 0
    for _ in range(200):
        before = env.members.clone()
        obs, _, terminated, truncated, info = env.step(torch.zeros(64, 1))
        done = terminated | truncated
        final, now = info["final_observation"][ARCHITECTURE_KEY], obs[ARCHITECTURE_KEY]
        # a finished episode's last observation keeps its member; only new episodes redraw
        assert torch.equal(final, before.float())
        assert torch.equal(now[~done], before[~done].float())
        finished += int(done.sum())
        redrawn += int((now[done] != before[done].float()).any(-1).sum())
    assert finished > 20 and redrawn > finished // 2
    pinned = ArchitectureSampling(TorchPendulum(8, seed=0), SPACE, member=(16, 4))
    assert pinned.reset(seed=0)[ARCHITECTURE_KEY].tolist() == [[16.0, 4.0]] * 8
    kwargs = {"widths": [4, 16, 32], "max_depth": 2, "sandwich": 1.0}  # as a run gives them
    extremes = for_policy(TorchPendulum(64, seed=0), "architecture", kwargs, seed=0)
    assert {tuple(m) for m in extremes.reset(seed=0)[ARCHITECTURE_KEY].tolist()} == {
        (4.0, 0.0),
        (32.0, 32.0),
    }


def test_the_policy_acts_for_any_member_as_its_plain_network():
    env = ArchitectureSampling(TorchPendulum(4, seed=0), SPACE, seed=0)
    torch.manual_seed(0)
    policy = ArchitectureActorCriticPolicy(
        env.observation_space, env.action_space, lambda _: 3e-4, widths=SPACE.widths, max_depth=2
    )
    obs = env.reset(seed=0)
    for member in SPACE.members():
        given = {**obs, ARCHITECTURE_KEY: SPACE.encode([member]).float().expand(4, -1)}
        with torch.no_grad():
            action = policy._predict(given, deterministic=True)
            plain = policy.member_actor(member, obs["context"][0])(obs["observation"])
        assert torch.allclose(action[0], plain[0], atol=1e-5), member
        assert torch.isfinite(action).all()
    algo = DevicePPO(env, ArchitectureActorCriticPolicy, {"widths": SPACE.widths, "max_depth": 2},
                     DevicePPOConfig(n_steps=4, n_minibatches=1))  # fmt: skip
    assert algo.norm_keys == ["observation"]  # the member reaches the policy as it is
    with pytest.raises(ValueError, match="no 'architecture' key"):
        ArchitectureActorCriticPolicy(
            TorchPendulum(1).observation_space, env.action_space, lambda _: 3e-4
        )


@pytest.mark.slow
def test_one_run_trains_members_of_every_size():
    torch.set_num_threads(1)
    space = ArchitectureSpace(widths=(8, 32, 64), max_depth=2)
    env = ArchitectureSampling(TorchPendulum(256, seed=0), space, seed=0)
    cfg = DevicePPOConfig(n_steps=32, n_epochs=10, learning_rate=3e-3, gamma=0.95)
    kwargs = {"widths": space.widths, "max_depth": 2}
    algo = DevicePPO(env, ArchitectureActorCriticPolicy, kwargs, cfg, seed=0)
    algo.learn(200_000)
    returns = {
        member: evaluate_batched(
            algo, ArchitectureSampling(TorchPendulum(64, split="train"), space, member), seed=123
        )["return"]
        for member in [(8, 8), (64,), (64, 64)]
    }
    # a random policy scores about -1200; measured at 213k steps: -370, -557, -246
    assert all(r > -700 for r in returns.values()), returns


def test_train_and_evaluate_a_member_from_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "arch"
    train(TrainArgs(
        algo="ppo", env="hyperrl/TorchPendulum-v0", policy="architecture",
        hyperparams=["n_steps:16", "n_minibatches:2",
                     "policy_kwargs:{widths: [4, 16], max_depth: 2, sandwich: 0.25}"],
        timesteps=256, n_envs=8, eval_freq=128, eval_episodes=2, save_freq=0,
        progress_bar=False, tensorboard=False, run_dir=str(run_dir),
    ))  # fmt: skip
    assert evaluate.main([str(run_dir), "-n", "1", "--splits", "train", "--member", "4,16"]) == 0
    assert (run_dir / "eval_member_4-16.json").is_file()
    assert evaluate.main([str(run_dir), "-n", "1", "--splits", "train"]) == 0  # the largest
    assert evaluate.main([str(run_dir), "-n", "1", "--member", "8"]) == 2
    assert "is not in this space" in capsys.readouterr().err
    assert evaluate.main([str(run_dir), "-n", "1", "--member", "a,b"]) == 2
    assert "a member is its hidden widths" in capsys.readouterr().err
    played = json.loads((run_dir / "eval.json").read_text())
    assert played["member"] == [16, 16] and np.isfinite(played["summary"]["train"]["mean_return"])
    out = tmp_path / "search.json"
    args = [str(run_dir), "--worlds", "2", "--splits", "train", "--export", "--json", str(out)]
    assert search_architecture.main(args) == 0
    found = json.loads(out.read_text())
    assert len(found["members"]) == 4  # one per depth and width
    chosen = "-".join(map(str, found["chosen"]["member"]))
    exported = json.loads((run_dir / "export" / f"export_member_{chosen}.json").read_text())
    assert exported["params"]["exported"] == found["chosen"]["params"]
    assert search_architecture.main([str(run_dir), "--worlds", "2", "--splits", "train",
                                     "--max-params", "3"]) == 2  # fmt: skip
    assert "no member has <= 3 parameters" in capsys.readouterr().err
    assert search_architecture.main([str(run_dir), "--split", "nope"]) == 2  # before evaluating
    assert "--split 'nope' is not among the splits" in capsys.readouterr().err
    # a plain policy of a member's size, trained alone, played on the same contexts
    plain = {}
    for widths in ([16, 4], [8]):
        plain[widths[0]] = tmp_path / f"plain_{widths[0]}"
        train(TrainArgs(
            algo="ppo", env="hyperrl/TorchPendulum-v0", policy="mlp",
            hyperparams=["n_steps:16", "n_minibatches:2",
                         f"policy_kwargs:{{net_arch: {{pi: {widths}, vf: [8]}}}}"],
            timesteps=128, n_envs=8, eval_freq=0, save_freq=0, progress_bar=False,
            tensorboard=False, run_dir=str(plain[widths[0]]),
        ))  # fmt: skip
    args = [str(run_dir), "--worlds", "2", "--splits", "train", "--json", str(out)]
    png = tmp_path / "frontier.png"
    assert search_architecture.main([*args, "--baselines", str(plain[16]), "--plot", str(png)]) == 0
    assert png.stat().st_size > 0
    found = json.loads(out.read_text())
    assert [r["member"] for r in found["members"]][-1] == [16, 4]  # added to the members
    (compared,) = found["compared"]
    member = next(r for r in found["members"] if r["member"] == [16, 4])
    assert compared["member_return"] == member["train"]
    assert compared["baseline_return"] == found["baselines"][0]["train"]
    # its actor: 3 observations + 3 context features -> 16 -> 4 -> 1 action
    assert compared["baseline_params"] == 6 * 16 + 16 + 16 * 4 + 4 + 4 * 1 + 1
    assert "| 16-4 |" in capsys.readouterr().out
    assert search_architecture.main([*args, "--baselines", str(plain[8])]) == 2
    assert "is not in this space" in capsys.readouterr().err
    assert search_architecture.main([*args, "--baselines", str(run_dir)]) == 2
    assert "has no plain MLP actor" in capsys.readouterr().err
    assert search_architecture.main([*args, "--baselines", str(plain[16]), str(plain[16])]) == 0
    assert len(json.loads(out.read_text())["compared"]) == 2  # every baseline checked and played
    other = tmp_path / "cartpole"  # a plain run of another env
    train(TrainArgs(algo="ppo", env="hyperrl/ContextualCartPole-v0", policy="mlp",
                    hyperparams=["n_steps:32"], timesteps=32, eval_freq=0, save_freq=0,
                    progress_bar=False, tensorboard=False, run_dir=str(other)))  # fmt: skip
    assert search_architecture.main([*args, "--baselines", str(other)]) == 2
    assert "trained on hyperrl/ContextualCartPole-v0, not hyperrl/TorchPendulum-v0" in (
        capsys.readouterr().err
    )


def test_a_member_is_drawn_per_episode_on_gymnasium_envs():
    env = MemberSampling(gym.make("hyperrl/ContextualPendulum-v0", max_episode_steps=5), SPACE)
    assert env.observation_space[ARCHITECTURE_KEY].shape == (2,)
    obs, _ = env.reset(seed=3)
    drawn = [env.member]
    assert obs[ARCHITECTURE_KEY].tolist() == SPACE.encode([env.member])[0].tolist()
    for _ in range(40):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs[ARCHITECTURE_KEY].tolist() == SPACE.encode([drawn[-1]])[0].tolist()
        if terminated or truncated:
            env.reset()
            drawn.append(env.member)
    assert len(drawn) == 9 and len(set(drawn)) > 3 and set(drawn) <= set(SPACE.members())
    env.reset(seed=3)
    assert env.member == drawn[0]  # the seed fixes the draws
    pinned = MemberSampling(gym.make("hyperrl/ContextualPendulum-v0"), SPACE, sandwich=1.0)
    assert {(pinned.reset(seed=s), pinned.member)[1] for s in range(20)} == {(4,), (32, 32)}
    with pytest.raises(ValueError, match="needs a Dict observation"):
        MemberSampling(gym.make("Pendulum-v1"), SPACE)


def test_sb3_ppo_trains_with_a_member_drawn_per_episode(tmp_path, monkeypatch):
    run_dir = tmp_path / "sb3"
    trained = []

    def learn(args, run, model, *rest, **kwargs):
        trained.append(model)
        return learn_sb3(args, run, model, *rest, **kwargs)

    monkeypatch.setattr(sb3_train, "_learn", learn)
    train(TrainArgs(
        algo="ppo", env="hyperrl/ContextualPendulum-v0", policy="architecture",
        hyperparams=["n_steps:64", "batch_size:64", "n_epochs:1", "normalize:true",
                     "policy_kwargs:{widths: [4, 16], max_depth: 2, member_offsets: true}",
                     "env_kwargs:{max_episode_steps: 16}"],
        timesteps=512, n_envs=2, eval_freq=256, eval_episodes=1, save_freq=0,
        progress_bar=False, tensorboard=False, run_dir=str(run_dir),
    ))  # fmt: skip
    model = trained[0]
    space = ArchitectureSpace(widths=(4, 16), max_depth=2)
    assert model.policy.space == space and model.policy.action_net.head.offsets.shape[0] == 6
    vec = load_vecnormalize(run_dir / "vecnormalize.pkl")
    assert ARCHITECTURE_KEY not in vec.norm_obs_keys and "context" not in vec.norm_obs_keys
    # the last rollout: members drawn per episode (16 steps), reaching the policy unnormalised
    seen = model.rollout_buffer.observations[ARCHITECTURE_KEY].reshape(-1, 2)
    members = {tuple(int(w) for w in row if w > 0) for row in seen}
    assert len(members) > 3 and members <= set(space.members())
    assert evaluate.main([str(run_dir), "-n", "1", "--splits", "train", "--member", "4"]) == 0
    found = tmp_path / "search.json"  # the members are searched on the batched twin
    args = [str(run_dir), "--worlds", "2", "--splits", "train", "--json", str(found)]
    assert search_architecture.main(args) == 0
    assert len(json.loads(found.read_text())["members"]) == 4
    resumed = train(TrainArgs(resume=str(run_dir), timesteps=640, progress_bar=False,
                              tensorboard=False))  # fmt: skip
    assert load_run(resumed / "model.zip")[0].num_timesteps == 640
    with pytest.raises(ValueError, match="--policy architecture is not available for SAC"):
        train(TrainArgs(algo="sac", env="hyperrl/ContextualPendulum-v0", policy="architecture",
                        timesteps=64, run_dir=str(tmp_path / "sac"), progress_bar=False,
                        tensorboard=False))  # fmt: skip


def test_the_frontier_and_the_choice_on_made_up_members():
    rows = [
        {"member": [4], "params": 10, "train": 50.0},
        {"member": [8], "params": 20, "train": 90.0},
        {"member": [16], "params": 40, "train": 85.0},  # bigger and worse: off the frontier
        {"member": [32], "params": 80, "train": 100.0},
    ]
    assert [r["member"] for r in frontier(rows)] == [[4], [8], [32]]
    assert choose(rows, within=0.1)["member"] == [8]  # >= 90: the smallest such
    assert choose(rows, within=0.0)["member"] == [32]
    assert choose(rows, within=None, max_params=45)["member"] == [8]
    with pytest.raises(ValueError, match="no member has <= 5 parameters"):
        choose(rows, max_params=5)
    losses = [dict(r, train=-r["train"] - 100) for r in rows]  # negative returns: -150 ... -200
    assert choose(losses, within=0.1)["member"] == [4]  # best -150; -165 is within 10 %
    assert choose(losses, within=0.01)["member"] == [4]
    alone = [{"member": [8], "params": 30, "train": 95.0}, {"member": [32], "params": 90,
             "train": 125.0}, {"member": [64], "params": 200, "train": 1.0}]  # fmt: skip
    matched = compare(rows, alone, within=0.1)  # [64] is no member: left out
    assert [(c["member"], c["within"]) for c in matched] == [([8], True), ([32], False)]
    assert matched[1]["ratio"] == pytest.approx(0.8) and matched[0]["baseline_params"] == 30
    losing = compare(losses, [{"member": [4], "params": 9, "train": -140.0}], within=0.1)
    assert losing[0]["within"]  # -150 >= -140 - 14
    assert choose([dict(r, train=-200.0 + i) for i, r in enumerate(rows)], within=0.0)[
        "member"
    ] == [32]
