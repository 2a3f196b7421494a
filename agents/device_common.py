"""What the on-device trainers (:mod:`agents.device_ppo`, :mod:`agents.device_sac`) share: the
SB3 container's stand-in env, data-parallel helpers for ``torch.distributed``, a progress bar."""

from __future__ import annotations

from collections.abc import Iterable

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


def distributed() -> bool:
    """Whether this process is one of several ``torch.distributed`` ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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


def average_gradients(module: torch.nn.Module) -> None:
    """All-reduce the gradients as one flat buffer and divide by the world size."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """All-reduce each tensor in place and divide by the world size."""
    for t in tensors:
        dist.all_reduce(t)
        t /= dist.get_world_size()


def progress(total: int):
    """A tqdm bar counting env steps."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", unit_scale=True, dynamic_ncols=True)
