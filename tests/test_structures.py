"""Structures: exact, deterministic top-k / prune / grow under unstructured and N:M."""
from __future__ import annotations

import math
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from hypothesis import given, settings, strategies as st

from regrow import structures
from regrow.structures import (
    NM, FanIn, Unstructured, bottomk_mask, global_grow, global_prune, global_topk, grow_highest,
    kth_smallest, make_structure, prune_lowest, topk_mask,
)

NAN, INF = float("nan"), float("inf")
VALUES = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, NAN, INF, -INF]),  # many ties
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@contextmanager
def prefilter(on: bool):
    """Force the sampled-threshold path onto tiny tensors (or keep the plain path)."""
    if not on:
        yield
        return
    with mock.patch.object(structures, "_PREFILTER_MIN", 4), mock.patch.object(structures, "_SAMPLE", 3):
        yield


def _key(v: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(v.double(), nan=-INF, posinf=INF, neginf=-INF)  # NaN ranks as -inf


def ref_topk(v: torch.Tensor, k: int) -> torch.Tensor:
    """Plain reference: stable descending sort, the first k (ties: lower index first)."""
    order = torch.sort(_key(v), descending=True, stable=True).indices[:k]
    out = torch.zeros(v.numel(), dtype=torch.bool)
    out[order] = True
    return out


def ref_bottomk(v: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(_key(v), stable=True).indices[:k]
    out = torch.zeros(v.numel(), dtype=torch.bool)
    out[order] = True
    return out


# ---- golden cases by hand ---------------------------------------------------------------
def test_topk_golden_with_ties_and_nan():
    s = torch.tensor([3.0, NAN, 5.0, 3.0, 1.0, 3.0, 5.0, -2.0])
    assert topk_mask(s, 3).tolist() == [True, False, True, False, False, False, True, False]
    assert topk_mask(s, 4).tolist() == [True, False, True, True, False, False, True, False]
    assert bottomk_mask(s, 2).tolist() == [False, True, False, False, False, False, False, True]
    assert bottomk_mask(s, 4).tolist() == [True, True, False, False, True, False, False, True]


def test_prune_and_grow_golden():
    s = torch.tensor([0.5, 0.1, 0.9, 0.1, 0.7, 0.3, 0.2, 0.8])
    m = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    # the two lowest active (0.1 at 1 and 3) go
    assert prune_lowest(s, m, 2).int().tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
    # the two highest inactive (0.8 at 7, 0.7 at 4) come
    assert grow_highest(s, m, 2).int().tolist() == [1, 1, 1, 1, 1, 0, 0, 1]
    # inactive entries never count for prune, active ones never for grow, even at +-inf
    s2 = torch.tensor([INF, 1.0, 2.0, 3.0, -INF, -INF, NAN, 0.0])
    assert prune_lowest(s2, m, 1).int().tolist() == [1, 0, 1, 1, 0, 0, 0, 0]
    assert grow_highest(s2, m, 3).int().tolist() == [1, 1, 1, 1, 1, 1, 0, 1]
    assert grow_highest(s2, m, 4).int().tolist() == [1] * 8
    assert torch.equal(prune_lowest(s, m, 0), m) and torch.equal(grow_highest(s, m, 0), m)


def test_nm_golden_blocks_along_input_dim():
    nm = NM(2, 4)
    # Linear [out=2, in=8]: two blocks per row
    s = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0],
                      [1.0, 1.0, 1.0, 1.0, 5.0, NAN, 6.0, -1.0]])
    m = nm.topk(s, 8)
    assert m.int().tolist() == [[1, 0, 1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0, 1, 0]]
    # Conv [out=1, in=4, 1, 2]: a block runs over the 4 input channels at one kernel position
    c = torch.tensor([[[[1.0, 9.0]], [[2.0, 8.0]], [[3.0, 7.0]], [[4.0, 6.0]]]])
    mc = nm.topk(c, 4)
    assert mc[0, :, 0, 0].int().tolist() == [0, 0, 1, 1]
    assert mc[0, :, 0, 1].int().tolist() == [1, 1, 0, 0]


