"""Time generated heads against a plain MLP head of the same shape.

For each generator (and the concat/FiLM rungs for reference) at several batch sizes and numbers of
distinct contexts in the batch, times forward and forward+backward (the generator included) and
prints the ratio to a plain MLP. The ``naive`` row generates one head per sample
(``dedup=False``), the path that grouping by context avoids.

``--given-groups`` adds, per generator, a row with the grouping handed to the head
(:meth:`~hyperrl.HyperHead.forward_grouped`: no deduplication, no host sync), and on CUDA one more
with that step captured in a CUDA graph, next to the MLP's step captured the same way: how much of
a row is deduplication, how much launching kernels one by one, and what is left.

    python scripts/bench_hypernet.py [--sizes 64 64 64 8] [--batches 64 512 4096]
        [--contexts 1 8 64] [--device cpu|cuda] [--threads 1] [--tf32] [--given-groups]
        [--generated] [--replay]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.utils import benchmark

from hyperrl import GENERATORS, make_head
from hyperrl.functional import grouping, unique_rows


def median_ms(fn: Callable[[], object], min_run_time: float) -> float:
    timer = benchmark.Timer("fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def measure(
    head: nn.Module, run: Callable[[], torch.Tensor], min_run_time: float
) -> tuple[float, float]:
    """Median milliseconds of ``(forward, forward+backward)`` of ``run`` (the head's output)."""

    def fwd() -> None:
        with torch.no_grad():
            run()

    def fwd_bwd() -> None:
        head.zero_grad(set_to_none=True)
        run().square().mean().backward()

    return median_ms(fwd, min_run_time), median_ms(fwd_bwd, min_run_time)


def graphed(
    head: nn.Module, run: Callable[[], torch.Tensor], min_run_time: float
) -> tuple[float, float]:
    """:func:`measure` with each step captured once in a CUDA graph and replayed (fixed inputs,
    gradients into fixed buffers): the kernels' time without the per-kernel launch cost."""
    times = []
    for backward in (False, True):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.set_grad_enabled(backward):
            for _ in range(3):  # warm-up on a side stream, as capture wants
                out = run().square().mean()
                if backward:
                    out.backward()
        torch.cuda.current_stream().wait_stream(stream)
        del out  # a live autograd graph from the warm-up would leak into the capture
        torch.cuda.synchronize()
        head.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.set_grad_enabled(backward):
            out = run().square().mean()
            if backward:
                out.backward()
        times.append(median_ms(graph.replay, min_run_time))
    return times[0], times[1]


def env_major_contexts(bank: torch.Tensor, batch: int) -> torch.Tensor:
    """``(batch, C)``: each of the ``U`` contexts of ``bank`` repeated for a contiguous run of
    samples, the way a rollout of ``U`` envs is laid out."""
    ctx = bank.repeat_interleave(batch // bank.shape[0], dim=0)
    return torch.cat([ctx, bank[: batch - ctx.shape[0]]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 64, 64, 8], help="in hidden.. out")
    p.add_argument("--context-dim", type=int, default=8)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 512, 4096])
    p.add_argument("--contexts", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--tf32", action="store_true", help="float32 matmuls on TF32 tensor cores (CUDA only)"
    )
    p.add_argument(
        "--given-groups",
        action="store_true",
        help="also each generator with its grouping given (and, on CUDA, in a CUDA graph)",
    )
    p.add_argument(
        "--generated",
        action="store_true",
        help="also per_layer and shared heads that always generate their weights, never apply "
        "them through the generator (HyperHead(contract=False))",
    )
    p.add_argument(
        "--replay",
        action="store_true",
        help="each sample's context drawn at random from the batch's, as in a replay minibatch "
        "(default: env-major runs, as in a rollout)",
    )
    p.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32  # what the device trainers do on CUDA
    torch.manual_seed(0)
    in_dim, *hidden, out_dim = args.sizes
    dev = torch.device(args.device)

    variants = [("mlp", "none", {}), ("concat", "concat", {}), ("film", "film", {})]
    variants += [(g, "hyper", {"generator": g}) for g in GENERATORS]
    if args.generated:
        variants += [
            (f"{g} generated", "hyper", {"generator": g, "contract": False})
            for g in ("per_layer", "shared")
        ]
    variants += [("naive per_layer", "hyper", {"generator": "per_layer", "dedup": False})]
    heads = {
        name: make_head(cond, in_dim, out_dim, args.context_dim, hidden, **kw).to(dev)
        for name, cond, kw in variants
    }
    print(
        f"device={dev} threads={args.threads} head={' -> '.join(map(str, args.sizes))} "
        f"context_dim={args.context_dim} tf32={args.tf32} torch={torch.__version__}"
    )
    counts = (f"{n} {sum(q.numel() for q in h.parameters()):,}" for n, h in heads.items())
    print("params: " + ", ".join(counts))
    header = f"{'head':>23} {'batch':>6} {'ctx':>5} {'fwd ms':>9} {'x mlp':>7} "
    header += f"{'fwd+bwd ms':>11} {'x mlp':>7}"
    print(header + "\n" + "-" * len(header))
    for batch in args.batches:
        for n_ctx in (c for c in args.contexts if c <= batch):
            x = torch.randn(batch, in_dim, device=dev)
            bank = torch.randn(n_ctx, args.context_dim, device=dev)
            if args.replay:
                ctx = bank[torch.randint(0, n_ctx, (batch,), device=dev)]
            else:
                ctx = env_major_contexts(bank, batch)
            rows = [(name, head, partial(head, x, ctx), measure) for name, head in heads.items()]
            if args.given_groups:
                unique, group = unique_rows(ctx)
                given = (x, unique, grouping(group, len(unique)))
                rows += [
                    (f"{g} given", heads[g], partial(heads[g].forward_grouped, *given), measure)
                    for g in GENERATORS
                ]
                if dev.type == "cuda":
                    rows += [
                        (f"{name} graphed", head, run, graphed)
                        for name, head, run, _ in rows
                        if name == "mlp" or name.endswith(" given")
                    ]
            base = None
            for name, head, run, how in rows:
                try:
                    fwd, fwd_bwd = how(head, run, args.min_run_time)
                except RuntimeError as e:  # a step that cannot be captured: say so, go on
                    print(f"{name:>23} {batch:>6} {n_ctx:>5} failed: {str(e).splitlines()[0]}")
                    continue
                base = base or (fwd, fwd_bwd)
                print(
                    f"{name:>23} {batch:>6} {n_ctx:>5} {fwd:>9.3f} {fwd / base[0]:>7.2f} "
                    f"{fwd_bwd:>11.3f} {fwd_bwd / base[1]:>7.2f}"
                )
        print()


if __name__ == "__main__":
    main()
