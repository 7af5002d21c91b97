"""Layer costs for latency-constrained channel sparsity: device latency lookup tables
and a FLOPs (MACs) model.

HALP (Shen et al. 2022, §3.3) and IEE (appendix §4.1, §5.4) keep a table
T^l(p^{l−1}, p^l): the latency of layer l with p^{l−1} input and p^l output channels,
measured on the target device. Here one table entry covers every layer with the same
signature (batch, c_in, c_out, feature map, kernel, stride, padding, groups); it holds
a grid of channel counts, each timed as the median of repeated runs after warm-up
(CUDA: events + synchronize), and is read in between by bilinear interpolation in
(c_in, c_out). On CPU every timing first keeps glibc's heap steady
(:func:`steady_cpu_heap`). A conv is timed together with the BatchNorm and ReLU that follow it in
the networks this library prunes, so the table sees the element-wise work that scales
with the output channels too. Tables are cached on disk keyed by device name and torch
version, and a table from another device is refused.

``cost="flops"`` is the device-independent alternative: T^l = MACs per sample.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .groups import CONV, ChannelGroup, find_groups, is_depthwise, prunable_layers
from .slim import slim_copy

FORMAT = "regrow.latency/2"  # /1: CPU timings before steady_cpu_heap (page faults included)
COSTS = ("latency", "flops")


@dataclass(frozen=True)
class Layer:
    """A Conv/Linear layer as a cost model sees it, with full channel counts."""

    name: str
    kind: str  # conv | dwconv | linear
    c_in: int
    c_out: int
    spatial: Tuple[int, ...]  # input feature map (empty for Linear)
    kernel: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    bias: bool

    def signature(self, batch: int) -> str:
        f = lambda t: "x".join(map(str, t)) or "-"  # noqa: E731
        return (f"{self.kind}|b{batch}|{self.c_in}x{self.c_out}|in{f(self.spatial)}|k{f(self.kernel)}"
                f"|s{f(self.stride)}|p{f(self.padding)}|d{f(self.dilation)}|bias{int(self.bias)}")

    def out_spatial(self) -> Tuple[int, ...]:
        return tuple(
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(self.spatial, self.padding, self.dilation, self.kernel, self.stride)
        )

    def macs(self, c_in, c_out):
        """MACs per sample with c_in/c_out active channels (arrays broadcast)."""
        hw = int(np.prod(self.out_spatial())) if self.spatial else 1
        k = int(np.prod(self.kernel)) if self.kernel else 1
        if self.kind == "dwconv":
            return np.asarray(c_out, dtype=np.float64) * k * hw
        return np.asarray(c_in, dtype=np.float64) * np.asarray(c_out, dtype=np.float64) * k * hw


def model_layers(model: nn.Module, example_inputs) -> List[Layer]:
    """Every Conv/Linear of ``model`` with the feature map it sees on ``example_inputs``."""
    names = prunable_layers(model)
    modules = dict(model.named_modules())
    seen: Dict[str, Tuple[int, ...]] = {}
    hooks = []
    for n in names:
        def hook(mod, inp, out, n=n):
            seen.setdefault(n, tuple(inp[0].shape))
        hooks.append(modules[n].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs) if isinstance(example_inputs, (tuple, list)) else model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = []
    for n in names:
        m = modules[n]
        if n not in seen:
            raise ValueError(f"layer '{n}' is not used in the forward pass on the example input")
        shape = seen[n]
        if isinstance(m, CONV):
            if isinstance(m.padding, str):
                raise ValueError(f"unsupported layer '{n}': string padding '{m.padding}' (give it as integers)")
            kind = "dwconv" if is_depthwise(m) else "conv"
            out.append(Layer(n, kind, m.in_channels, m.out_channels, tuple(shape[2:]), tuple(m.kernel_size),
                             tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.bias is not None))
        else:
            out.append(Layer(n, "linear", m.in_features, m.out_features, (), (), (), (), (), m.bias is not None))
    return out


# ---- the device -------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    """A stable name for the timing device (CUDA: GPU name; CPU: processor model + threads)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu:{model}:threads{torch.get_num_threads()}"


