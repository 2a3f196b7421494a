"""Train an agent: ``python scripts/train_agent.py --algo ppo --env hyperrl/ContextualCartPole-v0``.

rl-baselines3-zoo's conventions: presets from ``configs/*.yml``, ``--hyperparams key:value``
overrides, a run folder with the model, best model, normalisation statistics, resolved config and
TensorBoard events. Ctrl-C saves; ``--resume RUN_DIR`` continues.
"""

from __future__ import annotations

import argparse
import sys

from agents.algos import ALGOS, POLICIES
from agents.run_folder import TrainingInterruptedError
from agents.safe_pickle import TRUST_NOTE
from agents.train import TrainArgs, train

#: flags that define a run and so cannot change on --resume
RUN_DEFINING = {
    "--algo", "--env", "--policy", "-c", "--conf-file", "--hyperparams", "--n-envs", "--seed",
    "--batched", "--init-from", "--freeze", "--reinit-critic",
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=TRUST_NOTE)
    p.add_argument("--algo", default="ppo", help=f"one of {list(ALGOS)}")
    p.add_argument("--env", default="hyperrl/ContextualCartPole-v0", help="gymnasium env id")
    p.add_argument("--policy", default=None, help=f"one of {list(POLICIES)} (default: hyper)")
    p.add_argument("-c", "--conf-file", default=None, help="YAML presets (default: configs/*.yml)")
    p.add_argument("--hyperparams", nargs="*", default=[], metavar="KEY:VALUE")
    p.add_argument("-n", "--timesteps", type=int, default=None)
    p.add_argument("--n-envs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    p.add_argument("--tensorboard-log", default=None, help="TensorBoard root (default: RUN/tb)")
    p.add_argument(
        "--eval-freq",
        type=int,
        help="env steps; 0 disables (default 10000; --resume keeps the run's own, as for "
        "--eval-episodes, --save-freq and --keep-checkpoints)",
    )
    p.add_argument("--eval-episodes", type=int, help="default 5")
    p.add_argument("--save-freq", type=int, help="env steps; 0 disables (default 50000)")
    p.add_argument(
        "--keep-checkpoints",
        type=int,
        metavar="K",
        help="checkpoints kept in RUN/checkpoints (the newest K, default 3; only the newest "
        "keeps its replay buffer)",
    )
    p.add_argument("-f", "--run-dir", default=None, help="default: runs/<algo>/<env>_<n>")
    p.add_argument("--resume", default=None, metavar="RUN_DIR")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="start from this run's policy (its model.zip, or a .zip given): fine-tune on a new "
        "context range, task or env with the same spaces; same --algo and --policy",
    )
    p.add_argument(
        "--freeze",
        default="none",
        choices=("none", "generator", "trunk"),
        help="with --init-from: hold the generators (what reads the context) or the trunks "
        "(what reads the observation) fixed",
    )
    p.add_argument(
        "--reinit-critic",
        action="store_true",
        help="with --init-from: start the critic afresh (the actor is copied)",
    )
    p.add_argument(
        "--batched",
        action="store_true",
        help="train a contextual MuJoCo id (locomotion, Fetch) on its batched CPU twin (MuJoCo "
        "threads, the on-device PPO/SAC/HER trainer; e.g. hyperrl/ContextualHalfCheetah-v0 -> "
        "hyperrl/BatchedHalfCheetah-v0); evaluation and videos run on the id given",
    )
    p.add_argument(
        "--adapt",
        default=None,
        metavar="RUN",
        help="train RUN's adaptation module (the context inferred from the last transitions, "
        "RMA phase 2) on its batched twin, -n steps (preset: the env's 'adaptation' section), "
        "into RUN/adaptation.pt; evaluate with evaluate.py RUN --context-source inferred",
    )
    p.add_argument("--no-progress", dest="progress_bar", action="store_false")
    p.add_argument("-v", "--verbose", type=int, default=0)
    parsed = p.parse_args(argv)
    fixed = [t.split("=")[0] for t in (sys.argv[1:] if argv is None else argv)]
    fixed = [t for t in fixed if t in RUN_DEFINING]
    if parsed.adapt and (parsed.resume or parsed.init_from or parsed.batched):
        p.error(
            "--adapt trains an existing run's adaptation module; drop --resume, "
            "--init-from and --batched"
        )
    if parsed.resume and fixed:
        p.error(
            f"--resume continues {parsed.resume} with the config it was started with; "
            f"{', '.join(dict.fromkeys(fixed))} cannot change it (drop them, or start a new run "
            "with -f)"
        )
    try:
        args = TrainArgs(**vars(parsed))
        run_dir = train(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterruptedError as err:
        print(err, file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a full disk or a read-only folder at the final save
        print(
            f"error: could not write the run's files ({err}); each earlier save is kept whole. "
            "Free disk space or fix the folder's permissions, then --resume",
            file=sys.stderr,
        )
        return 1
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
