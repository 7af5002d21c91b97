"""Latency tables and cost models (regrow.structured.latency)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from regrow.structured.groups import find_groups
from regrow.structured.latency import (
    CostGraph, CostModel, Layer, LatencyTable, bilinear, build_table, channel_grid, device_name,
    model_key, model_layers,
)
from test_groups import TinyRes

CONV = Layer("c", "conv", 4, 6, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), False)


def test_bilinear_golden():
    gx, gy = np.array([1.0, 3.0]), np.array([2.0, 4.0])
    z = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert bilinear(gx, gy, z, 2.0, 3.0) == pytest.approx(2.5)
    assert bilinear(gx, gy, z, 3.0, 2.0) == pytest.approx(3.0)
    assert bilinear(gx, gy, z, 1.0, 3.0) == pytest.approx(1.5)
    assert bilinear(gx, gy, z, 10.0, 0.0) == pytest.approx(3.0)  # clamped to the grid
    assert bilinear(gx, gy, z, np.array([1.0, 3.0]), np.array([4.0, 4.0])).tolist() == [2.0, 4.0]


def synthetic_table(layer=CONV, batch=2):
    t = LatencyTable(device_name(torch.device("cpu")), torch.__version__)
    # T(c_in, c_out) = c_in * c_out / 4 on a 2 x 3 grid
    t.add_entry(layer, batch, [1, 4], [1, 3, 6], [[0.25, 0.75, 1.5], [1.0, 3.0, 6.0]])
    return t


def test_table_lookup_interpolates_and_covers():
    t = synthetic_table()
    assert t.lookup(CONV, 2, 4, 6) == pytest.approx(6.0)
    assert t.lookup(CONV, 2, 2.5, 3) == pytest.approx(1.875)  # halfway between 0.75 and 3.0
    assert t.lookup(CONV, 2, 4, np.array([1, 2, 3])).tolist() == pytest.approx([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="does not cover layer 'c'"):
        t.lookup(CONV, 8, 4, 6)  # another batch size is another signature


def test_depthwise_entry_is_one_dimensional():
    dw = Layer("dw", "dwconv", 6, 6, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), False)
    t = LatencyTable("x", "y")
    t.add_entry(dw, 1, [0], [1, 6], [[1.0, 6.0]])
    assert t.lookup(dw, 1, 3, 3) == pytest.approx(3.0)


def test_save_load_and_foreign_tables_refused(tmp_path):
    path = tmp_path / "t.json"
    synthetic_table().save(str(path))
    back = LatencyTable.load(str(path))
    assert back.lookup(CONV, 2, 4, 6) == pytest.approx(6.0)
    data = json.loads(path.read_text())
    data["device"] = "cuda:NVIDIA TITAN V"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="measured on 'cuda:NVIDIA TITAN V'.*rebuild"):
        LatencyTable.load(str(path))
    assert LatencyTable.load(str(path), check=False).device == "cuda:NVIDIA TITAN V"
    data["device"], data["torch"] = device_name(torch.device("cpu")), "1.4.0"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="torch 1.4.0"):
        LatencyTable.load(str(path))
    with pytest.raises(FileNotFoundError, match="regrow latency-table"):
        LatencyTable.load(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a regrow latency table"):
        LatencyTable.load(str(tmp_path / "bad.json"))
    (tmp_path / "old.json").write_text(json.dumps({**data, "format": "regrow.latency/1"}))
    with pytest.raises(ValueError, match="old format regrow.latency/1.*rebuild"):
        LatencyTable.load(str(tmp_path / "old.json"))


STEADY_HEAP_PROBE = """
import resource, torch
from regrow.structured.latency import steady_cpu_heap

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(1 << 24).fill_(1.0)  # 64 MB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
default = min(faults() for _ in range(3))
applied = steady_cpu_heap()
faults()
print(applied, default, min(faults() for _ in range(3)))
"""


@pytest.mark.slow
def test_steady_cpu_heap_keeps_big_buffers_out_of_mmap():
    """In a fresh process (a long-lived heap may be unable to grow in place): a freed
    64 MB buffer, above glibc's largest default mmap threshold, is mapped and faulted in
    anew on every allocation; after steady_cpu_heap() it is reused from the heap. Without
    glibc the call reports that it could not apply."""
    import platform
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", STEADY_HEAP_PROBE], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    applied, default, steady = out[0] == "True", int(out[1]), int(out[2])
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    if applied:
        # a re-mapped 64 MB buffer faults once per page: 16384 faults with 4 KB pages, but
        # only 32 with transparent huge pages, so compare with the page count, not a ratio
        pages = 64 * 2 ** 20 // os.sysconf("SC_PAGE_SIZE")
        assert steady < pages // 8 and steady <= default, (default, steady, pages)


def test_macs_golden():
    assert CONV.out_spatial() == (8, 8)
    assert CONV.macs(4, 6) == 4 * 6 * 9 * 64
    assert CONV.macs(2, 3) == 2 * 3 * 9 * 64
    s2 = Layer("s", "conv", 4, 6, (8, 8), (3, 3), (2, 2), (1, 1), (1, 1), False)
    assert s2.out_spatial() == (4, 4)
    dw = Layer("dw", "dwconv", 6, 6, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), False)
    assert dw.macs(6, 5) == 5 * 9 * 64


def test_channel_grid_has_ends_and_simd_edges():
    assert channel_grid(16, 6) == [1, 4, 7, 10, 13, 15, 16]
    g = channel_grid(2048, 8)
    assert g[0] == 1 and g[-1] == 2048 and len(g) < 40


def test_build_table_measures_each_signature_once():
    m = TinyRes()
    layers = model_layers(m, torch.zeros(1, 3, 8, 8))
    t = build_table(layers, 1, torch.device("cpu"), points=2, warmup=0, repeats=1)
    sigs = {layer.signature(1) for layer in layers}
    assert set(t.entries) == sigs  # a and b share one signature
    assert all(t.covers(layer, 1) for layer in layers)
    assert all(np.all(np.asarray(e["ms"]) > 0) for e in t.entries.values())


def test_model_overhead_is_fitted_once_and_applied_affinely():
    m = TinyRes()
    x = torch.zeros(1, 3, 8, 8)
    layers = model_layers(m, x)
    t = build_table(layers, 1, torch.device("cpu"), points=2, warmup=0, repeats=3, model=m, input_shape=(3, 8, 8))
    key = model_key(layers, 1)
    assert set(t.overheads) == {key} and t.overheads[key]["scale"] > 0
    t.overheads[key] = {"scale": 1.25, "offset": 0.5}
    again = build_table(layers, 1, torch.device("cpu"), table=t, model=m, input_shape=(3, 8, 8))
    assert again.overheads[key] == {"scale": 1.25, "offset": 0.5}  # not measured twice
    groups = find_groups(m, x)
    graph, cost = CostGraph(layers, groups), CostModel(layers, "latency", t, batch=1)
    full = {g.name: g.size for g in groups}
    parts = sum(float(t.lookup(layer, 1, layer.c_in, layer.c_out)) for layer in layers)
    assert graph.predict(cost, full) == pytest.approx(1.25 * parts + 0.5)
    # the offset is paid once, with the layers no group owns (the knapsack's fixed part)
    owned = sum(float(graph.group_costs(cost, full, g.name, [g.size])[0]) for g in groups)
    assert graph.fixed_cost(cost, full) + owned == pytest.approx(graph.predict(cost, full))
    t.overheads[key] = 1.25  # a factor alone, as tables stored before the affine fit
    assert CostGraph(layers, groups).predict(CostModel(layers, "latency", t, batch=1), full) == pytest.approx(1.25 * parts)
    flops = CostModel(layers, "flops")
    assert (flops.scale, flops.offset) == (1.0, 0.0)


def test_fit_overhead_recovers_an_affine_latency_law(monkeypatch):
    """With whole-model latencies that follow 2 · Σ table + 3 exactly, the fit returns them;
    a degenerate fit (negative slope) falls back to the dense ratio."""
    from regrow.structured import latency as lat

    m = TinyRes()
    layers = model_layers(m, torch.zeros(1, 3, 8, 8))
    t = build_table(layers, 1, torch.device("cpu"), points=2, warmup=0, repeats=1)
    groups = find_groups(m, torch.zeros(1, 3, 8, 8))
    graph = CostGraph(layers, groups)

    def law(slope, offset):
        def fake(net, example, *a, **k):
            counts = {g.name: g.size for g in groups}
            mods = dict(net.named_modules())
            for g in groups:  # the slimmed copy's kept channels, read off its root layer
                counts[g.name] = mods[g.name].weight.shape[0]
            act = graph.active(counts)
            s = sum(float(t.lookup(layer, 1, *act[layer.name])) for layer in layers)
            return {"latency_ms": slope * s + offset}
        return fake

    monkeypatch.setattr(lat, "measure_model", law(2.0, 3.0))
    fit = lat.fit_overhead(t, layers, 1, m, (3, 8, 8), torch.device("cpu"))
    assert fit["scale"] == pytest.approx(2.0) and fit["offset"] == pytest.approx(3.0)
    monkeypatch.setattr(lat, "measure_model", law(-1.0, 100.0))
    fit = lat.fit_overhead(t, layers, 1, m, (3, 8, 8), torch.device("cpu"))
    full = sum(float(t.lookup(layer, 1, layer.c_in, layer.c_out)) for layer in layers)
    assert fit == {"scale": pytest.approx((100.0 - full) / full), "offset": 0.0}


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.c, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = self.bn(self.c(self.stem(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


def test_cost_graph_flatten_and_prediction():
    m = Flat()
    x = torch.zeros(1, 1, 4, 4)
    groups = find_groups(m, x)
    assert [g.name for g in groups] == ["c"]
    layers = model_layers(m, x)
    graph = CostGraph(layers, groups)
    act = graph.active({"c": 2})
    assert act == {"stem": (1, 4), "c": (4, 2), "fc": (8, 3)}  # 2 channels × 4 positions
    flops = CostModel(layers, "flops")
    full = graph.predict(flops, {"c": 4})
    assert full == pytest.approx((1 * 4 * 9 * 16 + 4 * 4 * 9 * 16 + 16 * 3) / 1e6)
    assert graph.predict(flops, {"c": 2}) == pytest.approx((1 * 4 * 9 * 16 + 4 * 2 * 9 * 16 + 8 * 3) / 1e6)
    assert graph.group_costs(flops, {"c": 4}, "c", [1, 2]).tolist() == pytest.approx(
        [4 * 1 * 9 * 16 / 1e6, 4 * 2 * 9 * 16 / 1e6])
    assert graph.fixed_cost(flops, {"c": 2}) == pytest.approx((1 * 4 * 9 * 16 + 8 * 3) / 1e6)


def test_cost_model_errors():
    with pytest.raises(ValueError, match="cost must be one of latency, flops"):
        CostModel([CONV], "energy")
    with pytest.raises(ValueError, match="needs a latency table"):
        CostModel([CONV], "latency")
    with pytest.raises(ValueError, match="does not cover layer 'c'"):
        CostModel([CONV], "latency", LatencyTable("x", "y"), batch=2)


def test_cli_latency_table(tmp_path):
    from regrow.cli import main

    out = tmp_path / "t.json"
    args = ["latency-table", "--model", "resnet20", "--data", "synthetic", "--batch-size", "1",
            "--out", str(out), "--points", "2", "--repeats", "1", "--warmup", "0"]
    assert main(args) == 0
    t = LatencyTable.load(str(out))
    assert len(t.entries) >= 5
    assert main(args[:-6] + ["--out", str(out), "--points", "1"]) == 2  # bad value: exit 2


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("device"), "lacks the key 'device'"),
    (lambda d: d.pop("entries"), "lacks the key 'entries'"),
    (lambda d: next(iter(d["entries"].values())).pop("ms"), "lacks the key 'ms' in entry"),
    (lambda d: next(iter(d["entries"].values())).update(ms=[[1.0]]), r"needs finite ms of shape"),
    (lambda d: next(iter(d["entries"].values())).update(c_in="x"), "'c_in' in entry .* must be list"),
    (lambda d: d.update(overheads={"m": {"scale": 1.0}}), "lacks the key 'offset' in overhead 'm'"),
])
def test_malformed_tables_name_the_file_and_the_key(edit, message, tmp_path):
    path = tmp_path / "t.json"
    synthetic_table().save(str(path))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"latency table '{path}'.*{message}"):
        LatencyTable.load(str(path))


def test_a_table_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"format": ')
    with pytest.raises(ValueError, match=f"latency table '{path}' is not valid JSON"):
        LatencyTable.load(str(path))
