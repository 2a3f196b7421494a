"""The base of the batched trainers (:class:`~agents.batched.ppo.DevicePPO`,
:class:`~agents.batched.sac.DeviceSAC`), in the spirit of SB3's ``BaseAlgorithm`` and rsl_rl's
runner/algorithm split: :class:`BatchedTrainer` owns the SB3 container (the policy, its optimizers
and a checkpoint that ``PPO.load``/``SAC.load`` opens), the ``learn`` loop around an abstract
:meth:`~BatchedTrainer.iteration`, logging, the progress bar and the model file; a subclass keeps
its rollout and update. :class:`TrainerConfig` parses a trainer's hyperparameters.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import torch
import torch.distributed as dist
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from torch.distributions import Distribution

from agents.batched.distributed import distributed
from agents.run_folder import atomic_save
from envs.batched import BatchedContextualEnv, Obs

C = TypeVar("C", bound="TrainerConfig")


@dataclass
class TrainerConfig:
    """Base of a trainer's hyperparameters (a dataclass of SB3's names)."""

    #: how the trainer is called in errors
    trainer_name: ClassVar[str] = "trainer"
    #: on CUDA, run the networks' float32 matmuls on TF32 tensor cores (:func:`use_tf32`)
    tf32: bool = True
    #: check the action distributions' arguments (torch's ``validate_args``) while training:
    #: each check is a host sync on CUDA, so only when asked, to find where a NaN comes from
    check_distributions: bool = False

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """:raises ValueError: naming unknown keys and the valid ones."""
        valid = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(
                f"unknown {cls.trainer_name} keys {unknown}; valid keys are {sorted(valid)}"
            )
        return cls(**values)


class SpacesOnly(gym.Env):
    """Carries the spaces SB3 needs to build a policy; never stepped."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):  # pragma: no cover - never called
        raise RuntimeError("the device trainer steps its batched env, not this one")

    def step(self, action):  # pragma: no cover - never called
        raise RuntimeError("the device trainer steps its batched env, not this one")


class EpisodeStats:
    """Return and, for envs that report ``info["is_success"]`` (Fetch), success of the episodes
    that finish, summed on the device; :meth:`read` syncs once and starts over.

    :param num_envs: worlds of the batched env.
    :param device: where the sums live.
    """

    def __init__(self, num_envs: int, device: torch.device) -> None:
        self.running = torch.zeros(num_envs, device=device)  #: ``(N,)`` returns so far
        self._counted = torch.ones(num_envs, dtype=torch.bool, device=device)
        self._sums = torch.zeros(3, device=device)  # return sum, episodes, successes
        self._success = False

    def skip_current(self) -> None:
        """Leave every world's running episode out (episodes that did not start at step 0, e.g.
        after :meth:`~envs.batched.BatchedContextualEnv.stagger_episodes`)."""
        self._counted.zero_()

    def add(self, reward: torch.Tensor, done: torch.Tensor, info: Mapping[str, Any]) -> None:
        """Fold in one vector step: ``reward`` ``(N,)``, ``done`` ``(N,)`` bool."""
        self.running += reward
        finished = done & self._counted
        self._sums[0] += (self.running * finished).sum()
        self._sums[1] += finished.sum()
        if "is_success" in info:
            self._sums[2] += (info["is_success"] * finished).sum()
            self._success = True
        self.running *= ~done
        self._counted |= done

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "running": self.running,
            "counted": self._counted,
            "sums": self._sums,
            "success": torch.tensor(self._success),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.running.device
        self.running = state["running"].to(device)
        self._counted = state["counted"].to(device)
        self._sums = state["sums"].to(device)
        self._success = bool(state["success"])

    def read(self) -> dict[str, float]:
        """``rollout/ep_rew_mean`` (and ``rollout/success_rate``) of the episodes finished since
        the last read, on every rank under ``torch.distributed``; empty when none finished."""
        sums = self._sums.clone()
        self._sums.zero_()
        if distributed():
            dist.all_reduce(sums)
        total, episodes, successes = sums.tolist()
        if not episodes:
            return {}
        out = {"rollout/ep_rew_mean": total / episodes}
        if self._success:
            out["rollout/success_rate"] = successes / episodes
        return out