def test_nm_grow_refills_each_block_even_with_nan_and_inf_scores():
    nm = NM(2, 4)
    mask = torch.tensor([[True, False, False, False, True, True, False, False]])
    scores = torch.tensor([[NAN, NAN, NAN, NAN, 1.0, 2.0, -INF, NAN]])
    new = nm.grow(scores, mask, 1)
    assert new.int().tolist() == [[1, 1, 0, 0, 1, 1, 0, 0]]


def test_nm_check_and_count():
    nm = NM(2, 4)
    assert nm.count((8, 16, 3, 3), 0.5) == 8 * 16 * 9 // 2
    with pytest.raises(ValueError, match="divisible by m=4"):
        nm.check("fc.weight", (8, 6))
    with pytest.raises(ValueError, match="Linear or Conv"):
        nm.check("bias", (8,))
    with pytest.raises(ValueError, match="0 < n <= m"):
        NM(5, 4)


def test_make_structure_errors_name_allowed_values():
    assert isinstance(make_structure("unstructured"), Unstructured)
    assert isinstance(make_structure("nm", 1, 4), NM)
    assert isinstance(make_structure("fanin"), FanIn)
    with pytest.raises(ValueError, match="unknown structure 'block'; allowed: fanin, nm, unstructured"):
        make_structure("block")


def test_large_tensor_prefilter_matches_reference_and_falls_back():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(200_000, generator=g)
    v[::7] = 0.25  # a big tie group right at a plausible threshold
    for k in (1, 1000, 50_000, 100_000, 150_000):
        assert torch.equal(topk_mask(v, k), ref_topk(v, k)), k
        assert torch.equal(bottomk_mask(v, k), ref_bottomk(v, k)), k
    # adversarial for a strided sample: the sampled entries are all the smallest
    w = torch.ones(100_000)
    w[:: max(1, 100_000 // structures._SAMPLE)] = -1.0
    assert torch.equal(topk_mask(w, 500), ref_topk(w, 500))
    # ... and all the largest: the threshold keeps fewer than k, so it ranks everything
    z = torch.zeros(100_000)
    z[:: max(1, 100_000 // structures._SAMPLE)] = 1.0
    z[1::3] = 0.5
    assert torch.equal(topk_mask(z, 10_000), ref_topk(z, 10_000))
    assert torch.equal(bottomk_mask(-z, 10_000), ref_bottomk(-z, 10_000))
    none = torch.zeros(100_000, dtype=torch.bool)
    exp = none.clone()
    exp[ref_topk(z, 10_000)] = True
    assert torch.equal(grow_highest(z, none, 10_000), exp)
    for mask, k in [(torch.rand(200_000, generator=g) < d, k) for d in (0.1, 0.8) for k in (1, 500, 5000)]:
        exp = mask.clone()
        exp[torch.nonzero(mask).squeeze(1)[ref_bottomk(v[mask], k)]] = False
        assert torch.equal(prune_lowest(v, mask, k), exp)
        exp = mask.clone()
        exp[torch.nonzero(~mask).squeeze(1)[ref_topk(v[~mask], k)]] = True
        assert torch.equal(grow_highest(v, mask, k), exp)


# ---- properties -------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(data=st.data(), vals=st.lists(st.one_of(st.sampled_from([0.0, 1.0, INF, -INF]), st.floats(width=32, allow_nan=False)),
                                     min_size=1, max_size=50),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_kth_smallest_equals_torch_kthvalue(data, vals, dtype):
    v = torch.tensor(vals, dtype=torch.float32).to(dtype)  # bfloat16: the torch fallback
    k = data.draw(st.integers(1, len(vals)))
    got = kth_smallest(v, k)
    assert isinstance(got, float)
    assert got == float(torch.kthvalue(v.float(), k).values)
    assert got == float(torch.sort(v.double()).values[k - 1])


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "prefilter"])
@settings(max_examples=60, deadline=None)
@given(data=st.data(), vals=st.lists(VALUES, min_size=1, max_size=40))
def test_topk_properties(fast, data, vals):
    v = torch.tensor(vals, dtype=torch.float32)
    k = data.draw(st.integers(0, len(vals)))
    with prefilter(fast):
        m = topk_mask(v, k)
        b = bottomk_mask(v, k)
    assert m.dtype == torch.bool and int(m.sum()) == k and int(b.sum()) == k
    key = _key(v)
    if 0 < k < len(vals):
        assert key[m].min() >= key[~m].max()  # chosen >= unchosen
        assert key[b].max() <= key[~b].min()
        if torch.isnan(v).any() and not torch.isnan(v).all() and (key[~torch.isnan(v)] > -INF).sum() >= k:
            assert not (m & torch.isnan(v)).any()  # NaN never preferred over a real score
    assert torch.equal(m, ref_topk(v, k))  # exact, ties by lowest index
    assert torch.equal(b, ref_bottomk(v, k))
    with prefilter(fast):
        assert torch.equal(topk_mask(v, k), m)  # deterministic


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "prefilter"])
@settings(max_examples=60, deadline=None)
@given(data=st.data(), vals=st.lists(VALUES, min_size=2, max_size=40))
def test_prune_grow_properties(fast, data, vals):
    v = torch.tensor(vals, dtype=torch.float32)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(vals), max_size=len(vals))))
    active = int(mask.sum())
    n_prune = data.draw(st.integers(0, active))
    n_grow = data.draw(st.integers(0, len(vals) - active))
    with prefilter(fast):
        p = prune_lowest(v, mask, n_prune)
        g = grow_highest(v, mask, n_grow)
    assert int(p.sum()) == active - n_prune and not (p & ~mask).any()
    assert int(g.sum()) == active + n_grow and not (mask & ~g).any()
    idx_a, idx_i = torch.nonzero(mask).squeeze(1), torch.nonzero(~mask).squeeze(1)
    exp_p = mask.clone()
    exp_p[idx_a[ref_bottomk(v[mask], n_prune)]] = False
    exp_g = mask.clone()
    exp_g[idx_i[ref_topk(v[~mask], n_grow)]] = True
    assert torch.equal(p, exp_p) and torch.equal(g, exp_g)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), rows=st.integers(1, 3), blocks=st.integers(1, 3), kernel=st.integers(1, 2),
       n=st.integers(1, 4))
