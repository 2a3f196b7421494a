"""Continual learning with hypernetworks (von Oswald et al., ICLR 2020): after each task, store
what the generators output for that task's contexts; while later tasks train, a penalty keeps
those outputs where they were, so the heads generated for earlier tasks stay as learned while the
generator is free everywhere else.

The package's generators read a context, so a task is a set of contexts (e.g. target velocities
in ``[0, 1]``) and its "task embedding" is the generator's own embedding of those contexts; the
penalty anchors the generated heads at a fixed sample of them (``probe`` contexts per task).
"""

from __future__ import annotations

import torch
from torch import nn

from hyperrl.conditioning import HyperHead


class OutputRegulariser:
    """``beta / K * sum_k sum_heads mean_c ||H(c) - H*(c)||^2`` over the ``K`` remembered tasks,
    ``c`` their probe contexts, ``H*`` the generator's output when the task was remembered.

    :param policy: holds the :class:`~hyperrl.conditioning.HyperHead` s to keep (actor and
        critic heads of a hyper policy).
    :param beta: the penalty's weight (0: plain sequential fine-tuning).
    :raises ValueError: for a policy without hypernetwork heads that read a context.
    """

    def __init__(self, policy: nn.Module, beta: float) -> None:
        self.heads = [
            m
            for m in policy.modules()
            if isinstance(m, HyperHead) and m.generator_input == "context"
        ]
        if not self.heads:
            raise ValueError(
                f"the output regulariser keeps generated heads, and this {type(policy).__name__} "
                "has none that a context generates: train with --policy hyper or lowrank_hyper"
            )
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)
        #: per remembered task: its probe contexts ``(P, C)`` and each head's outputs ``(P, n)``
        self.anchors: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    @torch.no_grad()
    def remember(self, contexts: torch.Tensor) -> None:
        """Store every head's generator output for ``contexts`` ``(P, C)`` (in the observation's
        scale) as one more task to keep."""
        contexts = contexts.detach().clone()
        self.anchors.append((contexts, [h.generator(contexts).clone() for h in self.heads]))

    def penalty(self) -> torch.Tensor:
        """The scalar penalty (0 before any task is remembered); its gradient reaches only the
        generators."""
        if not self.anchors or self.beta == 0:
            return torch.zeros((), device=next(self.heads[0].generator.parameters()).device)
        total = sum(
            (h.generator(contexts) - stored).square().sum(-1).mean()
            for contexts, outputs in self.anchors
            for h, stored in zip(self.heads, outputs, strict=True)
        )
        return self.beta * total / len(self.anchors)

    def drift(self) -> list[float]:
        """Per remembered task, the mean over heads and probes of ``||H(c) - H*(c)|| / ||H*(c)||``
        (how far the kept outputs moved)."""
        out = []
        with torch.no_grad():
            for contexts, outputs in self.anchors:
                ratios = [
                    ((h.generator(contexts) - stored).norm(dim=-1) / stored.norm(dim=-1)).mean()
                    for h, stored in zip(self.heads, outputs, strict=True)
                ]
                out.append(float(torch.stack(ratios).mean()))
        return out

    def state_dict(self) -> dict:
        return {"beta": self.beta, "anchors": [(c, list(o)) for c, o in self.anchors]}

    def load_state_dict(self, state: dict) -> None:
        """:raises ValueError: when the stored outputs do not fit these heads."""
        anchors = [(c, list(o)) for c, o in state["anchors"]]
        expected = [h.generator.target.num_params for h in self.heads]
        for _, outputs in anchors:
            widths = [o.shape[-1] for o in outputs]
            if widths != expected:
                raise ValueError(
                    f"the stored generator outputs have widths {widths}, this policy's heads "
                    f"generate {expected}: they come from another policy"
                )
        self.beta, self.anchors = float(state["beta"]), anchors
