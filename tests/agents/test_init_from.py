"""``--init-from``: fine-tuning starts from another run's policy, holds frozen parts fixed bit
for bit (across a resume too), and refuses sources that do not fit with one clear line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from stable_baselines3 import PPO, SAC
from toy_envs import ContextualTarget

from agents.init_from import InitFrom, frozen_parameters, initialise
from agents.train import TrainArgs, train
from hyperrl import HyperActorCriticPolicy, HyperSACPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import train_agent  # noqa: E402

FAST = dict(
    algo="ppo", env="hyperrl/ContextualCartPole-v0", eval_freq=0, save_freq=0,
    progress_bar=False, tensorboard=False, n_envs=2,
    hyperparams=["n_steps:64", "batch_size:64", "n_epochs:2"],
)  # fmt: skip


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "source"
    train(TrainArgs(**FAST, timesteps=512, run_dir=str(run_dir)))
    return run_dir


def _params(run_dir: Path, part: str) -> dict[str, torch.Tensor]:
    policy = PPO.load(run_dir / "model.zip", device="cpu").policy
    return {n: p.detach().clone() for n, p in frozen_parameters(policy, part)}


def test_fine_tuning_keeps_the_frozen_part_bit_for_bit_across_a_resume(source_run, tmp_path):
    run_dir = tmp_path / "tuned"
    args = TrainArgs(**FAST, timesteps=256, run_dir=str(run_dir), init_from=str(source_run),
                     freeze="generator")  # fmt: skip
    train(args)
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    assert config["init_from"] == {
        "run": str(source_run), "freeze": "generator", "reinit_critic": False
    }  # fmt: skip
    before, after = _params(source_run, "generator"), _params(run_dir, "generator")
    assert before.keys() == after.keys() and len(before) > 0
    assert all(torch.equal(before[k], after[k]) for k in before)
    trunk_before, trunk_after = _params(source_run, "trunk"), _params(run_dir, "trunk")
    assert not all(torch.equal(trunk_before[k], trunk_after[k]) for k in trunk_before)
    train(TrainArgs(resume=str(run_dir), timesteps=512, progress_bar=False, tensorboard=False,
                    eval_freq=0, save_freq=0))  # fmt: skip
    assert PPO.load(run_dir / "model.zip").num_timesteps == 512
    resumed = _params(run_dir, "generator")
    assert all(torch.equal(before[k], resumed[k]) for k in before)


def test_the_critic_can_start_afresh_while_the_actor_is_copied():
    source = PPO(HyperActorCriticPolicy, ContextualTarget(), seed=0, device="cpu")
    model = PPO(HyperActorCriticPolicy, ContextualTarget(), seed=1, device="cpu")
    fresh = {k: v.clone() for k, v in model.policy.state_dict().items()}
    frozen = initialise(model, source, InitFrom("src", "trunk", reinit_critic=True))
    assert frozen > 0
    for key, value in model.policy.state_dict().items():
        expected = fresh[key] if key.startswith("value_net.") else source.policy.state_dict()[key]
        assert torch.equal(value, expected), key
    trunk = [p for n, p in model.policy.named_parameters() if ".trunk." in n]
    assert trunk and not any(p.requires_grad for p in trunk)
    concat = PPO(HyperActorCriticPolicy, ContextualTarget(), device="cpu",
                 policy_kwargs={"conditioning": "concat"})  # fmt: skip
    with pytest.raises(ValueError, match="has no generator"):
        initialise(concat, concat, InitFrom("src", "generator"))
    sac = SAC(HyperSACPolicy, ContextualTarget(), device="cpu")
    with pytest.raises(ValueError, match="holds a HyperActorCriticPolicy, this run builds a Hyper"):
        initialise(sac, source, InitFrom("src"))


def test_sources_that_do_not_fit_are_refused_with_one_clear_line(source_run, tmp_path, capsys):
    def error(*argv):
        code = train_agent.main([*argv, "--no-progress", "-n", "64", "-f", str(tmp_path / "x")])
        assert code == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    src = ["--init-from", str(source_run)]
    assert "do not fit this run's" in error(*src, "--policy", "film")
    assert "other spaces" in error(*src, "--env", "hyperrl/ContextualPendulum-v0")
    assert "do not fit this run's" in error(
        *src, "--hyperparams", "n_steps:64", "batch_size:64", "policy_kwargs:{net_arch: [8]}"
    )
    assert "did not normalise its observations" in error(*src, "--hyperparams", "normalize:true")
    assert "--freeze and --reinit-critic need --init-from" in error("--freeze", "trunk")
    assert "no such run folder or model file" in error("--init-from", str(tmp_path / "nowhere"))
    assert not (tmp_path / "x").exists()


def test_a_batched_run_fine_tunes_with_a_frozen_trunk(tmp_path):
    common = dict(
        algo="ppo", env="hyperrl/TorchPendulum-v0", n_envs=16, eval_freq=0, save_freq=0,
        progress_bar=False, tensorboard=False,
        hyperparams=["n_steps:16", "n_minibatches:2", "n_epochs:1"],
    )  # fmt: skip
    source = tmp_path / "source"
    train(TrainArgs(**common, timesteps=512, run_dir=str(source)))
    tuned = tmp_path / "tuned"
    train(TrainArgs(**common, timesteps=512, run_dir=str(tuned), init_from=str(source),
                    freeze="trunk"))  # fmt: skip
    before, after = _params(source, "trunk"), _params(tuned, "trunk")
    assert all(torch.equal(before[k], after[k]) for k in before)
    generator_before, generator_after = _params(source, "generator"), _params(tuned, "generator")
    assert not all(torch.equal(generator_before[k], generator_after[k]) for k in generator_before)
    # --resume with -n: the new total (the trunk still frozen)
    train(TrainArgs(resume=str(tuned), timesteps=768, progress_bar=False, tensorboard=False,
                    eval_freq=0, save_freq=0))  # fmt: skip
    assert PPO.load(tuned / "model.zip").num_timesteps == 768
    assert all(torch.equal(before[k], v) for k, v in _params(tuned, "trunk").items())
