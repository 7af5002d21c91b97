"""Latency-saliency knapsack (HALP, Shen et al. 2022, §3.2; IEE appendix §4).

HALP keeps, for every layer l, the j most important channels, paying the latency
T^l(p^{l−1}, j); the marginal cost of its j-th channel is
R_j^l = T^l(p^{l−1}, j) − T^l(p^{l−1}, j − 1) (IEE appendix Eq. 1), and it maximises
total importance Σ I subject to Σ R ≤ Ψ. Because channels of a layer are taken in
importance order, each layer is one *multiple-choice* item: choose j ∈ [lo, n] with
value V(j) = Σ of the top-j importances and cost C(j) = Σ_{i≤j} R_i. This module
solves that multiple-choice knapsack exactly for integer (discretised) costs by
dynamic programming over the budget, one vectorised max-plus step per layer after
dropping dominated options (no cheaper-or-equal option with at least the value).
Costs are rounded *up* to bins, so a solution of the discretised problem never
exceeds the real budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np


@dataclass
class Item:
    """One layer/group: ``values[j]`` and ``costs[j]`` for keeping j = lo..n channels
    (index j − lo). Costs need not be monotone (measured latency is not)."""

    values: np.ndarray
    costs: np.ndarray
    lo: int = 0


def _pareto(costs: np.ndarray, values: np.ndarray):
    """Indices of non-dominated options, cheapest first (ties: fewer channels first)."""
    order = np.lexsort((np.arange(len(costs)), -values, costs))
    best = np.maximum.accumulate(values[order])
    prev = np.concatenate(([-np.inf], best[:-1]))
    return order[values[order] > prev]


def solve_int(items: Sequence[Item], budget: int) -> List[int]:
    """Exact multiple-choice knapsack for integer costs ≥ 0: the option count j per item
    maximising Σ values subject to Σ costs ≤ ``budget``. Raises ValueError if even the
    cheapest choice of every item is over budget."""
    if budget < 0:
        raise ValueError(f"knapsack budget must be ≥ 0, got {budget}")
    nb = int(budget) + 1
    dp = np.zeros(nb)  # best value with total cost ≤ b over the items so far
    feasible = np.ones(nb, dtype=bool)
    choices = []
    for it in items:
        costs = np.asarray(it.costs, dtype=np.int64)
        values = np.asarray(it.values, dtype=np.float64)
        if costs.min() < 0:
            raise ValueError("knapsack costs must be ≥ 0 after discretisation")
        keep = _pareto(costs, values)
        keep = keep[costs[keep] < nb]
        if len(keep) == 0:
            raise ValueError("knapsack infeasible: an item's cheapest option exceeds the budget")
        c, v = costs[keep], values[keep]
        # cand[o, b] = dp[b − c_o] + v_o (−inf where b < c_o), max over options o
        idx = np.arange(nb)[None, :] - c[:, None]
        ok = idx >= 0
        src = np.where(ok, idx, 0)
        cand = np.where(ok & feasible[src], dp[src] + v[:, None], -np.inf)
        arg = np.argmax(cand, axis=0)
        dp = cand[arg, np.arange(nb)]
        feasible = np.isfinite(dp)
        choices.append(keep[arg])
    if not feasible[-1]:
        raise ValueError(f"knapsack infeasible: the cheapest choice of every item costs more "
                         f"than the budget {budget}")
    # walk back: the option chosen at the remaining budget, item by item
    out = [0] * len(items)
    b = nb - 1
    for i in range(len(items) - 1, -1, -1):
        o = int(choices[i][b])
        out[i] = o + items[i].lo
        b -= int(np.asarray(items[i].costs)[o])
    return out


def solve(items: Sequence[Item], budget: float, bins: int = 1000) -> List[int]:
    """Multiple-choice knapsack for real costs: shift each item by its cheapest option,
    discretise the remaining budget into ``bins`` bins (costs rounded up) and solve
    exactly. Returns the chosen channel count per item."""
    if bins <= 0:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    mins = [float(np.min(it.costs)) for it in items]
    slack = budget - sum(mins)
    if slack < -1e-9 * max(1.0, abs(budget)):
        raise ValueError(f"knapsack infeasible: budget {budget:.6g} is below the cheapest "
                         f"structure's cost {sum(mins):.6g}")
    slack = max(slack, 0.0)
    unit = slack / bins if slack > 0 else 1.0
    int_items = []
    for it, m in zip(items, mins):
        rel = (np.asarray(it.costs, dtype=np.float64) - m) / unit
        # a tiny tolerance keeps float noise from pushing an exact fit into the next bin
        int_items.append(Item(it.values, np.ceil(rel - 1e-9).astype(np.int64), it.lo))
    return solve_int(int_items, bins if slack > 0 else 0)


def top_prefix_values(importance: np.ndarray) -> np.ndarray:
    """V(j) = sum of the j largest importances, j = 0..n."""
    s = np.sort(np.asarray(importance, dtype=np.float64))[::-1]
    return np.concatenate(([0.0], np.cumsum(s)))


def brute_force(items: Sequence[Item], budget: int) -> float:
    """Best total value by enumeration (tests and benchmarks only)."""
    import itertools

    best = -np.inf
    for combo in itertools.product(*[range(len(it.costs)) for it in items]):
        c = sum(int(it.costs[o]) for it, o in zip(items, combo))
        if c <= budget:
            best = max(best, sum(float(it.values[o]) for it, o in zip(items, combo)))
    return best