CLOCKS = ("wall", "cpu")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def steady_cpu_heap() -> bool:
    """Keep freed CPU buffers in the process heap (glibc: mmap and trim thresholds raised
    to 1 GiB); True when applied, False where there is no glibc ``mallopt``.

    Why: with glibc's defaults a tensor of a few MB may be served by a fresh ``mmap`` and
    handed back on free, so every call page-faults and zeroes it anew, or not, depending
    on what the heap held before. Measured here: one conv+BN+ReLU (8×1×32×32 → 48
    channels) took 1.32 ms this way and 0.22 ms from a steady heap; in a whole network
    the same layer ran at the fast speed, so isolated table entries were up to 8× off
    (ResNet-18, ResNet-20 predictions 13–44% off). The setting is process-wide and only
    changes when memory returns to the OS, not what is computed. A long-lived process
    whose heap cannot grow in place still maps big buffers afresh: build tables and
    measure in a process of their own (``regrow latency-table``, the benchmarks)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such symbol / no process handle (Windows)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def time_callable(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10,
                  clock: str = "wall") -> float:
    """Median time of ``fn()`` in milliseconds after ``warmup`` calls.

    clock: ``wall`` (CUDA: events), or on CPU ``cpu``, the calling thread's CPU time
    (``time.thread_time``), which other processes' load does not inflate; it needs
    ``torch.set_num_threads(1)`` so that all the work runs in the calling thread."""
    device = torch.device(device)
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
    if clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("clock 'cpu' (thread CPU time) needs a CPU device and torch.set_num_threads(1)")
    now = time.thread_time if clock == "cpu" else time.perf_counter
    if device.type == "cpu":
        steady_cpu_heap()
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end))
        else:
            for _ in range(repeats):
                t0 = now()
                fn()
                times.append((now() - t0) * 1e3)
    return float(statistics.median(times))


def layer_block(layer: Layer, c_in: int, c_out: int) -> nn.Module:
    """The module timed for ``layer`` at (c_in, c_out): conv + BN + ReLU, or a Linear."""
    if layer.kind == "linear":
        return nn.Linear(c_in, c_out, bias=layer.bias)
    conv_cls = nn.Conv1d if len(layer.kernel) == 1 else nn.Conv2d
    bn_cls = nn.BatchNorm1d if len(layer.kernel) == 1 else nn.BatchNorm2d
    groups = c_out if layer.kind == "dwconv" else 1
    cin = c_out if layer.kind == "dwconv" else c_in
    return nn.Sequential(
        conv_cls(cin, c_out, layer.kernel, layer.stride, layer.padding, layer.dilation, groups, layer.bias),
        bn_cls(c_out), nn.ReLU(inplace=True),
    )


def channel_grid(n: int, points: int) -> List[int]:
    """``points`` evenly spaced counts in [1, n], plus both sides of every multiple of the
    SIMD width (16, or a coarser multiple of 16 for wide layers): CPU and GPU kernels
    change algorithm there, and interpolating across such a cliff would mislead."""
    grid = {int(round(x)) for x in np.linspace(1, n, max(2, min(points, n)))}
    step = 16 * max(1, int(np.ceil(n / (16 * max(points, 2)))))
    for m in range(step, n + 1, step):
        grid.update((m - 1, m))
    return sorted(c for c in grid if 1 <= c <= n)


# ---- the table ----------------------------------------------------------------------
def check_table(data: dict, path: str) -> None:
    """Every key a table needs, with the type it needs, named with the file when missing."""
    def need(obj, key, kinds, where):
        if key not in obj:
            raise ValueError(f"latency table '{path}' lacks the key '{key}'{where}; rebuild it with "
                             "`regrow latency-table`")
        if not isinstance(obj[key], kinds) or isinstance(obj[key], bool):
            raise ValueError(f"latency table '{path}': '{key}'{where} must be "
                             f"{' or '.join(k.__name__ for k in kinds)}, got {type(obj[key]).__name__}")

    for key, kinds in (("device", (str,)), ("torch", (str,)), ("entries", (dict,))):
        need(data, key, kinds, "")
    if "clock" in data:
        need(data, "clock", (str,), "")
    if "overheads" in data:
        need(data, "overheads", (dict,), "")
        def finite(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))

        for k, v in data["overheads"].items():
            if isinstance(v, dict):
                for key in ("scale", "offset"):
                    need(v, key, (int, float), f" in overhead '{k}'")
                ok = finite(v["scale"]) and finite(v["offset"])
            else:  # older tables: the factor alone
                ok = finite(v)
            if not ok:
                raise ValueError(f"latency table '{path}': overhead '{k}' must be finite scale and offset, got {v!r}")
    for sig, e in data["entries"].items():
        where = f" in entry '{sig}'"
        if not isinstance(e, dict):
            raise ValueError(f"latency table '{path}': entry '{sig}' must be a mapping of c_in, c_out, ms")
        for key in ("c_in", "c_out", "ms"):
            need(e, key, (list,), where)
        try:
            ms = np.asarray(e["ms"], dtype=np.float64)
            c_in = np.asarray(e["c_in"], dtype=np.float64)
            c_out = np.asarray(e["c_out"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"latency table '{path}': entry '{sig}' holds non-numbers") from None
        if ms.ndim != 2 or c_in.ndim != 1 or c_out.ndim != 1 or ms.shape[1] != len(c_out) \
                or ms.shape[0] not in (1, len(c_in)) or not np.isfinite(ms).all():
            raise ValueError(f"latency table '{path}': entry '{sig}' needs finite ms of shape "
                             f"(len(c_in), len(c_out)) = ({len(c_in)}, {len(c_out)}), got {ms.shape}")



class LatencyTable:
    """Measured latencies by layer signature, for one device and torch version."""

    def __init__(self, device: str, torch_version: str, entries: Optional[Dict[str, dict]] = None,
                 source: str = "<memory>", clock: str = "wall", overheads: Optional[Dict[str, float]] = None):
        self.device = device
        self.clock = clock
        # per model (key: model_key): measured dense latency / Σ layer entries, the share of
        # pooling, additions and dispatch the layer entries do not see (it scales with them)
        self.overheads: Dict[str, float] = dict(overheads or {})
        self.torch_version = torch_version
        self.entries: Dict[str, dict] = dict(entries or {})
        self.source = source

    # persistence
    def to_json(self) -> dict:
        return {"format": FORMAT, "device": self.device, "torch": self.torch_version, "clock": self.clock,
                "overheads": self.overheads, "entries": self.entries}

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, device: Optional[torch.device] = None, check: bool = True) -> "LatencyTable":
        """Read a table; with ``check`` refuse one measured on another device / torch version."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"latency table '{path}' does not exist; build one with "
                                    "`regrow latency-table --model M --data D --batch-size B --out FILE`")
        try:
            with open(path) as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"latency table '{path}' is not valid JSON ({e}); rebuild it with "
                             "`regrow latency-table`") from None
        if isinstance(data, dict) and data.get("format") == "regrow.latency/1":
            raise ValueError(f"latency table '{path}' has the old format regrow.latency/1, whose CPU "
                             "timings could include page faults of the allocator; rebuild it with "
                             "`regrow latency-table`")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"'{path}' is not a regrow latency table (expected format '{FORMAT}')")
        check_table(data, path)
        table = cls(data["device"], data["torch"], data["entries"], source=path, clock=data.get("clock", "wall"),
                    overheads=data.get("overheads", {}))
        if check:
            here = device_name(device if device is not None else torch.device("cpu"))
            if table.device != here or table.torch_version != torch.__version__:
                raise ValueError(
                    f"latency table '{path}' was measured on '{table.device}' with torch "
                    f"{table.torch_version}, but this run times on '{here}' with torch "
                    f"{torch.__version__}; latencies do not transfer between devices: rebuild the "
                    "table here with `regrow latency-table` (or use cost='flops')"
                )
        return table

    # lookup
    def covers(self, layer: Layer, batch: int) -> bool:
        return layer.signature(batch) in self.entries

    def entry(self, layer: Layer, batch: int) -> dict:
        sig = layer.signature(batch)
        if sig not in self.entries:
            raise ValueError(
                f"latency table {self.source} does not cover layer '{layer.name}' (signature {sig}); "
                "rebuild it for this model, input size and batch size with `regrow latency-table`"
            )
        return self.entries[sig]

    def lookup(self, layer: Layer, batch: int, c_in, c_out) -> np.ndarray:
        """Interpolated latency (ms) at active (c_in, c_out); arrays broadcast."""
        e = self.entry(layer, batch)
        ms = np.asarray(e["ms"], dtype=np.float64)
        gout = np.asarray(e["c_out"], dtype=np.float64)
        if layer.kind == "dwconv":  # one count: c_in = c_out = groups
            return np.interp(np.asarray(c_out, dtype=np.float64), gout, ms[0])
        return bilinear(np.asarray(e["c_in"], dtype=np.float64), gout, ms, c_in, c_out)

    def add_entry(self, layer: Layer, batch: int, c_in: Sequence[int], c_out: Sequence[int], ms) -> None:
        self.entries[layer.signature(batch)] = {
            "c_in": list(map(int, c_in)), "c_out": list(map(int, c_out)),
            "ms": np.asarray(ms, dtype=np.float64).tolist(),
        }


