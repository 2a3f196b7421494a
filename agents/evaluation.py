"""Evaluation of a run per context split: returns, JSON/CSV, a plot, and mp4 videos.

``evaluate_run`` plays ``episodes`` episodes on each split (train / interpolation /
extrapolation, or train / held_out for task suites) or on a grid over one or two context
features, and writes into ``out_dir`` (the run folder by default):

- ``eval.json`` (every episode: split, context, return, length, and for goal-reaching envs
  whether it ended on the goal; a per-split summary, with the success rate for those) and
  ``eval.csv`` (one row per episode);
- ``eval.png``: return against the first context feature, a series per split (a heat map for a
  two-feature grid);
- with ``video=True``, ``videos/<split>_<feature>=<value>_....mp4``, one episode per split (or
  per grid point, at most ``max_videos``), the context in the file name and on the frames.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

import envs
from agents.adaptation import CONTEXT_SOURCES, SingleEnvSource, load_adaptation
from agents.architecture import member_wrapper
from agents.run_config import load_run, spaces_of, statistics_dir
from agents.safe_pickle import load_vecnormalize


def _render_hint(err: Exception) -> ValueError:
    gl = os.environ.get("MUJOCO_GL", "<unset>")
    return ValueError(
        f"rendering failed ({type(err).__name__}: {err}). Headless machines need "
        f"MUJOCO_GL=egl (or osmesa) for MuJoCo envs (now {gl}) and SDL_VIDEODRIVER=dummy for "
        "classic control; EGL needs libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0"
    )


def play_episode(
    model,
    env: gym.Env,
    seed: int,
    options: dict | None,
    normalize,
    record: bool,
    source=None,
    after_step: Callable[[gym.Env], None] | None = None,
):
    """One deterministic episode -> ``(row, frames)``; ``source`` (a :class:`SingleEnvSource`)
    decides which context the policy reads (default: the observation's); ``after_step(env)`` is
    called after every step (``agents/posture.py`` reads the torso there)."""
    obs, info = env.reset(seed=seed, options=options)
    context = info.get("context", {})
    frames, total, length, done = [], 0.0, 0, False
    memory, start = None, np.ones(1, dtype=bool)  # a recurrent policy's (others return None)
    while not done:
        if record:
            try:
                frame = env.render()
            except Exception as err:  # noqa: BLE001 - any GL/SDL failure gets the same advice
                raise _render_hint(err) from None
            frames.append(caption(frame, _slug(context, sep="  ")))
        given = source.given(obs) if source is not None else obs
        action, memory = model.predict(
            normalize(given), state=memory, episode_start=start, deterministic=True
        )
        start = np.zeros(1, dtype=bool)
        next_obs, reward, terminated, truncated, info = env.step(action)
        total, length, done = total + float(reward), length + 1, terminated or truncated
        if after_step is not None:
            after_step(env)
        if source is not None:
            source.observe(obs, action, reward, next_obs, done)
        obs = next_obs
    row = {"context": context, "return": total, "length": length}
    if "is_success" in info:  # goal-reaching envs (Fetch): whether the episode ended on the goal
        row["success"] = bool(float(info["is_success"]) > 0)
    return row, frames


def caption(frame: np.ndarray, text: str) -> np.ndarray:
    """``frame (H, W, 3)`` with ``text`` written on a dark band along its top edge."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((4, 2), text)
    draw.rectangle((0, 0, min(right + 4, image.width), bottom + 2), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(image)


def obs_filter(run_dir: Path) -> Callable[[Any], Any]:
    """The observation normalisation saved in ``run_dir`` (``vecnormalize.pkl``; the identity
    when there is none): raw observation -> what the policy reads."""
    path = run_dir / "vecnormalize.pkl"
    if not path.is_file():
        return lambda obs: obs
    return load_vecnormalize(path).normalize_obs


def parse_context(items: Sequence[str]) -> dict[str, float]:
    """``["gravity=12", ...]`` (the ``--context`` flag) -> ``{"gravity": 12.0, ...}``.

    :raises ValueError: for an item that is not ``NAME=VALUE`` with a numeric value."""
    try:
        return {k: float(v) for k, v in (item.split("=", 1) for item in items)}
    except ValueError:
        raise ValueError(
            f"--context takes NAME=VALUE pairs with numeric values, got {list(items)}"
        ) from None


def _slug(context: dict[str, Any], sep: str = "_") -> str:
    """``gravity=9.81_mass_scale=1.2``: a context for a file name (or, with ``sep``, a caption)."""
    return sep.join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in context.items()
    )


def check_spaces(model: BaseAlgorithm, env: gym.Env, model_path: Path, env_id: str) -> None:
    """:raises ValueError: when ``model`` was not trained on ``env_id``'s observation and action
    spaces (a model file from another env's run), naming both."""
    theirs, ours = spaces_of(model), spaces_of(env)
    if theirs != ours:
        raise ValueError(
            f"{model_path} was trained on other spaces than its run's env {env_id} (model: "
            f"observations {theirs[0]}, actions {theirs[1]}; env: observations {ours[0]}, "
            f"actions {ours[1]}): it belongs to another env's run; evaluate it from its own run "
            "folder"
        )


def evaluate_run(
    run: str | Path,
    splits: Sequence[str] | None = None,
    episodes: int = 10,
    grid: int | None = None,
    grid_features: Sequence[str] | None = None,
    video: bool = False,
    max_videos: int = 6,
    out_dir: str | Path | None = None,
    seed: int = 10_000,
    pinned: dict[str, float] | None = None,
    context_source: str = "true",
    member: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder (or its ``model.zip``/``best_model.zip``); returns the summary.

    :param splits: which splits (default: all the env has); ignored with ``grid``.
    :param grid: points per feature of an evaluation grid over the features' bounds.
    :param grid_features: which features the grid spans (default: the first one).
    :param pinned: evaluate this one context (``"pinned"`` split) instead of splits or a grid.
    :param context_source: what the policy reads as its context: ``true`` (the env's),
        ``inferred`` (the run's adaptation module, from the episode so far) or ``nominal`` (the
        centre of the train range); other than ``true``, the files are
        ``eval_<source>.json/.csv/.png``.
    :param member: for a ``--policy architecture`` run, the member to act with (its hidden
        widths; default: the largest); the files are then ``eval_member_<w1>-<w2>...``.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"-n/--episodes must be a positive integer, got {episodes!r}")
    if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 2):
        raise ValueError(f"--grid must be an integer >= 2 (points per feature), got {grid!r}")
    if max_videos < 0:
        raise ValueError(f"--max-videos must be >= 0, got {max_videos}")
    if context_source not in CONTEXT_SOURCES:
        raise ValueError(
            f"unknown --context-source {context_source!r}; choose one of {CONTEXT_SOURCES}"
        )
    model, config, run_dir, model_path = load_run(run)
    if "history" in config.env_kwargs:
        raise ValueError(
            f"{run_dir} trained on history observations, which only its batched env makes; "
            f"evaluate it there: python scripts/evaluate_adaptation.py {run_dir}"
        )
    wrap, played = member_wrapper(config, member)
    module = load_adaptation(run_dir) if context_source == "inferred" else None
    env_id = envs.cpu_twin(config.env)  # a batched env is evaluated on its CPU twin
    env_kwargs = envs.twin_kwargs(config.env, config.env_kwargs)
    if video:
        env_kwargs["render_mode"] = "rgb_array"
    # a checkpoint's own statistics when it has them, else the run's
    stats_dir = statistics_dir(run_dir, model_path)
    normalize = obs_filter(stats_dir)
    out = Path(out_dir) if out_dir else run_dir
    (out / "videos" if video else out).mkdir(parents=True, exist_ok=True)

    jobs: list[tuple[str, dict | None]] = []  # (split label, pinned context)
    if pinned and env_id not in envs.ENVS:
        raise ValueError(f"{env_id} has no context features to pin; drop --context")
    if pinned:
        envs.context_space(env_id).validate(pinned)  # names the feature and its range
        jobs, split_list = [("pinned", dict(pinned))] * episodes, ["pinned"]
    elif grid:
        if env_id not in envs.ENVS:
            raise ValueError(f"--grid needs one of the package's contextual envs, not {env_id}")
        space = envs.context_space(env_id)
        names = list(grid_features or space.names[:1])
        unknown = [n for n in names if n not in space.names]
        if unknown or len(names) > 2:
            raise ValueError(
                f"--grid-features takes one or two of {env_id}'s features {space.names}, "
                f"got {names}"
            )
        for context in space.grid(grid, names):
            jobs += [("grid", context)] * episodes
        split_list = ["grid"]
    else:
        available = envs.splits_of(env_id)
        split_list = list(splits or available)
        bad = [s for s in split_list if s not in available]
        if bad:
            raise ValueError(f"{env_id} has splits {available}, not {bad}")
        jobs = [(s, None) for s in split_list for _ in range(episodes)]

    made: dict[str, gym.Env] = {}
    sources: dict[str, SingleEnvSource] = {}  # where the context is not the env's
    rows, recorded = [], {}
    for i, (split, pinned) in enumerate(jobs):
        if split not in made:
            by_split = split not in ("grid", "pinned") and len(envs.splits_of(env_id)) > 1
            kwargs = env_kwargs | ({"split": split} if by_split else {})
            made[split] = wrap(gym.make(env_id, **kwargs))
            check_spaces(model, made[split], model_path, env_id)
            if context_source != "true":
                sources[split] = SingleEnvSource(context_source, module, made[split])
        options = {"context": pinned} if pinned is not None else None
        key = split if pinned is None else _slug(pinned)
        record = video and key not in recorded and len(recorded) < max_videos
        row, frames = play_episode(
            model, made[split], seed + i, options, normalize, record, sources.get(split)
        )
        rows.append({"split": split, **row})
        if record:
            recorded[key] = frames
            _write_video(
                out / "videos" / f"{split}_{_slug(row['context'])}.mp4",
                frames,
                made[split].metadata.get("render_fps", 30),
            )
    summary = {}
    for s in split_list:
        mine = [r for r in rows if r["split"] == s]
        summary[s] = {
            "mean_return": float(np.mean([r["return"] for r in mine])),
            "std_return": float(np.std([r["return"] for r in mine])),
            "episodes": len(mine),
        }
        if mine and "success" in mine[0]:
            summary[s]["success_rate"] = float(np.mean([r["success"] for r in mine]))
    result = {
        "env": env_id,
        "model": str(model_path),
        "context_source": context_source,
        "summary": summary,
        "episodes": rows,
    }
    stem = "eval" if context_source == "true" else f"eval_{context_source}"
    if played is not None:  # an architecture run: the member that played
        result["member"] = list(played)
    if member is not None:
        stem += "_member_" + "-".join(map(str, member))
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    _write_csv(out / f"{stem}.csv", rows)
    _plot(out / f"{stem}.png", rows, env_id, grid_features if grid else None)
    return result


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v2 as imageio

    imageio.mimsave(path, frames, fps=fps, macro_block_size=1)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names = sorted({k for r in rows for k in r["context"]})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        success = ["success"] if rows and "success" in rows[0] else []
        writer.writerow(["split", *names, "return", "length", *success])
        for r in rows:
            writer.writerow(
                [r["split"], *(r["context"].get(n) for n in names), r["return"], r["length"]]
                + [r[k] for k in success]
            )


def _plot(path: Path, rows: list[dict[str, Any]], env_id: str, grid_features) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows[0]["context"]) if rows and rows[0]["context"] else []
    numeric = [n for n in names if isinstance(rows[0]["context"][n], int | float)]
    splits = list(dict.fromkeys(r["split"] for r in rows))
    if grid_features and len(grid_features) == 2:
        fig, ax = plt.subplots(figsize=(7, 4))
        a, b = grid_features
        xs, ys = sorted({r["context"][a] for r in rows}), sorted({r["context"][b] for r in rows})
        heat = np.zeros((len(ys), len(xs)))
        for j, y in enumerate(ys):
            for i, x in enumerate(xs):
                heat[j, i] = np.mean(
                    [r["return"] for r in rows if r["context"][a] == x and r["context"][b] == y]
                )
        im = ax.imshow(heat, origin="lower", aspect="auto", extent=(xs[0], xs[-1], ys[0], ys[-1]))
        fig.colorbar(im, label="mean return")
        ax.set_xlabel(a)
        ax.set_ylabel(b)
        axes = [ax]
    elif numeric:  # a panel per feature: a held-out context may differ in any one of them
        features = list(grid_features) if grid_features else numeric[:4]
        fig, axes = plt.subplots(
            1, len(features), figsize=(3.6 * len(features) + 1, 3.8), sharey=True, squeeze=False
        )
        axes = list(axes[0])
        for ax, feature in zip(axes, features, strict=True):
            for split in splits:
                pts = sorted(
                    (r["context"][feature], r["return"]) for r in rows if r["split"] == split
                )
                ax.plot(
                    *zip(*pts, strict=True),
                    "o-" if split == "grid" else "o",
                    label=split,
                    alpha=0.8,
                )
            ax.set_xlabel(feature)
        axes[0].set_ylabel("return")
        axes[-1].legend()
    else:  # categorical contexts (task suites): a bar per split
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(splits, [np.mean([r["return"] for r in rows if r["split"] == s]) for s in splits])
        ax.set_ylabel("mean return")
        axes = [ax]
    fig.suptitle(f"{env_id}: return against context")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
