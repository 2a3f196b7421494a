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
    for key in ("n_timesteps", "n_envs"):
        if key in config and (not isinstance(config[key], int | float) or config[key] < 1):
            raise ValueError(f"config key {key!r} must be a positive number, got {config[key]!r}")
    return config
