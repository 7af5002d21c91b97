"""``regrow.export`` (code in ``regrow.deploy``): turn a masked model into one that holds (and runs) compressed weights.

Formats:

* ``sparse`` — every sparse Linear, HF ``Conv1D`` and 1×1 convolution becomes CSR (or BSR
  where blocks pay) if, measured on this device at the caller's batch sizes, that beats
  dense; otherwise it stays dense (:func:`regrow.export.select.choose`).
* ``fanin`` — constant fan-in layers (structure ``fanin``) condensed to values and indices
  ``[out, k]``; a sparse layer whose k differs between neurons is an error.
* ``nm`` — 2:4 layers as NVIDIA's semi-structured tensors (CUDA only; a clear error
  elsewhere), chosen per layer and batch size by measurement like ``sparse``: where the
  2:4 kernel loses (on an H200 with torch 2.11, cuSPARSELt spends ~0.45 ms of CPU a call
  setting up, so it loses everywhere but at very large products) the layer stays dense.
* ``slim`` — channel slimming (:mod:`regrow.structured.slim`; needs the channel masks). The
  CLI's ``--format slim`` keeps writing the torch-only fx GraphModule it always wrote.

Every format is checked against the masked model (max |Δ| ≤ ``atol`` + ``rtol``·|y| in
fp32) on a random input of the example's shape before anything is written. The file is a
dict of plain tensors, strings and numbers (``torch.load(weights_only=True)`` reads it);
:func:`load` rebuilds the model: from the caller's ``model`` instance, or, for models of
regrow's zoo (runs), from the stored builder.
"""
from __future__ import annotations

import copy
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..methods.base import unwrap
from .kernels import KERNELS, SparseLinear, check_nm, fanin_k, require_cuda
from .select import choose, rows_for, time_alternating

FORMATS = ("slim", "sparse", "nm", "fanin")
FILE_VERSION = 1
BSR_BLOCKS = (4, 8, 16)
BSR_MIN_FILL = 0.3   # below this fraction of non-zeros inside stored blocks BSR never paid here


# ---- which layers -----------------------------------------------------------------------
@dataclass
class Layer:
    """A layer that can become a :class:`SparseLinear`: its ``[out, in]`` weight view."""

    name: str
    module: nn.Module
    layout: str                   # linear | conv
    weight: torch.Tensor          # [out, in]
    bias: Optional[torch.Tensor]
    stride: Tuple[int, ...] = ()
    active: Optional[torch.Tensor] = None   # [out, in] bool
    rows_per_sample: float = 1.0

    @property
    def density(self) -> float:
        return float(self.active.float().mean())


def _is_hf_conv1d(mod: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D (GPT-2): weight [in, out], y = x @ W + b
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None


def _pointwise(mod: nn.Module) -> bool:
    if not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return False
    pad = mod.padding
    zero_pad = pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in pad))
    return (all(k == 1 for k in mod.kernel_size) and mod.groups == 1 and zero_pad
            and not isinstance(mod, nn.modules.conv._ConvTransposeNd))


def layer_view(name: str, mod: nn.Module) -> Optional[Layer]:
    """The ``[out, in]`` view of ``mod`` if it can be exported, else None."""
    if isinstance(mod, nn.Linear):
        return Layer(name, mod, "linear", mod.weight.detach(), mod.bias)
    if _is_hf_conv1d(mod):
        return Layer(name, mod, "linear", mod.weight.detach().t(), mod.bias)
    if _pointwise(mod):
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
        return Layer(name, mod, "conv", w, mod.bias, stride=tuple(mod.stride))
    return None


def _weight_name(layer: Layer) -> str:
    return f"{layer.name}.weight" if layer.name else "weight"


def sparse_layers(model: nn.Module, masks: Optional[Mapping[str, torch.Tensor]] = None) -> List[Layer]:
    """Exportable layers with inactive weights (mask given, or zeros in the weight)."""
    out = []
    for name, mod in model.named_modules():
        layer = layer_view(name, mod)
        if layer is None:
            continue
        m = None if masks is None else masks.get(_weight_name(layer))
        if m is not None:
            m = m.to(torch.bool)
            layer.active = (m.t() if _is_hf_conv1d(mod) else m.reshape(m.shape[0], -1)).to(layer.weight.device)
        else:
            layer.active = layer.weight != 0
        if not bool(layer.active.all()):
            out.append(layer)
    return out


