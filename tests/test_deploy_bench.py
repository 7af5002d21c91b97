"""regrow.deploy.bench: the interleaved whole-model comparison and its table."""
from __future__ import annotations

import torch
from torch import nn

from regrow.deploy.bench import bench, hand_csr, table


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        m[0].weight.mul_(torch.rand(32, 16) < 0.3)
        m[2].weight.mul_(torch.rand(4, 32) < 0.3)
    return m


def test_hand_csr_baseline_equals_dense():
    m = _model()
    x = torch.randn(5, 16)
    torch.testing.assert_close(hand_csr(m)(x), m(x), rtol=1e-5, atol=1e-5)


def test_bench_rows_control_pair_and_skipped_formats():
    res = bench(_model(), (16,), formats=("sparse", "fanin"), batch_sizes=(1, 4), repeats=2)
    names = {r["model"] for r in res["rows"]}
    assert {"dense", "dense (control)", "csr (by hand)", "regrow sparse"} <= names
    assert "fanin" in res["skipped"] and "not a constant k" in res["skipped"]["fanin"]
    assert all(r["speedup"] == 1.0 for r in res["rows"] if r["model"] == "dense")
    md = table(res)
    assert "| dense (control) |" in md and "batch 4 ms" in md and "fanin: skipped" in md
