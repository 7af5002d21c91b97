"""The exact multiple-choice knapsack (regrow.knapsack) against hand results and brute force."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regrow.knapsack import Item, brute_force, solve, solve_int, top_prefix_values


def total(items, chosen, field):
    return sum(float(getattr(it, field)[j - it.lo]) for it, j in zip(items, chosen))


def test_golden_two_layers():
    # A: keep 0/1/2 channels for value 0/5/8 at cost 0/2/4; B: 0/4/8 at cost 0/1/3.
    a = Item(np.array([0.0, 5, 8]), np.array([0, 2, 4]))
    b = Item(np.array([0.0, 4, 8]), np.array([0, 1, 3]))
    assert solve_int([a, b], 4) == [1, 1]  # 9 at cost 3 beats A2 (8) and B2 (8)
    assert solve_int([a, b], 5) == [1, 2]  # 13 at cost 5 beats A2+B1 (12)
    assert solve_int([a, b], 0) == [0, 0]


def test_lower_bound_offsets_choices():
    it = Item(np.array([3.0, 5.0]), np.array([2, 3]), lo=1)  # j = 1 or 2
    assert solve_int([it], 2) == [1]
    assert solve_int([it], 3) == [2]


def test_prefix_values_sum_top_j():
    assert top_prefix_values(np.array([1.0, 3.0, 2.0])).tolist() == [0.0, 3.0, 5.0, 6.0]


def test_dominated_and_non_monotone_costs():
    # keeping 2 channels is cheaper than keeping 1 (a latency cliff): the solver must see it
    it = Item(np.array([0.0, 1.0, 2.0]), np.array([0, 5, 3]))
    other = Item(np.array([0.0, 10.0]), np.array([0, 2]))
    assert solve_int([it, other], 5) == [2, 1]


def test_infeasible_raises():
    with pytest.raises(ValueError, match="infeasible"):
        solve_int([Item(np.array([1.0]), np.array([5]), lo=1)], 4)
    with pytest.raises(ValueError, match="infeasible"):
        solve([Item(np.array([1.0]), np.array([5.0]), lo=1)], 4.0)
    with pytest.raises(ValueError, match="budget"):
        solve_int([Item(np.array([1.0]), np.array([0]))], -1)
    with pytest.raises(ValueError, match="bins"):
        solve([Item(np.array([1.0]), np.array([0.0]))], 1.0, bins=0)


items_st = st.lists(
    st.integers(1, 4).flatmap(lambda n: st.tuples(
        st.lists(st.floats(0, 10, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(0, 12), min_size=n, max_size=n),
        st.integers(0, 1),
    )),
    min_size=1, max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(items_st, st.integers(0, 30))
def test_exact_against_brute_force(raw, budget):
    items = [Item(np.array(v), np.array(c), lo) for v, c, lo in raw]
    best = brute_force(items, budget)
    if best == -np.inf:
        with pytest.raises(ValueError):
            solve_int(items, budget)
        return
    chosen = solve_int(items, budget)
    assert total(items, chosen, "costs") <= budget
    assert total(items, chosen, "values") == pytest.approx(best, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0.01, 5, allow_nan=False), min_size=2, max_size=6), min_size=1, max_size=5),
       st.floats(0.1, 1.0))
def test_real_costs_never_exceed_budget(raw, frac):
    items = []
    for r in raw:
        inc = np.concatenate(([0.0], np.cumsum(r)))
        items.append(Item(top_prefix_values(np.arange(len(r), dtype=float))[1:], inc[1:], lo=1))
    budget = sum(float(it.costs[0]) for it in items) + frac * sum(float(it.costs[-1] - it.costs[0]) for it in items)
    chosen = solve(items, budget, bins=50)
    assert total(items, chosen, "costs") <= budget + 1e-9
    assert all(it.lo <= j <= it.lo + len(it.costs) - 1 for it, j in zip(items, chosen))