def test_nm_properties(data, rows, blocks, kernel, n):
    nm = NM(n, 4)
    shape = (rows, 4 * blocks, kernel)
    numel = math.prod(shape)
    s = torch.tensor(data.draw(st.lists(VALUES, min_size=numel, max_size=numel)), dtype=torch.float32).view(shape)
    k = nm.count(shape, n / 4)
    m = nm.topk(s, k)
    per_block = m.movedim(1, -1).reshape(-1, 4).sum(1)
    assert torch.all(per_block == n) and int(m.sum()) == k
    # within each block the kept scores beat the dropped ones (NaN lowest)
    kb, sb = m.movedim(1, -1).reshape(-1, 4), _key(s).movedim(1, -1).reshape(-1, 4)
    for row_m, row_s in zip(kb, sb):
        if 0 < n < 4:
            assert row_s[row_m].min() >= row_s[~row_m].max()
        assert torch.equal(row_m, ref_topk(row_s, n))
    # prune some, grow back: every block holds n again, exactly as many grown as pruned
    drop = data.draw(st.integers(0, k))
    pruned = nm.prune(s, m, drop)
    assert int(pruned.sum()) == k - drop
    regrown = nm.grow(-s, pruned, drop)
    assert torch.all(regrown.movedim(1, -1).reshape(-1, 4).sum(1) == n)
    assert not (pruned & ~regrown).any()


