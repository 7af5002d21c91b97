"""SparseLinear (regrow.deploy.kernels): every kind and kernel computes x Wᵀ + b."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regrow.deploy.kernels import ALLOWED, SparseLinear, check_nm, fanin_k


def _fanin_weight(out=12, inn=20, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(out, inn, generator=g).argsort(1)[:, :k]
    mask = torch.zeros(out, inn, dtype=torch.bool).scatter_(1, idx, True)
    return torch.randn(out, inn, generator=g) * mask, mask


def _nm_weight(out=8, inn=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(out, inn // 4, 4, generator=g).argsort(2)[..., :2]
    mask = torch.zeros(out, inn // 4, 4, dtype=torch.bool).scatter_(2, keep, True).reshape(out, inn)
    return torch.randn(out, inn, generator=g) * mask, mask


@pytest.mark.parametrize("kind,kernels", [
    ("csr", ["mv", "spmm", "ebag", "dense"]), ("fanin", ["mv", "spmm", "ebag", "dense"]),
    ("bsr", ["spmm", "dense"]),
])
@pytest.mark.parametrize("rows", [1, 7])
def test_every_kernel_matches_dense(kind, kernels, rows):
    w, _ = _fanin_weight(out=12, inn=20, k=5)
    if kind == "bsr":
        w = torch.randn(12, 20) * (torch.rand(3, 5) < 0.4).repeat_interleave(4, 0).repeat_interleave(4, 1)
    b = torch.randn(12)
    mod = SparseLinear.from_dense(w, b, kind, [(1, kernels[0])], block=4)
    x = torch.randn(rows, 20)
    for kn in kernels:
        torch.testing.assert_close(mod.matmul(x, kn), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mod.dense_weight(), w)


def test_ebag_output_feeds_the_next_layer_without_copies_and_3d_input():
    w, _ = _fanin_weight(out=12, inn=20, k=5)
    mod = SparseLinear.from_dense(w, None, "csr", [(1, "ebag")])
    x = torch.randn(2, 3, 20)
    torch.testing.assert_close(mod(x), x @ w.t(), rtol=1e-5, atol=1e-5)


def test_conv_layout_is_a_strided_pointwise_conv():
    w = torch.randn(6, 4) * (torch.rand(6, 4) < 0.5)
    conv = torch.nn.Conv2d(4, 6, 1, stride=2)
    with torch.no_grad():
        conv.weight.copy_(w.view(6, 4, 1, 1))
    mod = SparseLinear.from_dense(w, conv.bias, "csr", [(1, "spmm")], layout="conv", stride=(2, 2))
    x = torch.randn(2, 4, 7, 5)
    torch.testing.assert_close(mod(x), conv(x), rtol=1e-5, atol=1e-5)


def test_mask_keeps_active_zero_weights_and_rejects_values_outside():
    w, mask = _fanin_weight(k=5)
    w[0, mask[0].nonzero()[0, 0]] = 0.0   # an active weight that is exactly 0 (just grown)
    mod = SparseLinear.from_dense(w, None, "fanin", [(1, "mv")], mask=mask)
    assert mod.col.shape == (12, 5)
    with pytest.raises(ValueError, match="non-zero outside its mask"):
        SparseLinear.from_dense(w + 1.0, None, "csr", [(1, "mv")], mask=mask)


def test_spec_round_trip_through_state_dict():
    w, mask = _fanin_weight()
    for kind in ("csr", "fanin"):
        mod = SparseLinear.from_dense(w, torch.randn(12), kind, [(1, "mv"), (64, "ebag")], mask=mask)
        twin = SparseLinear.from_spec(mod.spec())
        twin.load_state_dict(mod.state_dict())
        x = torch.randn(3, 20)
        assert torch.equal(twin(x), mod(x)) and twin.kernels == mod.kernels


def test_nearest_measured_row_count_picks_the_kernel():
    w, _ = _fanin_weight()
    mod = SparseLinear.from_dense(w, None, "csr", [(1, "mv"), (128, "ebag")])
    calls = []
    orig = F.embedding_bag
    try:
        F.embedding_bag = lambda *a, **k: calls.append(1) or orig(*a, **k)
        mod(torch.randn(2, 20))      # nearer 1 (log scale): mv asked of 2 rows -> spmm
        assert not calls
        mod(torch.randn(40, 20))     # nearer 128: ebag
        assert calls
    finally:
        F.embedding_bag = orig


def test_clear_errors():
    w, mask = _fanin_weight()
    mask[3, :] = False
    mask[3, :2] = True
    with pytest.raises(ValueError, match="between 2 and 5 inputs per output neuron, not a constant k"):
        fanin_k(mask, "fc")
    with pytest.raises(ValueError, match="more than n=2"):
        check_nm(torch.ones(4, 8, dtype=torch.bool), 2, 4, "fc")
    with pytest.raises(ValueError, match="not a multiple of m=4"):
        check_nm(torch.ones(4, 6, dtype=torch.bool), 2, 4, "fc")
    with pytest.raises(ValueError, match="names in"):
        SparseLinear.from_dense(w, None, "csr", [(1, "mm")])
    assert "dense" in ALLOWED["csr"]


def test_nm_layout_stores_n_of_m_and_needs_cuda_to_run():
    w, mask = _nm_weight()
    mod = SparseLinear.from_dense(w, None, "nm", [(1, "mm")], mask=mask)
    assert mod.values.shape == (8, 4, 2) and mod.col.dtype == torch.uint8
    torch.testing.assert_close(mod.dense_weight(), w)
    # where the export measured 2:4 losing, the layer runs its expanded weight (any device)
    dense = SparseLinear.from_dense(w, None, "nm", [(1, "dense")], mask=mask)
    x = torch.randn(3, 16)
    torch.testing.assert_close(dense(x), F.linear(x, w))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            mod(torch.randn(2, 16))
    else:
        mod = mod.cuda().half()
        x = torch.randn(3, 16, device="cuda", dtype=torch.half)
        torch.testing.assert_close(mod(x), F.linear(x, w.cuda().half()), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("rows", [1, 7])
def test_fanin_with_ablated_neurons_matches_dense(rows):
    # what fan-in's neuron ablation leaves: empty rows (outputs = bias) and the budget over
    # the alive neurons at q or q + 1; stored with k = q + 1, short rows padded with zeros
    w, mask = _fanin_weight(out=12, inn=20, k=5)
    mask[[2, 7]] = False                       # two ablated neurons
    mask[0, :] = False
    mask[0, :4] = True                         # one alive neuron at q = 4
    w = torch.randn(12, 20) * mask
    b = torch.randn(12)
    assert fanin_k(mask, "fc") == 5
    mod = SparseLinear.from_dense(w, b, "fanin", [(1, "mv")], mask=mask)
    # only the 10 alive neurons are stored (and computed)
    assert mod.col.shape == (10, 5) and mod.rows.tolist() == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11]
    assert mod.spec()["alive"] == 10
    x = torch.randn(rows, 20)
    for kn in ("mv", "spmm", "ebag", "dense"):
        y = mod.matmul(x, kn)
        torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y[:, [2, 7]], b[[2, 7]].expand(rows, 2))
    torch.testing.assert_close(mod.dense_weight(), w)
    # the loader's path: an empty module from the spec, then the state dict
    again = SparseLinear.from_spec(mod.spec())
    again.load_state_dict(mod.state_dict())
    again.validate("fc")
    torch.testing.assert_close(again.matmul(x, "ebag"), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    bad = SparseLinear.from_spec(mod.spec())
    bad.load_state_dict({**mod.state_dict(), "rows": torch.tensor([0, 1, 3, 4, 5, 6, 8, 9, 10, 12])})
    with pytest.raises(ValueError, match="out of range"):
        bad.validate("fc")
    mask[5, :] = False
    mask[5, :3] = True                         # 3 and 5: not what fan-in leaves
    with pytest.raises(ValueError, match="between 3 and 5 inputs per output neuron, not a constant k"):
        fanin_k(mask, "fc")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(out=st.integers(2, 24), inn=st.integers(2, 24), seed=st.integers(0, 2**16), data=st.data())
def test_fanin_any_ablation_pattern_matches_dense_in_place(out, inn, seed, data):
    # any set of ablated rows (first, last, all but one) and any q / q + 1 split of the
    # rest: the [out, in] CSR with empty ablated rows puts every output in place
    g = torch.Generator().manual_seed(seed)
    alive = sorted(data.draw(st.sets(st.integers(0, out - 1), min_size=1, max_size=out)))
    q = data.draw(st.integers(0, inn - 1))
    mask = torch.zeros(out, inn, dtype=torch.bool)
    for i in alive:
        n = q + data.draw(st.integers(0 if q else 1, 1))
        mask[i, torch.randperm(inn, generator=g)[:n]] = True
    w, b = torch.randn(out, inn, generator=g) * mask, torch.randn(out, generator=g)
    mod = SparseLinear.from_dense(w, b, "fanin", [(1, "mv")], mask=mask)
    assert (mod.rows is None) == (len(alive) == out)
    dead = [i for i in range(out) if i not in alive]
    for rows in (1, 5):
        x = torch.randn(rows, inn, generator=g)
        for kn in ("mv", "spmm", "ebag", "dense"):
            y = mod.matmul(x, kn)
            torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
            assert torch.equal(y[:, dead], b[dead].expand(rows, len(dead)))
        # ebag's [out, rows] result is the next ebag layer's contiguous table
        assert mod.matmul(x, "ebag").t().is_contiguous()
