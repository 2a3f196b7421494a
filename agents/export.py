"""Export one context's policy of a run folder as a plain network (``scripts/export_policy.py``).

The context comes from the run's own env: reset with the pinned features (the others nominal),
the observation's context keys are what the policy reads. The run's observation normalisation is
folded into the exported module, which then takes raw observations. Before anything is written,
the exported module is checked against the full policy (``predict(deterministic=True)``) on
observations of that context; the files are ``actor.pt`` (the module, ``torch.load`` with
hyperrl installed), ``actor.ts`` (TorchScript: torch alone loads it), ``actor.onnx`` (needs the
``export`` extra) and ``export.json`` (what was exported and the parity measured).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import envs
from agents.evaluation import check_spaces
from agents.run_config import load_run
from agents.run_folder import atomic_save, write_text
from agents.safe_pickle import load_vecnormalize
from hyperrl.export import ExportedActor, export_actor

FORMATS = ("torch", "torchscript", "onnx")


def _flat(obs: Mapping[str, np.ndarray] | np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """``(obs_dim,)`` float32: the observation keys flattened and concatenated in order."""
    if not keys:
        return np.asarray(obs, dtype=np.float32).reshape(-1)
    return np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(-1) for k in keys])


def _observations(
    env: gym.Env, model: Any, options: dict | None, obs_filter, steps: int, seed: int
) -> list[Any]:
    """Observations of ``steps`` steps of the full policy in the pinned context."""
    obs, _ = env.reset(seed=seed, options=options)
    seen = []
    for _ in range(steps):
        seen.append(obs)
        action, _ = model.predict(obs_filter(obs), deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset(options=options)
    return seen


def export_run(
    run: str | Path,
    context: Mapping[str, float] | None = None,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    check_steps: int = 200,
) -> dict[str, Any]:
    """Export the deterministic actor of ``run`` (a run folder or a model ``.zip`` in one) for
    ``context`` (feature -> raw value; features left out are nominal); returns ``export.json``.

    :raises ValueError: for an unknown format, a context the env cannot take (unknown feature,
        out of bounds), a policy that cannot be exported, or an export whose actions differ from
        the full policy's.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format takes some of {list(FORMATS)}, got {list(formats)}")
    model, config, run_dir, model_path = load_run(run)
    env_id = envs.cpu_twin(config.env)
    options = None
    if context:
        if env_id not in envs.ENVS:
            raise ValueError(f"{env_id} has no context features to pin; drop --context")
        context = envs.context_space(env_id).validate(dict(context))
        options = {"context": context}
    env = gym.make(env_id, **envs.twin_kwargs(config.env, config.env_kwargs))
    check_spaces(model, env, model_path, env_id)
    stats_dir = model_path.parent if (model_path.parent / "vecnormalize.pkl").is_file() else run_dir
    vec = None
    if (stats_dir / "vecnormalize.pkl").is_file():
        vec = load_vecnormalize(stats_dir / "vecnormalize.pkl")
    obs_filter = vec.normalize_obs if vec is not None else (lambda obs: obs)

    policy = model.policy
    extractor = getattr(policy, "actor", policy).features_extractor
    if not hasattr(extractor, "context_keys"):
        raise ValueError(
            f"{model_path} has a {type(policy).__name__}, not one of hyperrl's policies: "
            "nothing to export (train with --policy hyper, lowrank_hyper, film or concat)"
        )
    seen = _observations(env, model, options, obs_filter, check_steps, seed=0)
    first = seen[0]
    pinned_context = np.concatenate(
        [np.asarray(first[k], dtype=np.float32).reshape(-1) for k in extractor.context_keys]
    )
    mean = std = None
    if vec is not None and vec.norm_obs:
        keys = extractor.obs_keys
        mean = np.concatenate([np.asarray(vec.obs_rms[k].mean).reshape(-1) for k in keys])
        var = np.concatenate([np.asarray(vec.obs_rms[k].var).reshape(-1) for k in keys])
        std = np.sqrt(var + vec.epsilon)
    actor = export_actor(
        policy, pinned_context, mean, std, vec.clip_obs if vec is not None else 10.0
    )

    # parity: the exported module against the full policy, on observations of this context
    flat = np.stack([_flat(o, actor.obs_keys) for o in seen])
    with torch.no_grad():
        exported = actor(torch.as_tensor(flat)).numpy()
    full = np.stack([model.predict(obs_filter(o), deterministic=True)[0] for o in seen])
    gap = float(np.abs(exported.astype(np.float64) - full.reshape(exported.shape)).max())
    if gap > 1e-4 * max(1.0, float(np.abs(full).max())):
        raise ValueError(
            f"the exported actor's actions differ from the policy's by up to {gap:.3g}; "
            "nothing was written (please report this)"
        )

    out = Path(out_dir) if out_dir else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    example = torch.as_tensor(flat[:1])
    written = []
    if "torch" in formats:
        atomic_save(out / "actor.pt", lambda tmp: torch.save(actor, tmp))
        written.append("actor.pt")
    if "torchscript" in formats:
        with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript, which still works
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.trace(actor, example)
            atomic_save(out / "actor.ts", lambda tmp: torch.jit.save(scripted, str(tmp)))
        written.append("actor.ts")
    if "onnx" in formats:
        _write_onnx(actor, example, out / "actor.onnx")
        written.append("actor.onnx")

    summary = {
        "run": str(run_dir),
        "model": str(model_path),
        "env": env_id,
        "context": dict(context) if context else "nominal",
        "policy_context": pinned_context.tolist(),
        "obs_keys": actor.obs_keys,
        "obs_dim": int(flat.shape[1]),
        "action": actor.action,
        "max_action_gap": gap,
        "checked_steps": len(seen),
        "params": {
            "full_policy_actor": _actor_params(policy),
            "exported": sum(p.numel() for p in actor.parameters()),
        },
        "latency_us_batch1": _latencies(policy, actor, first, obs_filter, flat[:1], model),
        "files": written,
    }
    write_text(out / "export.json", json.dumps(summary, indent=2) + "\n")
    env.close()
    return summary


def _actor_params(policy: torch.nn.Module) -> int:
    """Parameters the deterministic action depends on: the extractor and the actor network."""
    from hyperrl.export import actor_net

    net, _ = actor_net(policy)
    return sum(p.numel() for p in net.parameters())


def _latencies(policy, actor: ExportedActor, obs, obs_filter, flat, model, repeats: int = 200):
    """Mean microseconds per batch-1 call: the full policy's ``predict`` and forward, the
    exported module."""

    def timed(fn) -> float:
        for _ in range(10):
            fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats * 1e6

    x = torch.as_tensor(flat)
    obs_tensor, _ = policy.obs_to_tensor(obs_filter(obs))
    with torch.no_grad():
        return {
            "full_predict": round(timed(lambda: model.predict(obs_filter(obs), True)), 1),
            "full_forward": round(timed(lambda: policy._predict(obs_tensor, True)), 1),
            "exported": round(timed(lambda: actor(x)), 1),
        }


def _write_onnx(actor: ExportedActor, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise ValueError(
            "ONNX export needs the onnx package: pip install -e '.[export]' (or drop onnx from "
            "--format)"
        ) from None

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation
            torch.onnx.export(
                actor,
                (example,),
                str(tmp),
                input_names=["obs"],
                output_names=["action"],
                dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
                dynamo=False,
            )

    atomic_save(path, write)