def model_key(layers: Sequence[Layer], batch: int) -> str:
    """Identifies a model's layer list at a batch size (for its overhead entry)."""
    sig = "\n".join(f"{layer.name}={layer.signature(batch)}" for layer in layers)
    return f"model-{hashlib.sha1(sig.encode()).hexdigest()[:16]}-b{batch}"


def bilinear(gx: np.ndarray, gy: np.ndarray, z: np.ndarray, x, y) -> np.ndarray:
    """Bilinear interpolation of z[i, j] = f(gx[i], gy[j]) at (x, y), clamped to the grid."""
    x = np.clip(np.asarray(x, dtype=np.float64), gx[0], gx[-1])
    y = np.clip(np.asarray(y, dtype=np.float64), gy[0], gy[-1])
    if len(gx) == 1:
        return np.interp(y, gy, z[0]) + 0 * x
    if len(gy) == 1:
        return np.interp(x, gx, z[:, 0]) + 0 * y
    i = np.clip(np.searchsorted(gx, x, side="right") - 1, 0, len(gx) - 2)
    j = np.clip(np.searchsorted(gy, y, side="right") - 1, 0, len(gy) - 2)
    tx = (x - gx[i]) / (gx[i + 1] - gx[i])
    ty = (y - gy[j]) / (gy[j + 1] - gy[j])
    return ((1 - tx) * (1 - ty) * z[i, j] + tx * (1 - ty) * z[i + 1, j]
            + (1 - tx) * ty * z[i, j + 1] + tx * ty * z[i + 1, j + 1])


