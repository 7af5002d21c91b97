"""Knapsack speed and exactness on a ResNet-50 instance (issue 6 benchmark).

Every prunable channel group of torchvision ResNet-50 (224×224 input) is one
multiple-choice item (keep 1..n channels in importance order, random importances,
FLOPs costs C_g(j) from the cost graph), budget = 50% of the dense cost, 1000 bins.
Prints the median solve time over repeats and checks the optimum against an
independent straightforward DP over all options (no dominance pruning).

    .venv/bin/python benchmarks/bench_knapsack.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
import torchvision

import regrow
from regrow.knapsack import Item, solve, solve_int, top_prefix_values


def reference_value(items, budget: int) -> float:
    """Plain DP over every option of every item (no pruning of dominated options)."""
    dp = np.zeros(budget + 1)
    for it in items:
        new = np.full(budget + 1, -np.inf)
        for v, c in zip(it.values, it.costs):
            if c <= budget:
                shifted = np.full(budget + 1, -np.inf)
                shifted[c:] = dp[: budget + 1 - c] + v
                new = np.maximum(new, shifted)
        dp = new
    return float(dp[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bins", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--target", type=float, default=0.5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    meth = regrow.create("halp", model, None, input_shape=(3, 224, 224), cost="flops",
                         latency_target=args.target)
    rng = np.random.default_rng(0)
    counts = meth.counts()
    items = []
    for g in meth.groups:
        js = np.arange(1, g.size + 1)
        values = top_prefix_values(rng.random(g.size))[1:]
        items.append(Item(values, meth.graph.group_costs(meth.cost, counts, g.name, js), lo=1))
    budget = meth.budget - meth.graph.fixed_cost(meth.cost, counts)
    print(f"ResNet-50: {len(items)} groups, {sum(g.size for g in meth.groups)} channels, "
          f"options per group {min(len(i.costs) for i in items)}..{max(len(i.costs) for i in items)}, "
          f"{args.bins} bins")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        chosen = solve(items, budget, args.bins)
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"solve: median {statistics.median(times):.1f} ms (min {min(times):.1f}, max {max(times):.1f}) "
          f"over {args.repeats} repeats")
    # exactness on the same discretised instance
    mins = [float(np.min(it.costs)) for it in items]
    unit = (budget - sum(mins)) / args.bins
    ints = [Item(it.values, np.ceil((np.asarray(it.costs) - m) / unit - 1e-9).astype(np.int64), it.lo)
            for it, m in zip(items, mins)]
    got = sum(float(it.values[j - it.lo]) for it, j in zip(ints, solve_int(ints, args.bins)))
    t0 = time.perf_counter()
    ref = reference_value(ints, args.bins)
    print(f"optimum {got:.6f}, reference DP {ref:.6f} ({(time.perf_counter() - t0):.1f} s): "
          f"{'exact' if abs(got - ref) <= 1e-9 * max(1, abs(ref)) else 'MISMATCH'}")
    cost = sum(float(it.costs[j - it.lo]) for it, j in zip(items, chosen))
    print(f"chosen cost {cost:.2f} MMACs ≤ budget {budget:.2f}: {cost <= budget}; "
          f"channels kept {sum(chosen)} of {sum(g.size for g in meth.groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