def _record_inputs(model: nn.Module, layers: Sequence[Layer], example: torch.Tensor) -> None:
    """Rows of each layer's 2-D input per sample of ``example`` (from one forward)."""
    hooks, batch = [], example.shape[0]

    def hook(layer):
        def fn(mod, args):
            x = args[0]
            if layer.layout == "linear":
                rows = x.numel() // x.shape[-1]
            else:
                rows = x.shape[0] * int(torch.Size(
                    [-(-s // st) for s, st in zip(x.shape[2:], layer.stride)]).numel())
            layer.rows_per_sample = rows / batch
        return fn

    for layer in layers:
        hooks.append(layer.module.register_forward_pre_hook(hook(layer)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()


# ---- timing one layer ---------------------------------------------------------------------
def _candidates(layer: Layer, fmt: str, n: int, m: int) -> Dict[str, SparseLinear]:
    """Compressed versions of ``layer`` worth timing under ``fmt``."""
    w, b = layer.weight, layer.bias
    common = dict(layout="linear", name=layer.name, mask=layer.active)
    if fmt == "fanin":
        return {"fanin": SparseLinear.from_dense(w, b, "fanin", [(1, "mv")], **common)}
    if fmt == "nm":
        return {"nm": SparseLinear.from_dense(w, b, "nm", [(1, "mm")], n=n, m=m, **common)}
    out = {"csr": SparseLinear.from_dense(w, b, "csr", [(1, "mv")], **common)}
    for bs in BSR_BLOCKS:
        if w.shape[0] % bs or w.shape[1] % bs:
            continue
        blocks = layer.active.reshape(w.shape[0] // bs, bs, w.shape[1] // bs, bs).any(3).any(1)
        fill = float(layer.active.sum()) / max(1, int(blocks.sum()) * bs * bs)
        if fill >= BSR_MIN_FILL:
            out[f"bsr{bs}"] = SparseLinear.from_dense(w, b, "bsr", [(1, "spmm")], block=bs, **common)
    return out


def measure_layer(layer: Layer, cands: Mapping[str, SparseLinear], batch_sizes: Sequence[int],
                  repeats: int = 15) -> Dict[str, Dict[int, float]]:
    """ms per call of dense ``F.linear`` and of every candidate kernel, per batch size, on
    the layer's 2-D input (rows = batch · rows per sample), timed interleaved (fastest
    chunk: see :func:`time_alternating`)."""
    w = layer.weight.contiguous()
    b = None if layer.bias is None else layer.bias.detach()
    out: Dict[str, Dict[int, float]] = {"dense": {}}
    dev = w.device
    for bsz in batch_sizes:
        x = torch.randn(rows_for(bsz, layer.rows_per_sample), w.shape[1], device=dev, dtype=w.dtype)
        fns: Dict[str, Callable] = {"dense": lambda x=x: F.linear(x, w, b)}
        for fmt, mod in cands.items():
            for kn in KERNELS[mod.kind]:
                if kn == "mv" and x.shape[0] != 1:
                    continue
                fns[f"{fmt}:{kn}"] = lambda x=x, mod=mod, kn=kn: mod.matmul(x, kn)
        if dev.type == "cuda":   # time the kernels, not their launch
            fns = {k: (lambda f=f: (f(), torch.cuda.synchronize())) for k, f in fns.items()}
        with torch.no_grad():
            t = time_alternating(fns, repeats=repeats, stat="min")
        for k, v in t.items():
            out.setdefault(k, {})[bsz] = v
    return out


# ---- export --------------------------------------------------------------------------------
@dataclass
class Exported:
    """What :func:`export` returns: the model, the per-layer report and the file written."""

    model: nn.Module
    format: str
    layers: List[Dict[str, Any]] = field(default_factory=list)
    path: Optional[str] = None
    bytes_dense: int = 0
    bytes_export: int = 0
    max_abs_diff: float = 0.0

    def summary(self) -> Dict[str, Any]:
        return {"format": self.format, "path": self.path, "bytes_dense": self.bytes_dense,
                "bytes_export": self.bytes_export,
                "size_ratio": self.bytes_export / self.bytes_dense if self.bytes_dense else None,
                "max_abs_diff": self.max_abs_diff, "layers": self.layers}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _nbytes(state: Dict[str, Any]) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def _check_equal(ref: nn.Module, new: nn.Module, example: torch.Tensor, rtol: float, atol: float) -> float:
    with torch.no_grad():
        x = torch.randn_like(example) if example.is_floating_point() else example
        a, b = ref(x), new(x)
    a = a.logits if hasattr(a, "logits") else a
    b = b.logits if hasattr(b, "logits") else b
    diff = float((a.float() - b.float()).abs().max())
    bound = atol + rtol * float(a.float().abs().max())
    if not diff <= bound:
        raise ValueError(f"exported model differs from the masked one by {diff:.3g} > {bound:.3g} "
                         "(atol + rtol·max|y|); please report this as a bug")
    return diff


def export(model: nn.Module, path: Optional[str] = None, *, format: str = "sparse",
           example: Optional[torch.Tensor] = None, input_shape: Optional[Sequence[int]] = None,
           batch_sizes: Sequence[int] = (1,), masks: Optional[Mapping[str, torch.Tensor]] = None,
           timings: Optional[Mapping[str, Mapping[str, Mapping[int, float]]]] = None,
           threads: Optional[int] = 1, repeats: int = 15, n: int = 2, m: int = 4,
           builder: Optional[Dict[str, Any]] = None, rtol: float = 1e-5, atol: float = 1e-5,
           groups=None, channels=None) -> Exported:
    """Export the masked ``model`` (inactive weights exactly 0) in ``format``.

    example / input_shape: a model input (or the per-sample shape of one); needed to time
        1×1 convs and sequence models and to check the outputs.
    batch_sizes: the batch sizes the per-layer choice is measured at (``sparse``/``fanin``/``nm``).
    masks: ``{param name: bool mask}`` (e.g. ``method.state.masks``) when some active weight
        may be exactly 0; by default the non-zeros are the active weights.
    timings: ``{layer name: {candidate: {batch: ms}}}`` to decide without measuring
        (candidates ``dense``, ``csr:mv``, ``csr:ebag``, ``fanin:ebag``, ``bsr8:spmm``, ``nm:mm``...).
    threads: CPU threads while timing (1 resists a loaded machine best; None keeps).
    builder: ``{"model", "input_shape", "num_classes", "options"}`` of a regrow zoo model,
        stored so :func:`load` can rebuild it without the caller's code.
    Returns an :class:`Exported`; with ``path`` the file is written there and the per-layer
    report beside it (``path + ".json"``).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    bs = list(batch_sizes)
    if not bs or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bs):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    model = unwrap(model)
    if example is None:
        if input_shape is None:
            raise ValueError("export needs example (a model input) or input_shape (one sample's shape)")
        p0 = next(model.parameters())
        example = torch.zeros((1,) + tuple(input_shape), device=p0.device, dtype=p0.dtype)
    if format == "slim":
        return _export_slim(model, path, example, groups, channels, builder, rtol, atol)
    if format == "nm":
        require_cuda("format 'nm'")
        if example.device.type != "cuda":
            raise ValueError("format 'nm' runs on CUDA: move the model (and example) there first, "
                             "e.g. model.cuda()")
    was_training = model.training
    model.eval()
    try:
        return _export(model, path, format, example, bs, masks, timings, threads, repeats, n, m,
                       builder, rtol, atol)
    finally:
        model.train(was_training)


def _export(model, path, fmt, example, bs, masks, timings, threads, repeats, n, m, builder, rtol, atol):
    layers = sparse_layers(model, masks)
    if not layers:
        raise ValueError("nothing to export: no Linear, HF Conv1D or 1×1 convolution of "
                         f"{type(model).__name__} has inactive weights (train it sparse, or pass "
                         "masks=method.state.masks)")
    for layer in layers:   # every structural error before any timing
        if fmt == "fanin":
            fanin_k(layer.active, layer.name)
        elif fmt == "nm":
            check_nm(layer.active, n, m, layer.name)
    _record_inputs(model, layers, example)
    new = copy.deepcopy(model)
    report: List[Dict[str, Any]] = []
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for layer in layers:
            cands = _candidates(layer, fmt, n, m)
            t = timings[layer.name] if timings is not None and layer.name in timings else None
            if t is None:
                if timings is not None:
                    raise ValueError(f"timings lack layer '{layer.name}' (have {sorted(timings)})")
                t = measure_layer(layer, cands, bs, repeats)
            decision = choose(t)
            entry = {"layer": layer.name, "shape": list(layer.weight.shape), "layout": layer.layout,
                     "density": layer.density, "rows_per_sample": layer.rows_per_sample,
                     "dense_ms": {str(b): v for b, v in decision["dense_ms"].items()},
                     "sparse_ms": {str(b): v for b, v in decision["sparse_ms"].items()},
                     "best_sparse": decision.get("best_sparse", fmt), "chosen": decision["format"],
                     "kernels": {str(b): k for b, k in decision["kernels"]}}
            report.append(entry)
            if decision["format"] == "dense":
                continue
            mod = cands[decision["format"]]
            mod.set_kernels([(rows_for(b, layer.rows_per_sample), k) for b, k in decision["kernels"]])
            mod.layout, mod.stride = layer.layout, layer.stride
            _set_module(new, layer.name, mod)
    finally:
        torch.set_num_threads(old_threads)
    new.eval()
    out = Exported(model=new, format=fmt, layers=report)
    out.max_abs_diff = _check_equal(model, new, example, rtol, atol)
    payload = {"regrow_export": FILE_VERSION, "format": fmt,
               "layers": {e["layer"]: new.get_submodule(e["layer"]).spec()
                          for e in report if e["chosen"] != "dense"},
               "state_dict": {k: v.detach() for k, v in new.state_dict().items()},
               "builder": builder, "report": report}
    out.bytes_dense = _nbytes({k: v.detach() for k, v in model.state_dict().items()})
    out.bytes_export = _nbytes(payload)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        tmp = path + ".tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)
        out.path = path
        with open(path + ".json", "w") as f:
            json.dump(out.summary(), f, indent=1)
    return out


def _export_slim(model, path, example, groups, channels, builder, rtol, atol) -> Exported:
    """Channel slimming (:mod:`regrow.structured.slim`), saved as the kept indices plus the
    slimmed state_dict: :func:`load` cuts a fresh model the same way and loads it."""
    from ..structured.groups import find_groups
    from ..structured.slim import slim_copy

    if channels is None:
        raise ValueError("format 'slim' needs channels ({group name: bool keep mask}, e.g. a channel "
                         "method's state.buffers['channels'])")
    model.eval()
    groups = groups if groups is not None else find_groups(model, example)
    slim, kept = slim_copy(model, groups, channels)
    slim.eval()
    out = Exported(model=slim, format="slim")
    out.max_abs_diff = _check_equal(model, slim, example, rtol, max(atol, 1e-4))
    payload = {"regrow_export": FILE_VERSION, "format": "slim", "slimmed": kept, "layers": {},
               "state_dict": {k: v.detach() for k, v in slim.state_dict().items()}, "builder": builder,
               "report": []}
    out.bytes_dense = _nbytes({k: v.detach() for k, v in model.state_dict().items()})
    out.bytes_export = _nbytes(payload)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        torch.save(payload, path + ".tmp")
        os.replace(path + ".tmp", path)
        out.path = path
        with open(path + ".json", "w") as f:
            json.dump({**out.summary(), "slimmed": kept}, f, indent=1)
    return out


# ---- load --------------------------------------------------------------------------------------
def read(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The raw file (plain tensors and containers; no code is unpickled)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no exported model at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("regrow_export") != FILE_VERSION:
        raise ValueError(f"{path} is not a regrow export file (version {FILE_VERSION}); files of "
                         "`regrow export --format slim` hold an fx GraphModule: torch.load(weights_only=False)")
    return payload


def load(path: Union[str, os.PathLike], model: Optional[nn.Module] = None,
         map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild an exported model: ``model`` is an instance of the original architecture
    (its weights are replaced), or None to build the regrow zoo model stored in the file."""
    payload = read(path)
    if model is None:
        b = payload.get("builder")
        if not b:
            raise ValueError(f"{path} stores no model builder (exported from a model outside "
                             "regrow's zoo): pass model=<an instance of its architecture>")
        from ..train.models import build_model

        model = build_model(b["model"], tuple(b["input_shape"]), int(b["num_classes"]), **(b.get("options") or {}))
    model = unwrap(model)
    if payload.get("format") == "slim":
        from ..structured.slim import slim_

        slim_(model, payload["slimmed"])
    for name, spec in payload["layers"].items():
        try:
            model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"{path} replaces layer '{name}', which the given model does not have") from e
        _set_module(model, name, SparseLinear.from_spec(spec))
    model.load_state_dict(payload["state_dict"])
    for name in payload["layers"]:
        model.get_submodule(name).validate(name)
    return model.to(map_location).eval()
