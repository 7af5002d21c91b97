"""``regrow bench``: whole-model latency of dense vs every export format, side by side.

For each batch size the models run interleaved (:func:`regrow.deploy.select.time_alternating`:
one chunk of each per round, rotating order, medians), together with a *control pair*: a
second, identical copy of the dense model. Its ratio to dense should be 1.00; how far it
strays is the noise of this machine at that moment, and speedups inside that band mean
nothing. "csr (by hand)" is what a user writes without regrow: every sparse layer as
``torch.sparse.mm`` on ``weight.to_sparse_csr()`` (int64 indices), whatever the batch.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .api import export, sparse_layers
from .select import time_alternating


class HandCSR(nn.Module):
    """The baseline a user writes by hand: ``torch.sparse.mm(W.to_sparse_csr(), xᵀ)ᵀ + b``."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], layout: str, stride=()):
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support.*")
            self.w = weight.detach().contiguous().to_sparse_csr()
        self.b = None if bias is None else bias.detach()
        self.layout, self.stride = layout, tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "conv":
            if any(s != 1 for s in self.stride):
                x = x[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in self.stride)]
            moved = x.movedim(1, -1)
            y = torch.sparse.mm(self.w, moved.reshape(-1, moved.shape[-1]).t()).t()
            y = y if self.b is None else y + self.b
            return y.reshape(*moved.shape[:-1], -1).movedim(-1, 1)
        y = torch.sparse.mm(self.w, x.reshape(-1, x.shape[-1]).t()).t()
        y = y if self.b is None else y + self.b
        return y.reshape(*x.shape[:-1], -1)


def hand_csr(model: nn.Module, masks=None) -> nn.Module:
    from .api import _set_module

    out = copy.deepcopy(model).eval()
    for layer in sparse_layers(model, masks):
        _set_module(out, layer.name, HandCSR(layer.weight, layer.bias, layer.layout, layer.stride))
    return out


def bench(model: nn.Module, input_shape: Sequence[int], formats: Sequence[str] = ("sparse", "fanin"),
          batch_sizes: Sequence[int] = (1, 128), threads: Optional[int] = 1, repeats: int = 21,
          masks: Optional[Mapping[str, torch.Tensor]] = None, extra: Optional[Dict[str, nn.Module]] = None,
          hand: bool = True, rtol: float = 1e-5, atol: float = 1e-5) -> Dict[str, Any]:
    """Time ``model`` (dense, masked) against its exports in ``formats`` at each batch size.

    Returns ``{"rows": [{"batch", "model", "ms", "speedup"}], "skipped": {format: why},
    "threads"}``; ``speedup`` is dense ms / model ms, measured in the same interleaved run.
    ``extra``: more models to time alongside (e.g. a channel-slimmed one)."""
    model = model.eval()
    bs = list(batch_sizes)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        models: Dict[str, nn.Module] = {"dense": model, "dense (control)": copy.deepcopy(model)}
        if hand:
            models["csr (by hand)"] = hand_csr(model, masks)
        skipped: Dict[str, str] = {}
        for fmt in formats:
            try:
                models[f"regrow {fmt}"] = export(model, format=fmt, input_shape=input_shape, batch_sizes=bs,
                                                 masks=masks, threads=threads, rtol=rtol, atol=atol).model
            except ValueError as e:
                skipped[fmt] = str(e)
        models.update(extra or {})
        rows: List[Dict[str, Any]] = []
        p0 = next(model.parameters())
        for b in bs:
            x = torch.randn((b,) + tuple(input_shape), device=p0.device, dtype=p0.dtype)
            fns = {name: (lambda mod=mod: mod(x)) for name, mod in models.items()}
            if p0.device.type == "cuda":   # time the kernels, not their launch
                fns = {k: (lambda f=f: (f(), torch.cuda.synchronize())) for k, f in fns.items()}
            with torch.no_grad():
                t = time_alternating(fns, repeats=repeats, warmup=3, target_ms=5.0)
            for name, ms in t.items():
                rows.append({"batch": b, "model": name, "ms": ms, "speedup": t["dense"] / ms})
    finally:
        torch.set_num_threads(old)
    return {"rows": rows, "skipped": skipped, "threads": threads or torch.get_num_threads()}


def table(result: Mapping[str, Any]) -> str:
    """Markdown: one row per model, ms and speedup over dense per batch size."""
    rows = result["rows"]
    batches = sorted({r["batch"] for r in rows})
    names = list(dict.fromkeys(r["model"] for r in rows))
    head = "| model | " + " | ".join(f"batch {b} ms | ×dense" for b in batches) + " |"
    sep = "|---|" + "---:|---:|" * len(batches)
    lines = [head, sep]
    for n in names:
        cells = []
        for b in batches:
            r = next(r for r in rows if r["model"] == n and r["batch"] == b)
            cells.append(f"{r['ms']:.3f} | {r['speedup']:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    for fmt, why in result.get("skipped", {}).items():
        lines.append(f"\n{fmt}: skipped ({why})")
    return "\n".join(lines)


def plot(result: Mapping[str, Any], path: str, title: str = "") -> None:
    """Grouped bars: speedup over dense per model, one group per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    batches = sorted({r["batch"] for r in rows})
    names = [n for n in dict.fromkeys(r["model"] for r in rows) if n != "dense"]
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(names) * len(batches) / 2, 3.6))
    width = 0.8 / max(1, len(batches))
    for i, b in enumerate(batches):
        vals = [next(r["speedup"] for r in rows if r["model"] == n and r["batch"] == b) for n in names]
        ax.bar([j + i * width for j in range(len(names))], vals, width, label=f"batch {b}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + width * (len(batches) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("speedup over dense (×)")
    ax.set_title(title or f"{result['threads']} thread(s), medians of interleaved repeats")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
