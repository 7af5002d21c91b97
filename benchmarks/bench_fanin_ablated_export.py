"""Cost of storing a fan-in layer with ablated neurons (issue 13): one exported
``SparseLinear`` (kind ``fanin``) holding every neuron at k inputs, against the same budget
with a fraction of the neurons ablated (stored: only the alive ones, at q or q + 1 inputs,
outputs scattered back into place), and the dense layer, at batch 1 (``mv``) and a larger
batch (``ebag``, ``spmm``).

Random masks, one thread; the three are timed interleaved (chunks of ``--calls`` calls,
the order rotating every round), ``--rounds`` rounds; the fastest chunk (other processes
only ever add time on a shared CPU) and the median are printed per call.

    PYTHONPATH=src python benchmarks/bench_fanin_ablated_export.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from regrow.deploy.kernels import SparseLinear


def masked_weight(out: int, inn: int, k: int, alive: int, g: torch.Generator) -> torch.Tensor:
    """A weight holding k·out active entries over ``alive`` neurons (q or q + 1 each)."""
    q, r = divmod(k * out, alive)
    mask = torch.zeros(out, inn, dtype=torch.bool)
    for i in range(alive):
        mask[i, torch.randperm(inn, generator=g)[: q + (1 if i < r else 0)]] = True
    return torch.randn(out, inn, generator=g) * mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=int, default=1024)
    ap.add_argument("--in-features", type=int, default=1024)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--ablated", type=float, default=0.3, help="fraction of neurons ablated")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    out, inn = args.out, args.in_features
    k = max(1, round(args.density * inn))
    alive = out - int(args.ablated * out)
    bias = torch.randn(out, generator=g)
    layers = {"every neuron at k": SparseLinear.from_dense(masked_weight(out, inn, k, out, g), bias, "fanin", [(1, "mv")]),
              f"{args.ablated:.0%} ablated": SparseLinear.from_dense(masked_weight(out, inn, k, alive, g), bias, "fanin",
                                                                     [(1, "mv")])}
    dense = torch.randn(out, inn, generator=g)
    print(f"{out}x{inn}, k = {k} ({k * out} weights); ablated layer: {alive} alive neurons stored at "
          f"{layers[f'{args.ablated:.0%} ablated'].col.shape[1]} inputs; ms per call, fastest / median")
    print("| batch | kernel | dense | every neuron at k | ablated |")
    print("|---:|---|---:|---:|---:|")
    for rows, kernel in ((1, "mv"), (args.batch, "ebag"), (args.batch, "spmm")):
        x = torch.randn(rows, inn, generator=g)
        fns = {"dense": lambda: torch.nn.functional.linear(x, dense, bias),
               **{name: (lambda m=m: m.matmul(x, kernel)) for name, m in layers.items()}}
        times = {name: [] for name in fns}
        order = list(fns)
        for r in range(args.rounds):
            for name in order[r % len(order):] + order[: r % len(order)]:
                start = time.perf_counter()
                for _ in range(args.calls):
                    fns[name]()
                times[name].append((time.perf_counter() - start) / args.calls * 1e3)
        cells = [f"{min(v):.4f} / {statistics.median(v):.4f}" for v in times.values()]
        print(f"| {rows} | {kernel} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