def test_global_selection_ranks_across_tensors():
    a = torch.tensor([0.1, 0.9, 0.5, 0.5])
    b = torch.tensor([[0.5, 0.8], [0.2, 0.0]])
    top = global_topk({"a": a, "b": b}, 4)
    assert top["a"].int().tolist() == [0, 1, 1, 1] and top["b"].int().tolist() == [[0, 1], [0, 0]]
    masks = {"a": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "b": torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)}
    pr = global_prune({"a": a, "b": b}, masks, 2)
    assert pr["a"].int().tolist() == [0, 1, 0, 0] and pr["b"].int().tolist() == [[0, 1], [0, 0]]
    gr = global_grow({"a": a, "b": b}, pr, 2)
    assert gr["a"].int().tolist() == [0, 1, 1, 1] and gr["b"].int().tolist() == [[0, 1], [0, 0]]


# ---- constant fan-in (SRigL) -------------------------------------------------------------
def test_fanin_counts_are_k_per_output_neuron():
    f = FanIn()
    assert f.count((8, 16, 3, 3), 0.1) == 8 * 14   # round(0.1 * 144) = 14 per neuron
    assert f.count((10, 3), 0.01) == 10             # at least one input per neuron
    assert f.round_count((10, 30), 47) == 50        # 4.7 per neuron -> 5
    assert f.round_count((10, 30), 10_000) == 300   # capped at the fan-in
    with pytest.raises(ValueError, match="Linear or Conv"):
        f.check("bias", (8,))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(2, 12), data=st.data())
def test_fanin_topk_prune_grow_keep_k_per_row(rows, cols, data):
    f = FanIn()
    k = data.draw(st.integers(1, cols))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 10_000)))
    scores = torch.randn(rows, cols, generator=g)
    scores[0, 0] = float("nan")
    mask = f.topk(scores, k * rows)
    assert torch.all(mask.sum(1) == k)
    # the k best of each row (NaN lowest)
    clean = torch.nan_to_num(scores, nan=float("-inf"))
    kept_min = torch.where(mask, clean, torch.tensor(float("inf"))).min(1).values
    dropped_max = torch.where(mask, torch.tensor(float("-inf")), clean).max(1).values
    assert torch.all(kept_min >= dropped_max)
    n = data.draw(st.integers(0, k * rows))
    pruned = f.prune(torch.rand(rows, cols, generator=g), mask, n)
    assert int(pruned.sum()) == k * rows - n and not torch.any(pruned & ~mask)
    regrown = f.grow(torch.randn(rows, cols, generator=g), pruned, n)
    assert torch.all(regrown.sum(1) == k) and torch.all(regrown | ~pruned)


def test_fanin_grow_takes_each_rows_best_inactive():
    f = FanIn()
    mask = torch.tensor([[True, False, False, False], [False, False, False, False]])
    scores = torch.tensor([[9.0, 1.0, 3.0, 2.0], [0.0, 5.0, 5.0, 1.0]])
    new = f.grow(scores, mask, 3)
    assert new.tolist() == [[True, False, True, False], [False, True, True, False]]


