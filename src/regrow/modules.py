"""Which tensors of a model are sparse, and along which dimension their inputs run.

A *sparse layer* is a module whose ``weight`` multiplies its input features; each
layer type declares the weight dimension that holds them (its *input dimension*), so
per-row structures such as N:M (Mishra et al. 2021: N of every M consecutive weights
along the input dimension) run along the right axis whatever the storage layout:

========================================  ==================  ===============
layer                                     weight              input dimension
========================================  ==================  ===============
``nn.Linear``                             ``[out, in]``       1
``nn.Conv1d/2d/3d``                       ``[out, in, *k]``   1
``transformers.pytorch_utils.Conv1D``     ``[in, out]``       0
a class with ``regrow_input_dim = d``     any                 ``d``
========================================  ==================  ===============

HF ``Conv1D`` (GPT-2's attention and MLP projections) is recognised without importing
transformers: a model holding one has imported it already.

Discovery (:func:`find_sparse_weights`) walks every alias of every tensor, so that

* a tensor reachable under several names (tied weights, a module used twice) is
  sparsified once, under one name, and ``include``/``exclude`` patterns match any of
  its names (``lm_head.weight`` on GPT-2, which ``named_parameters()`` hides);
* by default a weight that is the same tensor as an ``nn.Embedding`` table (BERT's
  decoder, GPT-2's ``lm_head``) stays dense, with a warning naming both: masking it
  would sparsify the embedding table too;
* by default a frozen weight (``requires_grad=False``) stays dense, with a warning:
  it gets no gradient, so sparse training cannot train or regrow it.

An explicit ``include`` pattern is what the user asked for: a tied or frozen weight it
names is sparsified (still with a warning saying what that implies).
"""
from __future__ import annotations

import fnmatch
import os
import sys
import warnings
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

# torch's own sparse layers (weights [out, in, *kernel]); see layer_input_dim for the rest
SPARSE_MODULES: Tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
EMBEDDINGS: Tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag)
# (module, class) of HF transformers' GPT-style linear layer, weight [in, out]
HF_CONV1D = ("transformers.pytorch_utils", "Conv1D")

DEFAULT_LAYERS = "Conv/Linear weights and HF Conv1D weights"


class SparseWeight(NamedTuple):
    """One tensor to sparsify: the parameter, the dimension of its input features, and
    every name it has in the model (the key it is stored under first)."""

    param: nn.Parameter
    input_dim: int
    aliases: Tuple[str, ...]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _hf_conv1d() -> Optional[type]:
    mod = sys.modules.get(HF_CONV1D[0])
    return getattr(mod, HF_CONV1D[1], None) if mod is not None else None


def layer_input_dim(module: nn.Module) -> Optional[int]:
    """The weight dimension holding the input features if ``module`` is a sparse layer
    (see the module docstring), else ``None``."""
    declared = getattr(type(module), "regrow_input_dim", None)
    if declared is not None:
        return int(declared)
    if isinstance(module, SPARSE_MODULES):
        return 1
    conv1d = _hf_conv1d()
    if conv1d is not None and isinstance(module, conv1d):
        return 0
    return None


def is_sparse_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer whose ``weight`` is sparse by default."""
    return layer_input_dim(module) is not None and isinstance(getattr(module, "weight", None), nn.Parameter)


def warn_user(message: str) -> None:
    """A UserWarning attributed to the first caller outside regrow and torch (the user's
    line: e.g. their ``optimizer.step()`` when the method runs from the optimizer's hooks)."""
    packages = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules[__package__], torch))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(packages):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _matches(names: Iterable[str], patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(n, pat) for n in names for pat in patterns)


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    return ", ".join(names) if names else "none"