def build_table(layers: Sequence[Layer], batch: int, device: torch.device, points: int = 8,
                warmup: int = 3, repeats: int = 10, table: Optional[LatencyTable] = None,
                progress: bool = False, clock: str = "wall", model: Optional[nn.Module] = None,
                input_shape: Optional[Sequence[int]] = None) -> LatencyTable:
    """Measure every distinct layer signature not yet in ``table`` over a grid of
    ``points`` channel counts per dimension (median of ``repeats`` after ``warmup``).
    With ``model`` (whose layers these are) and ``input_shape`` (one sample's) also its
    overhead, fitted as latency = a · Σ layer entries + b (:func:`fit_overhead`)."""
    device = torch.device(device)
    table = table or LatencyTable(device_name(device), torch.__version__, clock=clock)
    if table.clock != clock:
        raise ValueError(f"latency table {table.source} was timed with clock '{table.clock}', not '{clock}'")
    todo: Dict[str, Layer] = {}
    for layer in layers:
        if not table.covers(layer, batch):
            todo.setdefault(layer.signature(batch), layer)
    jobs = []
    for layer in todo.values():
        gout = channel_grid(layer.c_out, points)
        gin = [layer.c_out] if layer.kind == "dwconv" else channel_grid(layer.c_in, points)
        jobs.append((layer, gin, gout))
    total = sum(1 if lay.kind == "dwconv" else len(gi) * len(go) for lay, gi, go in jobs)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="latency table", unit="point")
    try:
        for layer, gin, gout in jobs:
            if layer.kind == "dwconv":
                ms = [[_time_point(layer, c, c, batch, device, warmup, repeats, clock) for c in gout]]
                gin = [0]
                if bar:
                    bar.update(1)
            else:
                ms = []
                for ci in gin:
                    ms.append([_time_point(layer, ci, co, batch, device, warmup, repeats, clock) for co in gout])
                    if bar:
                        bar.update(len(gout))
            table.add_entry(layer, batch, gin, gout, ms)
    finally:
        if bar:
            bar.close()
    key = model_key(layers, batch)
    if model is not None and key not in table.overheads:
        if input_shape is None:
            raise ValueError("build_table: measuring a model's overhead needs its input_shape")
        table.overheads[key] = fit_overhead(table, layers, batch, model, input_shape, device, warmup,
                                            repeats, clock)
    return table


