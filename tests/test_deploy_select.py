"""The per-layer choice (regrow.deploy.select): a pure function of injected timings."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from regrow.deploy.select import choose, time_alternating


def test_sparse_wins_only_where_measured_faster():
    t = {"dense": {1: 1.0, 128: 10.0}, "csr:mv": {1: 0.5}, "csr:ebag": {1: 2.0, 128: 3.0},
         "csr:spmm": {1: 3.0, 128: 4.0}}
    d = choose(t)
    assert d["format"] == "csr" and d["kernels"] == [(1, "mv"), (128, "ebag")]
    assert d["sparse_ms"] == {1: 0.5, 128: 3.0}


def test_slower_everywhere_stays_dense():
    t = {"dense": {1: 1.0, 128: 10.0}, "csr:mv": {1: 1.5}, "csr:ebag": {1: 2.0, 128: 12.0}}
    d = choose(t)
    assert d["format"] == "dense" and d["kernels"] == [] and d["best_sparse"] == "csr"


def test_dense_kernel_covers_the_batch_where_sparse_loses():
    t = {"dense": {1: 1.0, 128: 10.0}, "csr:mv": {1: 1.5}, "csr:ebag": {1: 2.0, 128: 2.0}}
    assert choose(t)["kernels"] == [(1, "dense"), (128, "ebag")]
    # without the dense kernel the mean ratio (1.5 + 0.2) / 2 < 1 still picks csr
    d = choose(t, dense_kernel=False)
    assert d["format"] == "csr" and d["kernels"] == [(1, "mv"), (128, "ebag")]
    # ... but a large enough loss at batch 1 keeps the plain dense layer
    t["csr:mv"] = {1: 3.0}
    t["csr:ebag"] = {1: 3.0, 128: 2.0}
    assert choose(t, dense_kernel=False)["format"] == "dense"


def test_best_format_by_mean_ratio_and_ties_keep_dense():
    t = {"dense": {8: 4.0}, "csr:spmm": {8: 2.0}, "bsr8:spmm": {8: 1.0}}
    assert choose(t)["format"] == "bsr8"
    assert choose({"dense": {8: 4.0}, "csr:spmm": {8: 4.0}})["format"] == "dense"


def test_bad_timings_are_clear_errors():
    with pytest.raises(ValueError, match="'dense'"):
        choose({"csr:mv": {1: 1.0}})
    with pytest.raises(ValueError, match="lacks timings at batch sizes \\[128\\]"):
        choose({"dense": {1: 1.0, 128: 2.0}, "csr:mv": {1: 0.5}})
    with pytest.raises(ValueError, match="batch 64, dense was not"):
        choose({"dense": {1: 1.0}, "csr:ebag": {1: 0.5, 64: 0.1}})


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from([1, 8, 128]), st.floats(0.01, 100), min_size=1),
       st.lists(st.floats(0.01, 100), min_size=3, max_size=3))
def test_chosen_layer_is_never_slower_than_dense_at_any_batch(dense, sparse):
    t = {"dense": dense, "csr:a": {b: sparse[i] for i, b in enumerate(dense)},
         "fanin:b": {b: sparse[-1 - i] for i, b in enumerate(dense)}}
    d = choose(t)
    if d["format"] == "dense":
        return
    for b, kernel in d["kernels"]:
        ms = dense[b] if kernel == "dense" else t[f"{d['format']}:{kernel}"][b]
        assert ms <= dense[b]


def test_time_alternating_returns_medians_per_function():
    calls = {"a": 0, "b": 0}

    def f(k):
        def g():
            calls[k] += 1
        return g

    t = time_alternating({"a": f("a"), "b": f("b")}, repeats=3, warmup=1, target_ms=0.01)
    assert set(t) == {"a", "b"} and all(v > 0 for v in t.values()) and calls["a"] >= 5
    with pytest.raises(ValueError, match="repeats"):
        time_alternating({"a": f("a")}, repeats=0)
