"""Running statistics on the device, for the batched trainers' observation and return
normalisation (SB3's ``RunningMeanStd`` and ``VecNormalize``, in torch)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from agents.batched.distributed import distributed


class RunningNorm:
    """Running mean and variance of ``(..., *shape)`` samples (parallel-variance update, as
    SB3's ``RunningMeanStd``), in float64 on ``device``."""

    def __init__(self, shape: tuple[int, ...], device: torch.device, epsilon: float = 1e-4) -> None:
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = torch.tensor(epsilon, dtype=torch.float64, device=device)
        #: when set, :meth:`update` keeps the statistics as they are (e.g. across the tasks of
        #: continual learning, so earlier tasks' observations keep their scale)
        self.frozen = False

    def update(self, x: torch.Tensor) -> None:
        """Fold in a batch (unless :attr:`frozen`); under ``torch.distributed``, the batches of
        every rank."""
        if self.frozen:
            return
        x = x.reshape(-1, *self.mean.shape).double()
        moments = torch.stack([torch.full_like(self.mean, x.shape[0]), x.sum(0), (x**2).sum(0)])
        if distributed():
            dist.all_reduce(moments)
        n, total_sum, total_sq = moments
        batch_mean = total_sum / n
        batch_var = (total_sq / n - batch_mean**2).clamp(min=0)
        n = n.reshape(-1)[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    def normalize(self, x: torch.Tensor, clip: float) -> torch.Tensor:
        """``(x - mean) / std`` clipped to ``[-clip, clip]``, in ``x``'s float32."""
        scaled = (x - self.mean.float()) / torch.sqrt(self.var.float() + 1e-8)
        return scaled.clamp(-clip, clip)
