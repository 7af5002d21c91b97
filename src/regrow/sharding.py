"""Sparse training on FSDP2-sharded models (``torch.distributed.fsdp.fully_shard``).

Under FSDP2 every parameter is a ``DTensor`` (``Shard(0)`` over the data-parallel
mesh): each rank holds a slice of rows. regrow keeps every per-weight piece of
sparsity state the same way — masks, dormant values, DST-EE's counters, OptG's
scores, IEE's snapshots and accumulated scores are DTensors with the parameter's
mesh and placements — so masking, dormant bookkeeping and optimizer-state zeroing
are element-wise operations on the local shards, with no communication.

A structure decision needs the whole layer: :func:`full` gathers one layer's scores
and mask (``DTensor.full_tensor()``, an all-gather), the single-process selection
runs unchanged on the full tensors (per-layer top-k, ``global`` across layers, exact
counts, lowest-index ties), and :func:`shard_like` keeps this rank's rows of the
result. Every rank gathers the same tensors and draws random scores from the same
seeded generator, so every rank chooses the same mask, which is the mask a
single-process run chooses. Per-layer selections gather one layer at a time;
``global`` selections (and OptG, which is global) gather every sparse layer's scores
for the duration of the update.

Everything here is the identity on ordinary tensors: without FSDP nothing changes.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

try:  # torch.distributed may be absent from a build
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = None  # type: ignore[assignment,misc]
    distribute_tensor = None  # type: ignore[assignment]


def is_sharded(t: object) -> bool:
    """Whether ``t`` is a ``DTensor`` (an FSDP2 parameter or state shaped like one)."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; an ordinary tensor itself."""
    return t.to_local() if is_sharded(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for DTensors: call it on every rank)."""
    return t.full_tensor() if is_sharded(t) else t


def full_dict(d: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: full(v) for k, v in d.items()}


def shard_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` (the same whole tensor on every rank) laid out like ``ref``: this rank's
    slice as a DTensor with ``ref``'s mesh and placements, without communication; ``t``
    itself when ``ref`` is an ordinary tensor (or ``t`` is already a DTensor)."""
    if not is_sharded(ref) or is_sharded(t):
        return t
    if tuple(t.shape) != tuple(ref.shape):
        raise ValueError(f"cannot shard a tensor of shape {tuple(t.shape)} like one of shape {tuple(ref.shape)}")
    # src_data_rank=None: every rank already holds the same tensor, so each keeps its slice
    return distribute_tensor(t, ref.device_mesh, ref.placements, src_data_rank=None)


def shard_dict_like(d: Dict[str, torch.Tensor], refs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: shard_like(v, refs[k]) if k in refs else v for k, v in d.items()}


def zeros_like_param(p: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Zeros shaped (and, for a DTensor, sharded) like ``p``."""
    return torch.zeros_like(p.detach(), dtype=dtype if dtype is not None else p.dtype)


def count_local(mask: torch.Tensor) -> int:
    """True entries of this rank's shard of a bool mask (no communication)."""
    m = local(mask).detach()
    if m.device.type == "cpu" and m.dtype == torch.bool:
        return int(np.count_nonzero(m.numpy()))
    return int(torch.count_nonzero(m))


def count_global(mask: torch.Tensor) -> int:
    """True entries of a sharded bool mask over all ranks (an all-reduce of one integer)."""
    import torch.distributed as dist

    n = torch.tensor([count_local(mask)], dtype=torch.int64, device=local(mask).device)
    dist.all_reduce(n, group=mask.device_mesh.get_group())
    return int(n.item())


def local_bytes(tensors) -> int:
    """Bytes of this rank's storage of ``tensors`` (local shards of DTensors)."""
    return sum(local(t).numel() * local(t).element_size() for t in tensors)


def check_shardable(method: str, structures, model: torch.nn.Module) -> None:
    """Raise a ValueError when an FSDP2-sharded model meets a method regrow cannot shard:
    channel methods change whole channels (and slim the model physically), which
    FSDP2's row shards do not support."""
    if "channel" in structures and any(is_sharded(p) for p in model.parameters()):
        raise ValueError(f"method '{method}' (structure 'channel') does not run on an FSDP2-sharded "
                         "model (fully_shard); under FSDP2 use an unstructured or N:M method: dense, "
                         "static, snip, set, rigl, gmp, dst_ee, optg, iee, asp")


def mesh_of(model: torch.nn.Module):
    """The device mesh of a model's FSDP2-sharded parameters (None when none is sharded)."""
    for p in model.parameters():
        if is_sharded(p):
            return p.device_mesh
    return None