# ---- fan-in with SRigL's neuron ablation (worked out by hand) ------------------------------
def _b(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_fanin_ablation_golden_ablates_the_neuron_without_salient_weights():
    # 4 neurons × 4 inputs, k = 2 (budget 8), 3 weights just pruned (5 kept)
    f = FanIn(ablation=True, gamma_sal=0.5)          # threshold max(1, ⌊0.5·2⌋) = 1
    kept = _b([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    scores = torch.tensor([[0, 0, 9, 1], [0, 8, 0, 0], [0.5, 0.2, 0.1, 0], [0, 0, 7, 2.0]])
    # unconstrained growth of 3 picks 9, 8, 7: salient counts [3, 2, 0, 3] -> neuron 2 goes;
    # 8 over 3 alive neurons: q = 2, r = 2, the two most salient (0 and 3) get 3
    new = f.grow(scores, kept, 3)
    assert new.int().tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]]
    # without ablation (or for a layer that must keep its neurons) every neuron refills to 2
    plain = [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert FanIn().grow(scores, kept, 3).int().tolist() == plain
    assert f.grow(scores, kept, 3, ablate=False).int().tolist() == plain


def test_fanin_ablation_golden_keeps_enough_neurons_for_the_budget():
    # 4 neurons × 3 inputs, k = 2 (budget 8): at least ⌈8/3⌉ = 3 neurons must stay
    f = FanIn(ablation=True, gamma_sal=1.0)          # threshold ⌊1·2⌋ = 2
    kept = _b([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = torch.tensor([[0, 0, 9.0], [0, 0, 8], [0, 0, 0], [7, 0, 0]])
    # salient [3, 3, 1, 1]: neurons 2 and 3 are below 2, one may go: the lower index
    # (least salient first, ties: lower index, as prune); 8 over 3: q = 2, r = 2 -> 0, 1 get 3
    new = f.grow(scores, kept, 3)
    assert new.int().tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]]
    assert f.ablated(_b([[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 0, 0]]), 8).tolist() == [False, False, True, False]


def test_fanin_ablation_golden_revives_and_trims_by_the_keep_scores():
    # 3 neurons × 4 inputs, k = 2 (budget 6); neuron 2 was ablated at the last update, so
    # neuron 0 holds 3; one weight of neuron 1 was just pruned
    f = FanIn(ablation=True, gamma_sal=0.5)
    kept = _b([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    grow = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [9, 0, 4, 0.0]])
    keep = torch.tensor([[0.1, 5, 3, 0], [1, 1, 0, 0], [0, 0, 0, 0.0]])
    # growth of 1 picks neuron 2's 9: salient [3, 2, 1], none below 1 -> all alive, q = 2:
    # neuron 0 keeps its 2 best by the keep scores, neuron 2 revives with its 2 best
    new = f.grow(grow, kept, 1, keep_scores=keep)
    assert new.int().tolist() == [[0, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0]]


def test_fanin_ablation_row_targets_sum_to_the_budget():
    counts = torch.tensor([5, 1, 7, 7, 3])
    ablated = torch.tensor([False, True, False, False, False])
    # 10 over 4 alive: q = 2, r = 2 -> the two most salient (2 and 3, tie: lower index first)
    assert FanIn.row_targets(counts, ablated, 10).tolist() == [2, 0, 3, 3, 2]
    assert FanIn.row_targets(counts, ablated, 8).tolist() == [2, 0, 2, 2, 2]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(2, 12), gamma=st.sampled_from([0.1, 0.3, 0.6, 1.0]), data=st.data())
def test_fanin_ablation_keeps_the_budget_and_near_constant_fan_in(rows, cols, gamma, data):
    f = FanIn(ablation=True, gamma_sal=gamma)
    k = data.draw(st.integers(1, cols))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 10_000)))
    mask = f.topk(torch.randn(rows, cols, generator=g), k * rows)
    for _ in range(3):   # several updates: ablated neurons stay empty or revive
        n = data.draw(st.integers(0, int(mask.sum())))
        pruned = f.prune(torch.rand(rows, cols, generator=g), mask, n)
        grow = torch.randn(rows, cols, generator=g)
        grow[0, 0] = float("nan")
        mask = f.grow(grow, pruned, n, keep_scores=torch.rand(rows, cols, generator=g))
        per = mask.sum(1)
        alive = per[per > 0]
        assert int(per.sum()) == k * rows
        assert int(alive.max()) - int(alive.min()) <= 1 and int(alive.max()) <= cols
        assert alive.numel() >= -(-k * rows // cols)


def test_fanin_ablation_options_are_checked():
    assert make_structure("fanin", ablation=True, gamma_sal=0.3).ablation
    for bad in (0, 1.5, -0.1, True, "0.3"):
        with pytest.raises(ValueError, match="gamma_sal"):
            FanIn(ablation=True, gamma_sal=bad)
    with pytest.raises(ValueError, match="neuron_ablation must be true or false"):
        FanIn(ablation="yes")
