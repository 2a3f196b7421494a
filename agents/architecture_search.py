"""Choosing a member of an architecture run (``scripts/search_architecture.py``): each member
evaluated on the run's batched twin, the return-against-parameters frontier, and the member to
deploy (the smallest within a fraction of the best, or the best under a parameter budget)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import envs
from agents.adaptation import RunPolicy
from agents.architecture import space_of
from agents.batched.architecture import ArchitectureSampling
from agents.batched.evaluation import evaluate_batched
from agents.run_config import load_run, statistics_dir
from hyperrl.architecture import ArchitectureSpace, Member


def uniform_members(space: ArchitectureSpace) -> list[Member]:
    """One member per depth and width, every layer that wide: a cross-section of the space."""
    return [(w,) * d for d in range(space.min_depth, space.max_depth + 1) for w in space.widths]


def evaluate_members(
    run: str | Path,
    members: Sequence[Sequence[int]] | None = None,
    splits: Sequence[str] | None = None,
    worlds: int = 32,
    device: str = "cpu",
    seed: int = 1000,
) -> list[dict[str, Any]]:
    """Each member of an architecture run on its batched twin: ``[{"member", "params",
    <split>: mean return of one deterministic episode per world}, ...]``, every member on the
    same contexts and initial states (default members: :func:`uniform_members`).

    :raises ValueError: for a run that is not an architecture run, or a member outside it."""
    model, config, run_dir, model_path = load_run(run)
    if config.policy != "architecture":
        raise ValueError(f"{run_dir} is a --policy {config.policy} run, not an architecture one")
    space = space_of(config.hyperparams.get("policy_kwargs") or {})
    members = [space.check(m) for m in (members or uniform_members(space))]
    policy = RunPolicy(model, statistics_dir(run_dir, model_path), torch.device(device))
    head = model.policy.action_net.head
    kwargs = config.env_kwargs if config.env in envs.BATCHED_ENVS else {}
    twin = envs.batched_twin(config.env)
    # one env per split for every member: each evaluation resets it with the same seed
    by_split = {
        split: envs.make_batched(twin, worlds, split, device, seed, **kwargs)
        for split in splits or envs.splits_of(config.env)
    }
    rows = []
    for member in members:
        row: dict[str, Any] = {
            "member": list(member),
            "params": space.num_params(member, head.in_dim, head.out_dim),
        }
        for split, env in by_split.items():
            played = ArchitectureSampling(env, space, member)
            row[split] = evaluate_batched(policy, played, seed=seed)["return"]
        rows.append(row)
    return rows


def frontier(rows: Sequence[dict[str, Any]], split: str = "train") -> list[dict[str, Any]]:
    """The rows no smaller member beats or matches on ``split``: return against parameters,
    smallest first."""
    out: list[dict[str, Any]] = []
    for row in sorted(rows, key=lambda r: (r["params"], -r[split])):
        if not out or row[split] > out[-1][split]:
            out.append(row)
    return out


def choose(
    rows: Sequence[dict[str, Any]],
    split: str = "train",
    within: float | None = 0.1,
    max_params: int | None = None,
) -> dict[str, Any]:
    """The member to deploy: the best one with at most ``max_params`` parameters when that is
    given, else the smallest whose return is within ``within`` of the best member's (at least
    ``best - within * |best|``, so negative returns work too).

    :raises ValueError: when no member fits ``max_params``, or for a negative ``within``."""
    if max_params is not None:
        fits = [r for r in rows if r["params"] <= max_params]
        if not fits:
            smallest = min(r["params"] for r in rows)
            raise ValueError(f"no member has <= {max_params} parameters (the smallest: {smallest})")
        return max(fits, key=lambda r: (r[split], -r["params"]))
    if within is None or within < 0:
        raise ValueError(f"--within must be a fraction >= 0, got {within!r}")
    best = max(r[split] for r in rows)
    good = [r for r in rows if r[split] >= best - within * abs(best)]
    return min(good, key=lambda r: (r["params"], -r[split]))