CALIBRATION_STRUCTURES = 4  # random slimmed copies measured besides the dense model
CALIBRATION_SEED = 20_221  # their own generator: other random structures stay out of sample


def fit_overhead(table: LatencyTable, layers: Sequence[Layer], batch: int, model: nn.Module,
                 input_shape: Sequence[int], device, warmup: int = 3, repeats: int = 10,
                 clock: str = "wall") -> Dict[str, float]:
    """Whole-model latency as a · Σ (table entries of its layers) + b, least squares over
    the dense model and ``CALIBRATION_STRUCTURES`` slimmed copies, each group keeping a
    uniform-random 20–100% of its channels (random counts, as a knapsack picks them:
    uniformly scaled, SIMD-aligned counts fitted the in-network cost of real structures
    worse).

    Why affine: in a network every layer also pays for inputs and weights that are not in
    cache and for the residual additions, pooling and dispatch that the table leaves out.
    A factor fitted on the dense model alone (b = 0) under-predicted slimmed models by
    5–20% (ResNet-18, VGG-16; benchmarks/RESULTS.md). Falls back to that factor when
    the model has no prunable group or the fit is degenerate."""
    example = torch.randn((batch,) + tuple(input_shape), device=device)
    groups = find_groups(model, example[:1])
    graph = CostGraph(layers, groups)

    def table_sum(counts: Dict[str, int]) -> float:
        act = graph.active(counts)
        return sum(float(table.lookup(layer, batch, *act[layer.name])) for layer in layers)

    gen = torch.Generator().manual_seed(CALIBRATION_SEED)
    xs = [table_sum({g.name: g.size for g in groups})]
    ys = [measure_model(model, example, warmup, repeats, clock)["latency_ms"]]
    for _ in range(CALIBRATION_STRUCTURES if groups else 0):
        counts = {g.name: max(1, int(round((0.2 + 0.8 * float(torch.rand((), generator=gen))) * g.size)))
                  for g in groups}
        net, _ = slim_copy(model, groups, {g.name: torch.arange(g.size) < counts[g.name] for g in groups})
        xs.append(table_sum(counts))
        ys.append(measure_model(net, example, warmup, repeats, clock)["latency_ms"])
    if len(xs) > 1:
        a, b = np.polyfit(xs, ys, 1)
        if a > 0 and all(a * x + b > 0 for x in xs):
            return {"scale": float(a), "offset": float(b)}
    return {"scale": ys[0] / xs[0], "offset": 0.0}


def _time_point(layer: Layer, c_in: int, c_out: int, batch: int, device, warmup, repeats, clock) -> float:
    block = layer_block(layer, c_in, c_out).to(device).eval()
    cin = c_out if layer.kind == "dwconv" else c_in
    x = torch.randn((batch, cin) + tuple(layer.spatial), device=device)
    return time_callable(lambda: block(x), device, warmup, repeats, clock)


