"""Mask IoU, survival rate, exploration degree and new-growth fraction on hand-made mask sequences."""
import pytest
import torch

from regrow import metrics
from regrow.state import SparseState


def _m(*bits):
    return {"w": torch.tensor(bits, dtype=torch.bool)}


def _state(mask):
    s = SparseState(masks={k: v.clone() for k, v in mask.items()}, targets={"w": int(mask["w"].sum())})
    metrics.start_tracking(s)
    return s


def test_two_updates_by_hand():
    init = _m(1, 1, 1, 1, 0, 0, 0, 0)
    s = _state(init)
    # update 1: prune {2, 3}, grow {4, 5}
    u1 = metrics.record_update(s, init, _m(1, 1, 0, 0, 0, 0, 0, 0), _m(1, 1, 0, 0, 1, 1, 0, 0))
    assert "iou_prune" not in u1 and "survival_rate" not in u1  # nothing to compare with yet
    assert u1["n_pruned"] == 2 and u1["n_grown"] == 2
    assert u1["iou_grow"] == pytest.approx(2 / 6)          # {0,1} / {0,...,5}
    assert u1["exploration_degree"] == pytest.approx(6 / 8)
    # update 2: prune {1, 5}, grow {6, 7}
    before = _m(1, 1, 0, 0, 1, 1, 0, 0)
    u2 = metrics.record_update(s, before, _m(1, 0, 0, 0, 1, 0, 0, 0), _m(1, 0, 0, 0, 1, 0, 1, 1))
    assert u2["iou_prune"] == pytest.approx(1 / 3)         # {0,4} vs {0,1}
    assert u2["survival_rate"] == pytest.approx(1 / 2)     # grown {4,5}, still active {4}
    assert u2["iou_grow"] == pytest.approx(2 / 6)          # {0,4,6,7} vs {0,1,4,5}
    assert u2["exploration_degree"] == 1.0
    assert u2["n_pruned"] == 2 and u2["n_grown"] == 2
    assert u1["new_grown_fraction"] == u2["new_grown_fraction"] == 1.0   # nothing grown was active before


def test_new_grown_fraction_counts_what_grow_brought_back_by_hand():
    """IEE-style: prune {1, 2, 3}, grow back {2, 3} (pruned this update) and {6}: 1/3 new."""
    before = _m(1, 1, 1, 1, 0, 0, 0, 0)
    s = _state(before)
    out = metrics.record_update(s, before, _m(1, 0, 0, 0, 0, 0, 0, 0), _m(1, 0, 1, 1, 0, 0, 1, 0))
    assert out["n_grown"] == 3 and out["new_grown_fraction"] == pytest.approx(1 / 3)
    # Grow returns exactly what Prune removed: nothing new
    out = metrics.record_update(s, before, _m(1, 1, 0, 0, 0, 0, 0, 0), before)
    assert out["new_grown_fraction"] == 0.0 and out["iou_grow"] == 1.0
    # nothing grown: no fraction
    assert "new_grown_fraction" not in metrics.record_update(s, before, before, before)


def test_prune_then_grow_halves_equal_one_update():
    init = _m(1, 1, 1, 0, 0, 0)
    seq = [(_m(1, 0, 1, 0, 0, 0), _m(1, 0, 1, 1, 0, 0)), (_m(0, 0, 1, 1, 0, 0), _m(0, 0, 1, 1, 1, 1))]
    a, b = _state(init), _state(init)
    before = init
    for after_prune, after_grow in seq:
        whole = metrics.record_update(a, before, after_prune, after_grow)
        halves = metrics.record_prune(b, before, after_prune)
        halves.update(metrics.record_grow(b, before, after_prune, after_grow))
        assert whole == halves
        before = after_grow


def test_new_mask_without_prune_and_degenerate_iou():
    s = _state(_m(1, 0, 0, 0))
    out = metrics.record_update(s, _m(1, 0, 0, 0), None, _m(0, 1, 0, 0))
    assert out == {"exploration_degree": 0.5, "iou_grow": 0.0}
    assert metrics.mask_iou(_m(0, 0), _m(0, 0)) == 1.0
    # exploration never decreases
    out = metrics.record_update(s, _m(0, 1, 0, 0), None, _m(1, 0, 0, 0))
    assert out["exploration_degree"] == 0.5


def test_minus_and_iou_golden():
    a, b = _m(1, 1, 0, 0, 1), _m(1, 0, 1, 0, 1)
    assert metrics.minus(a["w"], b["w"]).tolist() == [False, True, False, False, False]
    assert metrics.mask_iou(a, b) == pytest.approx(2 / 4)  # {0,4} / {0,1,2,4}
