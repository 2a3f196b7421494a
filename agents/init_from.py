"""Starting a run from another run's policy (``train_agent.py --init-from RUN``): pretrain, then
fine-tune on a new context range, a new task or another env with the same spaces.

:func:`initialise` copies the source policy's parameters into the new model (optionally leaving
the critic at its fresh initialisation) and freezes a part of the policy: the generators (what
reads the context: a hypernetwork's generator, FiLM's context network) or the trunks (what reads
the observation). Freezing is recorded in the run's config and applied again on ``--resume``,
since a saved model does not keep ``requires_grad``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from agents.run_config import FREEZE, load_run, spaces_of
from agents.safe_pickle import load_vecnormalize
from hyperrl.conditioning import FiLMHead, HyperHead
from hyperrl.policies.networks import ContextualNet


@dataclass(frozen=True)
class InitFrom:
    """Where a run started from, as its ``config.yml`` records it.

    :param run: the source run folder or model ``.zip``.
    :param freeze: one of :data:`FREEZE`.
    :param reinit_critic: whether the critic kept its fresh initialisation.
    """

    run: str
    freeze: str = "none"
    reinit_critic: bool = False

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE:
            raise ValueError(f"--freeze takes one of {list(FREEZE)}, got {self.freeze!r}")


def _is_critic(name: str) -> bool:
    """Parameter names of a policy's critic: PPO/A2C's ``value_net``, SAC/TD3's ``critic`` and
    ``critic_target``."""
    return name.startswith(("value_net.", "critic.", "critic_target."))


def frozen_parameters(policy: nn.Module, freeze: str) -> Iterator[tuple[str, nn.Parameter]]:
    """The named parameters ``freeze`` holds fixed in ``policy``.

    :raises ValueError: when the policy has nothing of that kind (e.g. ``generator`` on a concat
        policy)."""
    if freeze == "none":
        return iter(())
    picked: list[tuple[str, nn.Parameter]] = []
    for net_name, net in policy.named_modules():
        if not isinstance(net, ContextualNet):
            continue
        if freeze == "trunk":
            parts = [("trunk", net.trunk)]
        elif isinstance(net.head, HyperHead):
            parts = [("head.generator", net.head.generator)]
        elif isinstance(net.head, FiLMHead):
            parts = [("head.film_embedding", net.head.film_embedding),
                     ("head.film_out", net.head.film_out)]  # fmt: skip
        else:
            parts = []
        for part_name, part in parts:
            picked += [(f"{net_name}.{part_name}.{n}", p) for n, p in part.named_parameters()]
    if not picked:
        what = "generator (hyper or FiLM heads)" if freeze == "generator" else "trunk layers"
        raise ValueError(
            f"--freeze {freeze}: {type(policy).__name__} has no {what} to freeze; use "
            "--freeze none, or a policy that has them"
        )
    return iter(picked)


def apply_freeze(policy: nn.Module, freeze: str) -> int:
    """Turn off gradients of what ``freeze`` names (optimizers skip parameters without a
    gradient); returns how many parameters that holds fixed."""
    count = 0
    for _, param in frozen_parameters(policy, freeze):
        param.requires_grad_(False)
        count += param.numel()
    return count


def initialise(model: BaseAlgorithm, source: BaseAlgorithm, init: InitFrom) -> int:
    """Copy ``source.policy`` into ``model.policy`` (both SB3 algorithm objects), the critic
    too unless ``init.reinit_critic``, then freeze; returns the number of frozen parameters.

    :raises ValueError: when the policy classes or the spaces differ, naming both."""
    new, old = model.policy, source.policy
    if type(new) is not type(old):
        raise ValueError(
            f"--init-from {init.run} holds a {type(old).__name__}, this run builds a "
            f"{type(new).__name__}: pass the same --algo and --policy as the source run"
        )
    theirs, ours = spaces_of(old), spaces_of(new)
    if theirs != ours:
        raise ValueError(
            f"--init-from {init.run} was trained on other spaces (observations {theirs[0]}, "
            f"actions {theirs[1]}) than this env's (observations {ours[0]}, actions {ours[1]}); "
            "fine-tuning needs an env with the same spaces"
        )
    state = {
        k: v for k, v in old.state_dict().items() if not (init.reinit_critic and _is_critic(k))
    }
    mine = new.state_dict()
    wrong = [k for k, v in state.items() if k not in mine or mine[k].shape != v.shape]
    if wrong:
        raise ValueError(
            f"--init-from {init.run}: its policy's layers {wrong[:4]} do not fit this run's "
            "(another net_arch, head_arch or generator?); pass the source run's policy_kwargs"
        )
    with torch.no_grad():
        new.load_state_dict(state, strict=False)
    return apply_freeze(new, init.freeze)


def source_model_path(run: str | Path) -> Path:
    """The model file ``--init-from`` reads: a ``.zip`` as given, else the run folder's
    ``model.zip`` (its final policy)."""
    path = Path(run)
    return path if path.suffix == ".zip" else path / "model.zip"


def load_source(init: InitFrom) -> tuple[BaseAlgorithm, VecNormalize | None]:
    """The source run's model (on the CPU) and its observation normalisation (a
    ``VecNormalize`` read without running code, or ``None`` when it had none)."""
    if not source_model_path(init.run).is_file():
        raise ValueError(
            f"--init-from {init.run}: no such run folder or model file (give a run folder with a "
            "model.zip, or a .zip inside one)"
        )
    model, _, run_dir, path = load_run(source_model_path(init.run))
    for folder in (path.parent, run_dir):
        if (folder / "vecnormalize.pkl").is_file():
            return model, load_vecnormalize(folder / "vecnormalize.pkl")
    return model, None


def check_normalisation(
    init: InitFrom, source_stats: VecNormalize | None, normalises: bool
) -> None:
    """:raises ValueError: when the source run and this one disagree on normalising
    observations (the policy would see inputs on another scale)."""
    if (source_stats is not None and source_stats.norm_obs) == normalises:
        return
    if normalises:
        raise ValueError(
            f"--init-from {init.run} did not normalise its observations, this run does: its "
            "policy would read them on another scale; add --hyperparams normalize:false"
        )
    raise ValueError(
        f"--init-from {init.run} normalised its observations, this run does not: add "
        "--hyperparams normalize:true (its statistics are carried over)"
    )