def find_sparse_weights(model: nn.Module, include: Sequence[str] = (),
                        exclude: Sequence[str] = ()) -> Dict[str, SparseWeight]:
    """The tensors to sparsify, keyed by the name they were selected under.

    Default (``include`` empty): the weight of every sparse layer (:func:`layer_input_dim`),
    in module order, minus frozen weights and weights tied to an ``nn.Embedding`` (each
    skipped with a ``UserWarning``). With ``include``: every parameter one of whose names
    matches an ``include`` pattern, in parameter order, keyed by its first matching name.
    Then any tensor one of whose names matches an ``exclude`` pattern is removed. Every
    tensor appears once, however many names it has. Raises ``ValueError`` when nothing
    is left, saying what was found and why each was dropped.
    """
    model = unwrap(model)
    include, exclude = tuple(include), tuple(exclude)
    # every name of every tensor, in registration order
    aliases: Dict[int, List[str]] = {}
    by_id: Dict[int, nn.Parameter] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(n)
        by_id[id(p)] = p
    # what the layers owning a tensor say about it
    dims: Dict[int, Dict[int, str]] = {}      # id -> {input dim: layer weight name}
    embedded: Dict[int, str] = {}             # id -> name as an embedding table
    layer_order: List[Tuple[int, str]] = []   # (id, name) of sparse-layer weights
    for mn, mod in model.named_modules(remove_duplicate=False):
        w = getattr(mod, "weight", None)
        if not isinstance(w, nn.Parameter):
            continue
        name = _join(mn, "weight")
        if isinstance(mod, EMBEDDINGS):
            embedded.setdefault(id(w), name)
        d = layer_input_dim(mod)
        if d is not None:
            if not -w.dim() <= d < max(w.dim(), 1):
                raise ValueError(f"layer '{mn}' ({type(mod).__name__}) declares input dimension {d}, "
                                 f"but its weight has shape {tuple(w.shape)}")
            dims.setdefault(id(w), {})[d % max(w.dim(), 1)] = name
            layer_order.append((id(w), name))

    def input_dim(pid: int) -> int:
        declared = dims.get(pid, {})
        if len(declared) > 1:
            first = aliases[pid][0]
            where = "; ".join(f"'{n}' says {d}" for d, n in sorted(declared.items()))
            raise ValueError(f"the layers sharing tensor '{first}' disagree on its input "
                             f"dimension ({where}); leave it dense with exclude=['{first}']")
        if declared:
            return next(iter(declared))
        return 1 if by_id[pid].dim() >= 2 else 0   # [out, in, ...] by convention

    # candidates in order, each tensor once, under the name it was selected by
    candidates: Dict[int, str] = {}
    if include:
        for pid, names in aliases.items():
            hit = [n for n in names if _matches([n], include)]
            if hit:
                candidates[pid] = hit[0]
    else:
        for pid, name in layer_order:
            candidates.setdefault(pid, name)   # a tensor reached again: sparsified once
    out: Dict[str, SparseWeight] = {}
    excluded: List[str] = []
    frozen: List[str] = []
    tied: List[Tuple[str, str]] = []
    for pid, name in candidates.items():
        if exclude and _matches(aliases[pid], exclude):
            excluded.append(name)
            continue
        if pid in embedded:
            if not include:
                tied.append((name, embedded[pid]))
                continue
            if embedded[pid] != name:
                warn_user(f"'{name}' is the same tensor as embedding '{embedded[pid]}': include= sparsifies both")
        if not by_id[pid].requires_grad:
            if not include:
                frozen.append(name)
                continue
            warn_user(f"'{name}' is frozen (requires_grad=False) but include= names it: its mask is "
                  f"applied, yet it gets no gradient to train or regrow by")
        out[name] = SparseWeight(by_id[pid], input_dim(pid), tuple(aliases[pid]))
    for name, emb in tied:
        warn_user(f"'{name}' is the same tensor as embedding '{emb}' (tied weights): it stays dense, "
              f"since masking it would sparsify the embedding table too; name it in include= "
              f"to sparsify both")
    if frozen:
        warn_user(f"frozen weight(s) (requires_grad=False) stay dense: {_listing(frozen)}; unfreeze "
              f"them before building the method, or name them in include=")
    found = list(candidates.values())
    if not out:
        what = f"include={list(include)}" if include else f"the default ({DEFAULT_LAYERS})"
        parts = [f"found: {_listing(found)}"]
        if excluded:
            parts.append(f"removed by exclude={list(exclude)}: {_listing(excluded)}")
        if tied:
            parts.append("tied to an embedding (kept dense): "
                         + _listing(f"{a} = {b}" for a, b in tied))
        if frozen:
            parts.append(f"frozen (requires_grad=False): {_listing(frozen)}")
        raise ValueError(f"model {type(model).__name__} has nothing to sparsify with {what}: "
                         + "; ".join(parts))
    return out


def sparse_parameters(model: nn.Module, include: Sequence[str] = (),
                      exclude: Sequence[str] = ()) -> Dict[str, nn.Parameter]:
    """Parameters to sparsify, by name (see :func:`find_sparse_weights`)."""
    return {n: w.param for n, w in find_sparse_weights(model, include, exclude).items()}


def check_in_optimizer(params: Dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer]) -> None:
    """Raise ``ValueError`` naming every sparse parameter the optimizer does not update
    (its mask could never be kept true by the optimizer step)."""
    if optimizer is None:
        return
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [n for n, p in params.items() if id(p) not in held]
    if missing:
        raise ValueError(
            f"sparse weight(s) not in the optimizer: {_listing(missing)}; build the optimizer over "
            f"them (e.g. model.parameters()) or leave them dense with exclude={missing}")


def to_canonical(t: torch.Tensor, input_dim: int) -> torch.Tensor:
    """A view of ``t`` as ``[out, in, ...]`` (input features in dim 1); ``t`` itself when
    they already are."""
    if input_dim == 1 or t.dim() < 2:
        return t
    return t.movedim(input_dim, 1)


def from_canonical(t: torch.Tensor, input_dim: int) -> torch.Tensor:
    """Inverse of :func:`to_canonical`, contiguous in the parameter's own layout."""
    if input_dim == 1 or t.dim() < 2:
        return t
    return t.movedim(1, input_dim).contiguous()
