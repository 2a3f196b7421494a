"""Quick start until the RL training scripts land: fit the conditioning ladder to a family of
functions ``y = sin(a * x + b)`` indexed by the context ``(a, b)``, then compare the heads on
training contexts and on held-out extrapolation contexts. Writes a table and a plot to
``runs/quickstart/``.

    python scripts/quickstart.py [--steps 800] [--out runs/quickstart]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import trange  # noqa: E402

from hyperrl import CONDITIONINGS, make_head  # noqa: E402

TRAIN_A = (0.5, 2.0)  # frequency range seen in training
EXTRAP_A = (2.0, 2.6)  # held out: higher frequencies


def sample(n: int, a_range: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a = torch.empty(n, 1).uniform_(*a_range)
    b = torch.empty(n, 1).uniform_(0.0, 3.0)
    x = torch.empty(n, 1).uniform_(-2.0, 2.0)
    return x, torch.cat([a, b], dim=1), torch.sin(a * x + b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    results = {}
    for name in CONDITIONINGS:
        head = make_head(name, in_dim=1, out_dim=1, context_dim=2, hidden_sizes=(32, 32))
        opt = torch.optim.Adam(head.parameters(), lr=3e-3)
        for _ in trange(args.steps, desc=f"{name:>13}", leave=False):
            x, ctx, y = sample(256, TRAIN_A)
            loss = (head(x, ctx) - y).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            results[name] = {
                split: (head(x, ctx) - y).square().mean().item()
                for split, (x, ctx, y) in {
                    "train": sample(4096, TRAIN_A),
                    "extrapolation": sample(4096, EXTRAP_A),
                }.items()
            } | {"params": sum(p.numel() for p in head.parameters())}
    print(f"{'head':>14} {'params':>8} {'train MSE':>10} {'extrap MSE':>11}")
    for name, r in results.items():
        print(f"{name:>14} {r['params']:>8} {r['train']:>10.4f} {r['extrapolation']:>11.4f}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(results)
    for i, split in enumerate(("train", "extrapolation")):
        ax.bar(
            [j + 0.4 * i for j in range(len(names))],
            [results[n][split] for n in names],
            0.4,
            label=split,
        )
    ax.set_xticks([j + 0.2 for j in range(len(names))], names)
    ax.set_yscale("log")
    ax.set_ylabel("MSE")
    ax.set_title("Conditioning ladder on y = sin(a x + b), context (a, b)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "ladder.png", dpi=120)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'ladder.png'}")


if __name__ == "__main__":
    main()
