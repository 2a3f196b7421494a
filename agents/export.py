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
from agents.architecture import member_wrapper
from agents.evaluation import check_spaces
from agents.run_config import load_run, statistics_dir
from agents.run_folder import atomic_save, write_text
from agents.safe_pickle import load_vecnormalize
from hyperrl.export import ExportedActor, InferredActor, actor_net, export_actor
from hyperrl.policies.architecture import ARCHITECTURE_KEY, ArchitectureActorCriticPolicy
from hyperrl.policies.recurrent import RecurrentActorCriticPolicy

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
    member: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Export the deterministic actor of ``run`` (a run folder or a model ``.zip`` in one) for
    ``context`` (feature -> raw value; features left out are nominal); returns ``export.json``.
    For a ``--policy architecture`` run, the actor of ``member`` (default: the largest), written
    as ``actor_member_<widths>.*``.

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
    wrap, _ = member_wrapper(config, member)
    env, vec, obs_filter = _env_and_statistics(model, config, run_dir, model_path, wrap)

    policy = model.policy
    if isinstance(policy, RecurrentActorCriticPolicy):
        raise ValueError(
            f"{model_path} has a recurrent policy: its actions depend on its memory, not on a "
            "context to pin, and a plain feed-forward network cannot hold it"
        )
    extractor = getattr(policy, "actor", policy).features_extractor
    if not hasattr(extractor, "context_keys"):
        raise ValueError(
            f"{model_path} has a {type(policy).__name__}, not one of hyperrl's policies: "
            "nothing to export (train with --policy hyper, lowrank_hyper, film or concat)"
        )
    seen = _observations(env, model, options, obs_filter, check_steps, seed=0)
    first = seen[0]
    if isinstance(policy, ArchitectureActorCriticPolicy):
        member = tuple(int(w) for w in first[ARCHITECTURE_KEY] if w > 0)
        keys = [k for k in extractor.context_keys if k != ARCHITECTURE_KEY]
    else:
        keys = list(extractor.context_keys)
    pinned_context = np.concatenate(
        [np.asarray(first[k], dtype=np.float32).reshape(-1) for k in keys]
    ) if keys else np.zeros(0, np.float32)  # fmt: skip
    normalisation = _normalisation(vec, extractor.obs_keys)
    if isinstance(policy, ArchitectureActorCriticPolicy):
        net = policy.member_actor(member, torch.as_tensor(pinned_context)).cpu()
        space = policy.action_space
        actor = ExportedActor(net, extractor.obs_keys, "clip", space.low, space.high,
                              *normalisation).requires_grad_(False).eval()  # fmt: skip
    else:
        actor = export_actor(policy, pinned_context, *normalisation)

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
    stem = "actor" if member is None else "actor_member_" + "-".join(map(str, member))
    written = _write(actor, (torch.as_tensor(flat[:1]),), ["obs"], out, stem, formats)

    summary = {
        "run": str(run_dir),
        "model": str(model_path),
        "env": env_id,
        "context": dict(context) if context else "nominal",
        **({"member": list(member)} if member is not None else {}),
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
    write_text(out / f"{stem.replace('actor', 'export', 1)}.json",
               json.dumps(summary, indent=2) + "\n")  # fmt: skip
    env.close()
    return summary


def _actor_params(policy: torch.nn.Module) -> int:
    """Parameters the deterministic action depends on: the extractor and the actor network."""
    if isinstance(policy, ArchitectureActorCriticPolicy):  # the generator of every member
        return sum(p.numel() for p in policy.action_net.parameters())
    net, _ = actor_net(policy)
    return sum(p.numel() for p in net.parameters())


def _timed(fn, repeats: int = 200) -> float:
    """Mean microseconds per call of ``fn`` (after 10 warm-up calls)."""
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return round((time.perf_counter() - start) / repeats * 1e6, 1)


def _latencies(policy, actor: ExportedActor, obs, obs_filter, flat, model):
    """Mean microseconds per batch-1 call: the full policy's ``predict`` and forward, the
    exported module."""
    x = torch.as_tensor(flat)
    obs_tensor, _ = policy.obs_to_tensor(obs_filter(obs))
    with torch.no_grad():
        return {
            "full_predict": _timed(lambda: model.predict(obs_filter(obs), deterministic=True)),
            "full_forward": _timed(lambda: policy._predict(obs_tensor, True)),
            "exported": _timed(lambda: actor(x)),
        }


def _env_and_statistics(
    model: Any, config: Any, run_dir: Path, model_path: Path, wrap=lambda env: env
):
    """``(env, VecNormalize or None, obs_filter)``: the run's CPU env (through ``wrap``),
    checked against the model, and the model file's observation statistics."""
    env_id = envs.cpu_twin(config.env)
    env = wrap(gym.make(env_id, **envs.twin_kwargs(config.env, config.env_kwargs)))
    check_spaces(model, env, model_path, env_id)
    path = statistics_dir(run_dir, model_path) / "vecnormalize.pkl"
    vec = load_vecnormalize(path) if path.is_file() else None
    return env, vec, (vec.normalize_obs if vec is not None else (lambda obs: obs))


def _normalisation(vec: Any, keys: Sequence[str]) -> tuple[Any, Any, float]:
    """``(mean, std, clip)`` of the observation keys ``keys`` under ``vec`` (a
    ``VecNormalize``), concatenated; ``(None, None, 10)`` without normalisation."""
    if vec is None or not vec.norm_obs:
        return None, None, 10.0
    mean = np.concatenate([np.asarray(vec.obs_rms[k].mean).reshape(-1) for k in keys])
    var = np.concatenate([np.asarray(vec.obs_rms[k].var).reshape(-1) for k in keys])
    return mean, np.sqrt(var + vec.epsilon), float(vec.clip_obs)


def _write(
    actor: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: list[str],
    out: Path,
    stem: str,
    formats: Sequence[str],
) -> list[str]:
    """``out/<stem>.pt``, ``.ts`` and ``.onnx`` (those in ``formats``), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "torch" in formats:
        atomic_save(out / f"{stem}.pt", lambda tmp: torch.save(actor, tmp))
        written.append(f"{stem}.pt")
    if "torchscript" in formats:
        with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript, which still works
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(actor, example)
            atomic_save(out / f"{stem}.ts", lambda tmp: torch.jit.save(scripted, str(tmp)))
        written.append(f"{stem}.ts")
    if "onnx" in formats:
        _write_onnx(actor, example, input_names, out / f"{stem}.onnx")
        written.append(f"{stem}.onnx")
    return written


def _write_onnx(
    actor: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str], path: Path
) -> None:
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
                example,
                str(tmp),
                input_names=input_names,
                output_names=["action"],
                dynamic_axes={name: {0: "batch"} for name in [*input_names, "action"]},
                dynamo=False,
            )

    atomic_save(path, write)


def export_inferred(
    run: str | Path,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    check_steps: int = 200,
) -> dict[str, Any]:
    """Export ``run``'s policy for unknown contexts: its adaptation module and actor network as
    one :class:`~hyperrl.export.InferredActor` (``actor_inferred.pt/.ts/.onnx`` and
    ``export_inferred.json`` in ``RUN/export``), checked first against the full policy reading
    the module's estimate (``evaluate.py --context-source inferred``) on a ``check_steps``-step
    rollout of the run's env.

    :raises ValueError: for a run without an adaptation module, a policy that cannot be
        exported, an unknown format, or an export whose actions differ from the policy's."""
    from agents.adaptation import CONTEXT_KEY, SingleEnvSource, load_adaptation

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format takes some of {list(FORMATS)}, got {list(formats)}")
    model, config, run_dir, model_path = load_run(run)
    module = load_adaptation(run_dir)
    env_id = envs.cpu_twin(config.env)
    env, vec, obs_filter = _env_and_statistics(model, config, run_dir, model_path)
    policy = model.policy
    extractor = getattr(policy, "actor", policy).features_extractor
    if list(getattr(extractor, "context_keys", [])) != [CONTEXT_KEY]:
        raise ValueError(
            f"{model_path}'s policy does not read the env's {CONTEXT_KEY!r} key as its context: "
            "nothing for an adaptation module to replace"
        )
    net, kind = actor_net(policy)
    space = policy.action_space
    low, high = (space.low, space.high) if isinstance(space, gym.spaces.Box) else (None, None)
    box = env.observation_space[CONTEXT_KEY]
    actor = InferredActor(
        net, module, box.low, box.high, extractor.obs_keys, kind, low, high,
        *_normalisation(vec, extractor.obs_keys),
    ).requires_grad_(False).eval()  # fmt: skip

    # parity: the full policy reading the module's estimate, step by step
    source = SingleEnvSource("inferred", module, env)
    history = source.estimator.history
    obs, _ = env.reset(seed=0)
    inputs, full = [], []
    for _ in range(check_steps):
        given = source.given(obs)
        action, _ = model.predict(obs_filter(given), deterministic=True)
        inputs.append((_flat(obs, actor.obs_keys), history.transitions[0].clone(),
                       history.valid[0].float()))  # fmt: skip
        full.append(np.asarray(action, dtype=np.float64).reshape(-1))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        source.observe(obs, action, reward, next_obs, terminated or truncated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    batch = (
        torch.as_tensor(np.stack([i[0] for i in inputs])),
        torch.stack([i[1] for i in inputs]),
        torch.stack([i[2] for i in inputs]),
    )
    with torch.no_grad():
        exported = actor(*batch).numpy().astype(np.float64).reshape(len(full), -1)
    expected = np.stack(full)
    gap = float(np.abs(exported - expected).max())
    if gap > 1e-4 * max(1.0, float(np.abs(expected).max())):
        raise ValueError(
            f"the exported actor's actions differ from the policy's by up to {gap:.3g}; "
            "nothing was written (please report this)"
        )
    out = Path(out_dir) if out_dir else run_dir / "export"
    example = tuple(t[:1] for t in batch)
    written = _write(actor, example, ["obs", "transitions", "valid"], out, "actor_inferred",
                     formats)  # fmt: skip
    summary = {
        "run": str(run_dir),
        "model": str(model_path),
        "env": env_id,
        "context": "inferred",
        "obs_keys": actor.obs_keys,
        "obs_dim": int(batch[0].shape[1]),
        "history": list(batch[1].shape[1:]),
        "transition": "oldest first; each [o, a, r, o'] with o and o' every observation key "
        "but the context, flattened, in sorted key order; a the action as the env applied it "
        "(clipped to the action space); r the reward; valid 1 where a slot holds a "
        "transition of the running episode, 0 (and the slot zeros) before it has that many",
        "action": actor.action,
        "max_action_gap": gap,
        "checked_steps": len(full),
        "params": {
            "full_policy_actor": _actor_params(policy),
            "exported": sum(p.numel() for p in actor.parameters()),
            "adaptation_module": sum(p.numel() for p in module.parameters()),
        },
        "latency_us_batch1": {
            "full_predict_with_estimate": _timed(
                lambda: model.predict(obs_filter(source.given(obs)), deterministic=True)
            ),
            "exported": _timed(lambda: actor(*example)),
        },
        "files": written,
    }
    write_text(out / "export_inferred.json", json.dumps(summary, indent=2) + "\n")
    env.close()
    return summary