def use_tf32(device: torch.device, enabled: bool) -> None:
    """On a CUDA ``device``, let float32 matmuls run on TF32 tensor cores (10-bit mantissa;
    cuBLAS's fast path on Ampere and later, off in PyTorch by default). This is process-wide
    (``torch.backends.cuda.matmul.allow_tf32``) and reaches matmuls only: the envs' observations
    and rewards are elementwise torch and Warp kernels, untouched. Elsewhere it does nothing."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled


@contextlib.contextmanager
def distribution_checks(enabled: bool) -> Iterator[None]:
    """Within, torch distributions check their arguments by default iff ``enabled``
    (``Distribution.set_default_validate_args``, process-wide); the caller's setting is restored
    after."""
    before = Distribution._validate_args
    Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)


def progress(total: int):
    """A tqdm bar counting env steps."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", unit_scale=True, dynamic_ncols=True)


T = TypeVar("T", bound="BatchedTrainer")


class BatchedTrainer(ABC):
    """An RL algorithm on a batched env, its policy held by an SB3 algorithm object.

    :param env: the batched env (its ``device`` is where everything runs).
    :param config: the trainer's hyperparameters.
    :param seed: seeds torch (policy init, action sampling) and the env.

    A subclass builds :attr:`model` with :meth:`_make_model` and implements
    :meth:`iteration` (collect and update), :meth:`act` and :meth:`restore`; it may add files to
    :meth:`save` through :meth:`_save_state`.
    """

    #: the SB3 algorithm class that holds the policy and opens the checkpoints
    sb3_class: ClassVar[type[BaseAlgorithm]]
    #: the trainer's hyperparameters
    config_class: ClassVar[type[TrainerConfig]]

    def __init__(self, env: BatchedContextualEnv, config: TrainerConfig, seed: int) -> None:
        self.env, self.config, self.seed = env, config, seed
        torch.manual_seed(seed)
        use_tf32(env.device, config.tf32)
        self.num_timesteps = 0
        self.episodes = EpisodeStats(env.num_envs, env.device)
        self._obs: Obs | None = None
        self.rank, self.world_size = 0, 1
        #: set while an iteration runs: a save then (Ctrl-C, SIGTERM) may catch the env mid-step
        self._mid_iteration = False

    def _make_model(
        self,
        policy_class: type | str,
        policy_kwargs: dict[str, Any] | None,
        ignore_warnings: tuple[str, ...] = (),
        **sb3_kwargs: Any,
    ) -> None:
        """Build :attr:`model` (``sb3_class`` on the env's spaces, never stepped) and
        :attr:`policy`; ``ignore_warnings`` are SB3 warnings that do not apply to a batched run."""
        with warnings.catch_warnings():
            for message in ignore_warnings:
                warnings.filterwarnings("ignore", message)
            self.model = self.sb3_class(
                policy_class,
                SpacesOnly(self.env.observation_space, self.env.action_space),
                policy_kwargs=policy_kwargs or {},
                device=self.env.device,
                seed=self.seed,
                **sb3_kwargs,
            )
        self.policy = self.model.policy

    @abstractmethod
    def iteration(self, target: int) -> dict[str, float]:
        """Collect and update once, counting :attr:`num_timesteps` (over all ranks) towards
        ``target``; returns what to log (``rollout/*``, ``train/*``)."""

    @abstractmethod
    def act(self, obs: Obs, deterministic: bool = False) -> torch.Tensor:
        """``(N, *action_shape)`` env actions for raw observations (dict of ``(N, ...)``)."""

    def start_episodes(self) -> None:  # noqa: B027 - a hook, empty for most trainers
        """Before :meth:`act` is called on a new set of episodes: a policy with memory forgets
        what it acted on before (nothing to do for a feed-forward one)."""

    @abstractmethod
    def restore(self, run_dir: str | Path) -> None:
        """Continue from what :meth:`save` wrote into ``run_dir``."""

    def learn(
        self: T,
        total_timesteps: int,
        logger: Logger | None = None,
        callback: Callable[[T, dict[str, float]], bool | None] | None = None,
        progress_bar: bool = False,
    ) -> T:
        """Run :meth:`iteration` until ``total_timesteps`` env steps more.

        :param logger: an SB3 logger (TensorBoard): what each iteration returns and ``time/fps``,
            once per iteration (its host sync).
        :param callback: called after every iteration with the logged values; ``False`` stops.
        """
        with distribution_checks(self.config.check_distributions):
            return self._learn(total_timesteps, logger, callback, progress_bar)

    def _learn(
        self: T,
        total_timesteps: int,
        logger: Logger | None,
        callback: Callable[[T, dict[str, float]], bool | None] | None,
        progress_bar: bool,
    ) -> T:
        target = self.num_timesteps + total_timesteps
        bar = progress(total_timesteps) if progress_bar else None
        start, start_steps = time.perf_counter(), self.num_timesteps
        while self.num_timesteps < target:
            before = self.num_timesteps
            self._mid_iteration = True
            logged = self.iteration(target)
            self._mid_iteration = False  # not in a finally: an interrupted iteration stays marked
            fps = (self.num_timesteps - start_steps) / (time.perf_counter() - start)
            values = {**logged, "time/fps": fps}
            if logger is not None:
                for key, value in values.items():
                    logger.record(key, value)
                logger.dump(self.num_timesteps)
            if bar is not None:
                bar.update(self.num_timesteps - before)
            if callback is not None and callback(self, values) is False:
                break
        if bar is not None:
            bar.close()
        self.sync_model()
        return self

    def run_state(self) -> dict[str, Any] | None:
        """What continuing this run exactly needs beyond parameters, optimizer and statistics:
        the env's state (:meth:`~envs.batched.BatchedContextualEnv.state_dict`), the current
        observation, the episode sums and torch's random state. ``None`` where that cannot be
        captured: an env without :attr:`~envs.batched.BatchedContextualEnv.supports_state`
        (MuJoCo Warp, Fetch), several ``torch.distributed`` ranks (each has its own worlds), or
        an iteration that was interrupted (Ctrl-C, SIGTERM): the env may be half way through a
        step, and the steps of the unfinished rollout are not counted, so the worlds reset."""
        unsupported = not self.env.supports_state or self.world_size > 1
        if unsupported or self._obs is None or self._mid_iteration:
            return None
        return {
            "env": self.env.state_dict(),
            "obs": dict(self._obs),
            "episodes": self.episodes.state_dict(),
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(self.env.device)}
               if self.env.device.type == "cuda" else {}),
        }  # fmt: skip

    def load_run_state(self, state: dict[str, Any] | None) -> bool:
        """Continue from :meth:`run_state` (call it last: loading a model reseeds torch).
        Returns whether it did (``None``, or a state this env cannot take, leaves the env to
        reset at the next step)."""
        if state is None or not self.env.supports_state or self.world_size > 1:
            return False
        self.env.load_state_dict(state["env"])
        self._obs = {k: v.to(self.env.device) for k, v in state["obs"].items()}
        self.episodes.load_state_dict(state["episodes"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.env.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.env.device)
        return True

    def sync_model(self) -> None:
        """Copy the counters the SB3 container saves (``num_timesteps``) onto :attr:`model`."""
        self.model.num_timesteps = self.num_timesteps

    def save(self, run_dir: str | Path, cpu_env: gym.Env | None = None) -> None:
        """``model.zip`` (``sb3_class.load`` opens it) and the trainer's own files
        (:meth:`_save_state`; ``cpu_env`` is the CPU twin evaluation runs on), each atomically."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.sync_model()
        atomic_save(run_dir / "model.zip", self.model.save)
        self._save_state(run_dir, cpu_env)

    def _save_state(self, run_dir: Path, cpu_env: gym.Env | None) -> None:  # noqa: B027
        """Files beside ``model.zip`` that resuming needs (none by default)."""
