"""Choosing a member of an architecture run (``scripts/search_architecture.py``): each member
evaluated on the run's batched twin, the return-against-parameters frontier, and the member to
deploy (the smallest within a fraction of the best, or the best under a parameter budget);
separately trained plain policies evaluated the same way, to compare each member with a policy of
its size trained alone."""

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


def _twins(config: Any, splits: Sequence[str] | None, worlds: int, device: str, seed: int):
    """One batched env per split of ``config``'s env (its batched twin), seeded alike, so every
    policy evaluated on them meets the same contexts and initial states."""
    kwargs = config.env_kwargs if config.env in envs.BATCHED_ENVS else {}
    twin = envs.batched_twin(config.env)
    return {
        split: envs.make_batched(twin, worlds, split, device, seed, **kwargs)
        for split in splits or envs.splits_of(config.env)
    }


def _same_env(a: str, b: str) -> bool:
    """Whether two env ids are one env (a gymnasium id and its batched twin are)."""
    try:
        return envs.batched_twin(a) == envs.batched_twin(b)
    except ValueError:  # one of them has no twin
        return a == b


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
    # one env per split for every member: each evaluation resets it with the same seed
    by_split = _twins(config, splits, worlds, device, seed)
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


def actor_widths(model: Any) -> Member:
    """The hidden widths of a plain SB3 actor-critic's actor (``net_arch``'s ``pi``)."""
    linears = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    return tuple(m.out_features for m in linears)


def evaluate_baselines(
    runs: Sequence[str | Path],
    splits: Sequence[str] | None = None,
    worlds: int = 32,
    device: str = "cpu",
    seed: int = 1000,
    env: str | None = None,
) -> list[dict[str, Any]]:
    """Separately trained plain runs (an SB3 MLP actor, e.g. ``--policy mlp`` with
    ``net_arch: {pi: [32, 32]}``) on their batched twins exactly as :func:`evaluate_members`
    plays members: ``[{"run", "env", "member" (the actor's hidden widths), "params" (the
    actor's parameters, its context inputs included), <split>: return}, ...]``.

    :param env: the env every run must have been trained on (the same batched twin), if given.
    :raises ValueError: for an architecture run, a policy without a plain MLP actor, or a run of
        another env."""
    rows = []
    for run in runs:
        model, config, run_dir, model_path = load_run(run)
        if env is not None and not _same_env(config.env, env):
            raise ValueError(
                f"{run_dir} trained on {config.env}, not {env}: compare runs of the same env"
            )
        extractor = getattr(model.policy, "mlp_extractor", None)
        if config.policy == "architecture" or not isinstance(
            getattr(extractor, "policy_net", None), torch.nn.Sequential
        ):
            raise ValueError(
                f"{run_dir} (--policy {config.policy}) has no plain MLP actor to compare with; "
                "give plain runs, such as --policy mlp with net_arch {pi: [32, 32]}"
            )
        policy = RunPolicy(model, statistics_dir(run_dir, model_path), torch.device(device))
        actor = [extractor.policy_net, model.policy.action_net]
        row: dict[str, Any] = {
            "run": str(run_dir),
            "env": config.env,
            "member": list(actor_widths(model)),
            "params": sum(p.numel() for m in actor for p in m.parameters()),
        }
        for split, twin in _twins(config, splits, worlds, device, seed).items():
            row[split] = evaluate_batched(policy, twin, seed=seed)["return"]
        rows.append(row)
    return rows


def compare(
    members: Sequence[dict[str, Any]],
    baselines: Sequence[dict[str, Any]],
    split: str = "train",
    within: float = 0.1,
) -> list[dict[str, Any]]:
    """Each baseline next to the member of its widths: ``[{"member", "member_params",
    "member_return", "baseline_params", "baseline_return", "ratio", "within"}, ...]``;
    ``within`` is True when the member scores at least ``baseline - within * |baseline|``.
    Baselines whose widths are no evaluated member are left out."""
    by_member = {tuple(r["member"]): r for r in members}
    out = []
    for base in baselines:
        row = by_member.get(tuple(base["member"]))
        if row is None:
            continue
        mine, theirs = row[split], base[split]
        out.append(
            {
                "member": list(base["member"]),
                "member_params": row["params"],
                "member_return": mine,
                "baseline_params": base["params"],
                "baseline_return": theirs,
                "ratio": mine / theirs if theirs else float("nan"),
                "within": mine >= theirs - within * abs(theirs),
            }
        )
    return out


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
