"""Physical slimming: remove masked channels so the network really is smaller.

Given channel masks over the groups of :mod:`regrow.structured.groups`, every touched
Conv/Linear/BatchNorm keeps only the rows/columns/features of its kept channels
(``index_select`` into new Parameters that take the old ones' places in the optimizer,
with their per-parameter state sliced alongside), and the layer attributes (in/out channels,
groups of depthwise convs, num_features) follow. In eval mode the slimmed network
computes what the masked one does, because a masked channel is exactly zero
everywhere it flows (its producers' rows, biases, BN γ/β and statistics are zero).

For export the slimmed model is turned into a ``torch.fx.GraphModule`` whose
submodules are plain ``torch.nn`` layers, so ``torch.load(weights_only=False)`` needs
torch only — not regrow's model classes; a model fx cannot trace falls back to
TorchScript (``torch.jit.trace``, load with ``torch.jit.load``).
"""
from __future__ import annotations

import copy
import io
import json
import os
import pickletools
from typing import Dict, List, Optional, Sequence, Set

import torch
from torch import nn

from .groups import BN, CONV, ChannelGroup, dim_keeps, is_depthwise

Kept = Dict[str, Dict[str, Optional[List[int]]]]


def kept_indices(model: nn.Module, groups: Sequence[ChannelGroup], channels: Dict[str, torch.Tensor]) -> Kept:
    """Per touched module, the kept output (``out``) and input (``in``) indices (None: all)."""
    keeps = dim_keeps(model, groups, channels)
    f = lambda k: None if k is None else torch.nonzero(k).squeeze(1).tolist()  # noqa: E731
    return {name: {"out": f(k0), "in": f(k1)} for name, (k0, k1) in keeps.items()}


def _slice_param(mod: nn.Module, attr: str, optimizer, out_idx, in_idx) -> None:
    """Replace ``mod.attr`` by a new, smaller Parameter; move it (and its sliced state)
    into the optimizer in place of the old one. A new Parameter is needed: autograd
    remembers a leaf's shape, so resizing ``.data`` in place breaks the next backward."""
    p = getattr(mod, attr)
    old_shape = p.shape

    def cut(t: torch.Tensor) -> torch.Tensor:
        if out_idx is not None:
            t = t.index_select(0, out_idx.to(t.device))
        if in_idx is not None and t.dim() > 1:
            t = t.index_select(1, in_idx.to(t.device))
        return t.contiguous()

    with torch.no_grad():
        new = nn.Parameter(cut(p.detach()), requires_grad=p.requires_grad)
    setattr(mod, attr, new)
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [new if q is p else q for q in group["params"]]
    if p in optimizer.state:
        st = optimizer.state.pop(p)
        optimizer.state[new] = {k: cut(v) if torch.is_tensor(v) and v.shape == old_shape else v
                                for k, v in st.items()}


def slim_(model: nn.Module, kept: Kept, optimizer: Optional[torch.optim.Optimizer] = None) -> nn.Module:
    """Cut ``model`` in place down to ``kept`` (from :func:`kept_indices`); optimizer state
    tensors shaped like their parameter are sliced the same way."""
    modules = dict(model.named_modules())
    for name, k in kept.items():
        if name not in modules:
            raise ValueError(f"kept channels name module '{name}', which this model does not have")
        mod = modules[name]
        dev = mod.weight.device
        out_idx = None if k.get("out") is None else torch.tensor(k["out"], dtype=torch.long, device=dev)
        in_idx = None if k.get("in") is None else torch.tensor(k["in"], dtype=torch.long, device=dev)
        if isinstance(mod, BN):
            for attr in ("weight", "bias"):
                _slice_param(mod, attr, optimizer, out_idx, None)
            if out_idx is not None:
                if mod.running_mean is not None:
                    mod.running_mean = mod.running_mean.index_select(0, out_idx).contiguous()
                    mod.running_var = mod.running_var.index_select(0, out_idx).contiguous()
                mod.num_features = len(k["out"])
            continue
        dw = is_depthwise(mod)
        _slice_param(mod, "weight", optimizer, out_idx, None if dw else in_idx)
        if mod.bias is not None:
            _slice_param(mod, "bias", optimizer, out_idx, None)
        n_out = mod.weight.shape[0]
        if isinstance(mod, CONV):
            mod.out_channels = n_out
            if dw:
                mod.in_channels = mod.groups = n_out
            else:
                mod.in_channels = mod.weight.shape[1]
        else:
            mod.out_features, mod.in_features = n_out, mod.weight.shape[1]
    return model


def slim_copy(model: nn.Module, groups: Sequence[ChannelGroup], channels: Dict[str, torch.Tensor]):
    """A physically slimmed deep copy of ``model`` and the kept indices."""
    kept = kept_indices(model, groups, channels)
    return slim_(copy.deepcopy(model), kept), kept


def portable(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The model as an fx GraphModule of plain torch.nn layers (no regrow classes to
    unpickle); TorchScript via ``torch.jit.trace`` if fx cannot trace it."""
    model = model.eval()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow: fall back to tracing
        return torch.jit.trace(model, example)
    gm.eval()
    return gm


def pickle_modules(obj) -> Set[str]:
    """Python modules whose globals a ``torch.save`` of ``obj`` would reference."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    import zipfile

    buf.seek(0)
    with zipfile.ZipFile(buf) as z:
        data = z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])
    mods: Set[str] = set()
    strings: List[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            mods.add(str(arg).split(" ")[0])
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(arg))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            mods.add(strings[-2])
    return mods


def export(model: nn.Module, groups: Sequence[ChannelGroup], channels: Dict[str, torch.Tensor],
           example: torch.Tensor, out: str, atol: float = 1e-4) -> Dict[str, object]:
    """Slim, check eval outputs against the masked model (max |Δ| ≤ ``atol``), save the
    portable model to ``out`` and the kept channels to ``out`` + ``.json``."""
    masked = model.eval()
    slim, kept = slim_copy(model, groups, channels)
    slim.eval()
    with torch.no_grad():
        diff = float((masked(example) - slim(example)).abs().max())
    if not diff <= atol:
        raise ValueError(f"slimmed model differs from the masked one by {diff:.3g} > {atol}: some masked "
                         "channel is not exactly zero (was the model trained with the channel method?)")
    port = portable(slim, example)
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    if isinstance(port, torch.jit.ScriptModule):
        torch.jit.save(port, out)
        fmt = "torchscript"
    else:
        torch.save(port, out)
        fmt = "torch.save(fx.GraphModule)"
    info = {
        "format": fmt, "max_abs_diff": diff,
        "params_dense": sum(p.numel() for p in model.parameters()),
        "params_slim": sum(p.numel() for p in slim.parameters()),
        "groups": {g.name: {"size": g.size, "kept": torch.nonzero(channels[g.name]).squeeze(1).tolist()}
                   for g in groups},
        "layers": kept,
    }
    with open(out + ".json", "w") as f:
        json.dump(info, f, indent=1)
    return info
