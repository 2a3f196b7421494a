"""What the on-device trainers (:mod:`agents.device_ppo`, :mod:`agents.device_sac`) share: the
SB3 container's stand-in env, episode statistics, data-parallel helpers for ``torch.distributed``,
a progress bar."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import gymnasium as gym
import torch
import torch.distributed as dist


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


def distributed() -> bool:
    """Whether this process is one of several ``torch.distributed`` ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def use_tf32(device: torch.device, enabled: bool) -> None:
    """On a CUDA ``device``, let float32 matmuls run on TF32 tensor cores (10-bit mantissa;
    cuBLAS's fast path on Ampere and later, off in PyTorch by default). This is process-wide
    (``torch.backends.cuda.matmul.allow_tf32``) and reaches matmuls only: the envs' observations
    and rewards are elementwise torch and Warp kernels, untouched. Elsewhere it does nothing."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled


def start_in_step(
    module: torch.nn.Module, seed: int, extra: Iterable[torch.Tensor] = ()
) -> tuple[int, int]:
    """``(rank, world size)``. Under ``torch.distributed`` every rank takes rank 0's parameters
    and buffers (and ``extra`` tensors), then reseeds torch with ``seed + rank`` so that each
    explores with its own noise."""
    if not distributed():
        return 0, 1
    for tensor in [*module.state_dict().values(), *extra]:
        dist.broadcast(tensor, 0)
    torch.manual_seed(seed + dist.get_rank())
    return dist.get_rank(), dist.get_world_size()


def average_gradients(params: torch.nn.Module | Iterable[torch.Tensor]) -> None:
    """All-reduce the gradients of a module's (or these) parameters as one flat buffer and divide
    by the world size."""
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def descend(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    params: Iterable[torch.Tensor],
    max_grad_norm: float | None = None,
) -> None:
    """One optimizer step on ``loss``: fresh gradients, averaged over the ranks under
    ``torch.distributed``, clipped to ``max_grad_norm`` when given."""
    params = list(params)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if distributed():
        average_gradients(params)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()


def progress(total: int):
    """A tqdm bar counting env steps."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", unit_scale=True, dynamic_ncols=True)