# ---- cost models ---------------------------------------------------------------------
class CostModel:
    """T^l(c_in, c_out) for every layer: a latency table (ms) or MACs (``flops``, in M)."""

    def __init__(self, layers: Sequence[Layer], kind: str = "latency", table: Optional[LatencyTable] = None,
                 batch: int = 1):
        if kind not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(COSTS)}; got {kind!r}")
        if kind == "latency":
            if table is None:
                raise ValueError("cost='latency' needs a latency table")
            for layer in layers:
                table.entry(layer, batch)  # raises naming an uncovered layer
        self.layers = {layer.name: layer for layer in layers}
        self.kind, self.table, self.batch = kind, table, batch
        # a · Σ entries + b (older tables hold the factor a alone)
        overhead = table.overheads.get(model_key(layers, batch), 1.0) if kind == "latency" else 1.0
        if not isinstance(overhead, dict):
            overhead = {"scale": float(overhead), "offset": 0.0}
        self.scale, self.offset = overhead["scale"], overhead["offset"]

    def __call__(self, name: str, c_in, c_out) -> np.ndarray:
        layer = self.layers[name]
        if self.kind == "flops":
            return layer.macs(c_in, c_out) / 1e6
        return self.scale * self.table.lookup(layer, self.batch, c_in, c_out)


class CostGraph:
    """Which group feeds each layer's input and which holds its outputs, so a cost model
    can price a structure given only the kept channel count of every group."""

    def __init__(self, layers: Sequence[Layer], groups: Sequence[ChannelGroup]):
        self.layers = list(layers)
        self.groups = {g.name: g for g in groups}
        names = {layer.name for layer in self.layers}
        self.out_group: Dict[str, str] = {}
        # (group, input features per channel): a flatten maps one channel to several
        self.in_share: Dict[str, List[Tuple[str, float]]] = {layer.name: [] for layer in self.layers}
        for g in groups:
            for m in g.members:
                if m.module not in names:
                    continue
                if m.dim == 0:
                    self.out_group[m.module] = g.name
                else:
                    self.in_share[m.module].append((g.name, len(m.idxs) / g.size))

    def active(self, counts: Dict[str, int]) -> Dict[str, Tuple[int, int]]:
        """Active (c_in, c_out) of each layer with ``counts`` channels kept per group."""
        out = {}
        for layer in self.layers:
            ci = layer.c_in - sum((self.groups[g].size - counts[g]) * per for g, per in self.in_share[layer.name])
            go = self.out_group.get(layer.name)
            co = counts[go] if go is not None else layer.c_out
            out[layer.name] = (int(round(ci)), co)
        return out

    def predict(self, cost: "CostModel", counts: Dict[str, int]) -> float:
        """Predicted latency (ms) or MMACs of the structure."""
        act = self.active(counts)
        return cost.offset + float(sum(float(cost(layer.name, *act[layer.name])) for layer in self.layers))

    def group_costs(self, cost: "CostModel", counts: Dict[str, int], group: str, js) -> np.ndarray:
        """C_g(j): the cost of the layers whose outputs are ``group`` when it keeps j channels,
        inputs at their current counts (HALP's T^l(p^{l−1}, j), summed over coupled layers)."""
        act = self.active(counts)
        js = np.asarray(js, dtype=np.float64)
        total = np.zeros_like(js)
        for layer in self.layers:
            if self.out_group.get(layer.name) == group:
                total = total + cost(layer.name, act[layer.name][0], js)
        return total

    def fixed_cost(self, cost: "CostModel", counts: Dict[str, int]) -> float:
        """Cost of the layers whose outputs belong to no prunable group, plus the model's
        fixed overhead."""
        act = self.active(counts)
        return cost.offset + float(sum(float(cost(layer.name, *act[layer.name])) for layer in self.layers
                                       if layer.name not in self.out_group))


def measure_model(model: nn.Module, example: torch.Tensor, warmup: int = 3, repeats: int = 10,
                  clock: str = "wall") -> Dict[str, float]:
    """Latency (ms, median) and throughput (images/s) of ``model`` on ``example``'s device."""
    was_training = model.training
    model.eval()
    try:
        ms = time_callable(lambda: model(example), example.device, warmup, repeats, clock)
    finally:
        model.train(was_training)
    return {"latency_ms": ms, "throughput_ips": example.shape[0] / (ms / 1e3)}


def count_macs(layers: Iterable[Layer], act: Dict[str, Tuple[int, int]]) -> float:
    """MACs per sample of the Conv/Linear layers at the given active channel counts."""
    return float(sum(float(layer.macs(*act[layer.name])) for layer in layers))


def count_params(model: nn.Module) -> int:
    """Non-zero parameters (a masked or slimmed model counts only what it keeps)."""
    return int(sum(int((p != 0).sum()) for p in model.parameters()))
