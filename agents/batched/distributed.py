"""Data parallelism for the batched trainers under ``torchrun``: every rank steps its own worlds,
starts from rank 0's parameters and averages every gradient, so the ranks stay in step."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist


def distributed() -> bool:
    """Whether this process is one of several ``torch.distributed`` ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def distributed_session(device: str) -> Iterator[tuple[int, str]]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (NCCL on GPUs, gloo on the
    CPU) for the ``with`` block and yield ``(rank, this rank's device)``; otherwise
    ``(0, device)``. A group joined here is left together (a barrier after a normal exit) and
    destroyed on the way out: rank 1 exiting while rank 0 still saved, with the group alive,
    aborted about one run in five (``terminate called without an active exception``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield 0, device
        return
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield dist.get_rank(), device
        if joined:  # leave together: rank 0 still saves after the others' last collective
            dist.barrier()
    finally:
        if joined:
            dist.destroy_process_group()


def same_on_every_rank(path: Path) -> Path:
    """Rank 0's ``path`` on every rank (a new run folder's name depends on what exists)."""
    if not (dist.is_available() and dist.is_initialized()):
        return path
    box = [str(path)]
    dist.broadcast_object_list(box, 0)
    return Path(box[0])


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
