"""Training configs: YAML presets in ``configs/``, ``key:value`` overrides, validation.

A preset file holds one section per env id, and in it one per algorithm::

    hyperrl/ContextualCartPole-v0:
      ppo:
        n_timesteps: 100000
        n_envs: 8
        policy_kwargs: {net_arch: [64], head_arch: [64]}

Keys are the algorithm's constructor keywords plus :data:`META_KEYS`. Unknown keys are rejected
with the list of valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.algos import close_matches

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

#: keys that are not algorithm keywords: what train_agent.py itself reads
META_KEYS = {
    "n_timesteps": "total environment steps",
    "n_envs": "parallel envs",
    "policy": "hyper | lowrank_hyper | film | concat | none | mlp",
    "normalize": "VecNormalize observations (not the context) and rewards",
    "env_kwargs": "keywords for gym.make",
    "policy_kwargs": "keywords for the policy class",
}
_MERGED = ("policy_kwargs", "env_kwargs", "replay_buffer_kwargs")
_SET_BY_TRAINER = {
    "self",
    "policy",
    "env",
    "tensorboard_log",
    "verbose",
    "seed",
    "device",
    "_init_setup_model",
}


def valid_keys(algo: type[BaseAlgorithm]) -> list[str]:
    params = inspect.signature(algo.__init__).parameters
    return sorted((set(params) - _SET_BY_TRAINER) | set(META_KEYS))


def load_preset(env_id: str, algo: str, conf_file: str | Path | None = None) -> dict[str, Any]:
    """The preset for ``env_id`` and ``algo`` from ``conf_file``, or from the first file in
    ``configs/`` that has one; ``{}`` when none does."""
    files = [Path(conf_file)] if conf_file else sorted(CONFIG_DIR.glob("*.yml"))
    for path in files:
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must map env ids to sections, got {type(data)}")
        section = (data.get(env_id) or {}).get(algo)
        if section is not None:
            if not isinstance(section, dict):
                raise ValueError(f"{path}: {env_id}/{algo} must be a mapping of keys to values")
            return dict(section)
    return {}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["learning_rate:0.001", "policy_kwargs:{head_arch: [32]}"]`` -> a dict (values parsed as
    YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ValueError(f"--hyperparams takes key:value pairs, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(
                f"--hyperparams {item!r}: the value is not valid YAML: {err}"
            ) from None
    return out


def resolve(
    env_id: str,
    algo_name: str,
    algo: type[BaseAlgorithm],
    conf_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Preset merged with overrides (``policy_kwargs``, ``env_kwargs`` and
    ``replay_buffer_kwargs`` merge key by key), validated.

    :raises ValueError: naming an unknown key, its close match, and the valid keys.
    """
    config = load_preset(env_id, algo_name, conf_file)
    for key, value in (overrides or {}).items():
        if key in _MERGED and isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = config[key] | value  # override single policy/env keywords
        else:
            config[key] = value
    valid = valid_keys(algo)
    for key in config:
        if key not in valid:
            raise ValueError(
                f"unknown config key {key!r}{close_matches(key, valid)} for {algo.__name__}; "
                f"valid keys: {', '.join(valid)}"
            )
    for key, value in config.items():
        check_value(key, value)
    return config


#: config keys with a numeric range: key -> (kind, low, high, low inclusive); ``int`` keys take
#: whole numbers only. Keys not listed are checked by the algorithm itself.
RANGES: dict[str, tuple[type, float, float, bool]] = {
    "n_timesteps": (int, 1, float("inf"), True),
    "n_envs": (int, 1, float("inf"), True),
    "n_steps": (int, 1, float("inf"), True),
    "batch_size": (int, 1, float("inf"), True),
    "n_epochs": (int, 1, float("inf"), True),
    "n_minibatches": (int, 1, float("inf"), True),
    "buffer_size": (int, 1, float("inf"), True),
    "learning_starts": (int, 0, float("inf"), True),
    "n_sampled_goal": (int, 1, float("inf"), True),
    "gamma": (float, 0.0, 1.0, True),
    "gae_lambda": (float, 0.0, 1.0, True),
    "tau": (float, 0.0, 1.0, False),
    "clip_range": (float, 0.0, float("inf"), False),
    "max_grad_norm": (float, 0.0, float("inf"), False),
    "vf_coef": (float, 0.0, float("inf"), True),
}


def check_value(key: str, value: Any) -> None:
    """:raises ValueError: when a config value has the wrong type or is out of its range
    (:data:`RANGES`), or a ``*_kwargs`` key is not a mapping; the message names the key."""
    if key in _MERGED and value is not None and not isinstance(value, dict):
        raise ValueError(
            f"config key {key!r} must be a mapping such as '{key}:{{net_arch: [64]}}', "
            f"got {value!r}"
        )
    if key == "learning_rate" and not (_is_number(value) and value > 0):
        raise ValueError(f"config key 'learning_rate' must be a positive number, got {value!r}")
    if key not in RANGES:
        return
    kind, low, high, low_inclusive = RANGES[key]
    whole = not isinstance(value, float) or value.is_integer()
    if not _is_number(value) or (kind is int and not whole):
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"config key {key!r} must be {what}, got {value!r}")
    if value < low or (value == low and not low_inclusive) or value > high:
        if high == float("inf") and low_inclusive and low in (0, 1):
            sign = "positive" if low == 1 else "non-negative"
            what = f"a {sign} {'whole number' if kind is int else 'number'}"
        elif high == float("inf"):
            what = f"a number above {low:g}" if not low_inclusive else f"at least {low:g}"
        else:
            what = f"in {'[' if low_inclusive else '('}{low:g}, {high:g}]"
        raise ValueError(f"config key {key!r} must be {what}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
