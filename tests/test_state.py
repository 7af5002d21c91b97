"""SparseState: derived views, bit-exact persistence, the mask checksum."""
from __future__ import annotations

import copy

import pytest
import torch

from regrow import SparseState, check_masks_synchronized, mask_checksum

B = torch.bool


def make_state():
    return SparseState(
        masks={"a": torch.tensor([1, 0, 1, 1], dtype=B), "b": torch.tensor([[1, 0], [0, 0]], dtype=B)},
        targets={"a": 3, "b": 1},
        step=7,
        dormant={"a": torch.tensor([0.0, 2.5, 0.0, 0.0])},
        buffers={"ucb.count": {"a": torch.tensor([3, 0, 1, 2])}},
        counters={"updates": 2, "history": [0.5, 0.25]},
    )


def test_derived_views():
    s = make_state()
    assert s.numel("a") == 4 and s.active("a") == 3 and s.active("b") == 1
    assert s.density("a") == 0.75 and s.density("b") == 0.25 and s.density() == 0.5
    assert s.target_density("a") == 0.75 and s.target_density() == 0.5
    assert s.layer_densities() == {"a": 0.75, "b": 0.25}


def test_state_dict_round_trip_and_independence():
    s = make_state()
    sd = s.state_dict()
    s.masks["a"][1] = True  # mutating the source afterwards must not leak into the copy
    s.counters["history"].append(1.0)
    t = SparseState(masks={"a": torch.zeros(4, dtype=B), "b": torch.zeros(2, 2, dtype=B)}, targets={})
    t.load_state_dict(copy.deepcopy(sd))
    ref = make_state()
    assert t.step == 7 and t.targets == ref.targets and t.counters == ref.counters
    assert all(torch.equal(t.masks[k], ref.masks[k]) and t.masks[k].dtype == B for k in ref.masks)
    assert torch.equal(t.dormant["a"], ref.dormant["a"])
    assert torch.equal(t.buffers["ucb.count"]["a"], ref.buffers["ucb.count"]["a"])
    sd2 = t.state_dict()
    t.counters["updates"] = 99
    assert sd2["counters"]["updates"] == 2
    # a state dict survives torch.save / torch.load unchanged
    import io
    buf = io.BytesIO()
    torch.save(sd2, buf)
    buf.seek(0)
    u = SparseState(masks={"a": torch.zeros(4, dtype=B), "b": torch.zeros(2, 2, dtype=B)}, targets={})
    u.load_state_dict(torch.load(buf))
    assert mask_checksum(u.masks) == mask_checksum(ref.masks)


def test_load_state_dict_errors():
    s = make_state()
    with pytest.raises(ValueError, match="not a regrow SparseState state_dict"):
        s.load_state_dict({"masks": {}})
    sd = s.state_dict()
    other = SparseState(masks={"a": torch.zeros(4, dtype=B), "c": torch.zeros(2, dtype=B)}, targets={})
    with pytest.raises(ValueError, match=r"missing \['c'\], unexpected \['b'\]"):
        other.load_state_dict(sd)
    wrong = SparseState(masks={"a": torch.zeros(5, dtype=B), "b": torch.zeros(2, 2, dtype=B)}, targets={})
    with pytest.raises(ValueError, match=r"mask 'a' has shape \(4,\) in the checkpoint but \(5,\)"):
        wrong.load_state_dict(sd)


def test_mask_checksum():
    s = make_state()
    c = mask_checksum(s.masks)
    assert c == mask_checksum({k: v.clone() for k, v in s.masks.items()})
    assert c == mask_checksum({"b": s.masks["b"], "a": s.masks["a"]})  # insertion order irrelevant
    flipped = {k: v.clone() for k, v in s.masks.items()}
    flipped["b"][1, 1] = True
    assert mask_checksum(flipped) != c
    renamed = {"a": s.masks["a"], "z": s.masks["b"]}
    assert mask_checksum(renamed) != c
    assert isinstance(c, int)


def test_check_masks_synchronized_without_a_process_group_returns_the_checksum():
    s = make_state()
    assert check_masks_synchronized(s.masks) == mask_checksum(s.masks)


def test_count_true():
    from regrow.state import count_true

    m = torch.tensor([[True, False, True], [True, True, False]])
    assert count_true(m) == 4 and count_true(m.t()) == 4 and count_true(m[:, 1]) == 1
    assert count_true(torch.zeros(0, dtype=B)) == 0
    assert count_true(torch.tensor([0, 2, 0, 5])) == 2  # non-bool: counts non-zeros
