"""`SparseState`: every piece of mutable sparsity state, in one place.

Masks are bool tensors keyed by parameter FQN. Target counts are integers so that
"exact density" has one meaning. Dormant values (the most recently used values of
inactive weights, IEE §3.1 "MRU") and per-method tensors/counters are optional and
only exist for methods that need them.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch

from .sharding import all_reduce_ints, count_global, count_local, full, is_sharded, shard_like

_SCHEMA = "regrow.SparseState/1"


def count_true(mask: torch.Tensor) -> int:
    """Number of True entries of a bool tensor (numpy's count on CPU: ~6x torch's); of
    the whole tensor for an FSDP2-sharded one (a collective: call it on every rank)."""
    if is_sharded(mask):
        return count_global(mask)
    if mask.device.type == "cpu" and mask.dtype == torch.bool:
        return int(np.count_nonzero(mask.detach().numpy()))
    return int(torch.count_nonzero(mask))


def count_true_each(masks) -> list:
    """:func:`count_true` of each mask; FSDP2-sharded masks are counted together in one
    all-reduce (a collective: call it on every rank), not one each."""
    counts, sharded, group = [], [], None
    for m in masks:   # streamed: each mask (often a temporary) is counted and let go
        if is_sharded(m):
            g = m.device_mesh.get_group()
            if group is not None and g is not group:   # another mesh: counted on its own
                counts.append(count_true(m))
                continue
            group = g
            sharded.append(len(counts))
            counts.append(count_local(m))
        else:
            counts.append(count_true(m))
    if sharded:
        for i, total in zip(sharded, all_reduce_ints([counts[i] for i in sharded], group)):
            counts[i] = total
    return counts


def count_true_sum(masks) -> int:
    """Σ :func:`count_true` over ``masks`` (one all-reduce for sharded masks)."""
    return sum(count_true_each(masks))


@dataclass
class SparseState:
    """Every piece of mutable sparsity state: masks and target counts keyed by parameter
    name, the step, dormant values and per-method buffers and counters;
    ``state_dict()`` holds all of it for a bit-exact resume."""

    masks: Dict[str, torch.Tensor]
    targets: Dict[str, int]
    step: int = 0
    dormant: Dict[str, torch.Tensor] = field(default_factory=dict)
    buffers: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)
    counters: Dict[str, Any] = field(default_factory=dict)

    # ---- derived views -------------------------------------------------------
    def numel(self, name: str) -> int:
        return self.masks[name].numel()

    def active(self, name: str) -> int:
        return count_true(self.masks[name])

    def density(self, name: Optional[str] = None) -> float:
        """Density of one tensor, or of all sparse tensors together."""
        if name is not None:
            return self.active(name) / self.numel(name)
        total = sum(m.numel() for m in self.masks.values())
        return count_true_sum(self.masks.values()) / total

    def target_density(self, name: Optional[str] = None) -> float:
        if name is not None:
            return self.targets[name] / self.numel(name)
        total = sum(m.numel() for m in self.masks.values())
        return sum(self.targets.values()) / total

    def layer_densities(self) -> Dict[str, float]:
        counts = count_true_each(self.masks.values())
        return {n: c / self.numel(n) for n, c in zip(self.masks, counts)}

    # ---- persistence ---------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "schema": _SCHEMA,
            "masks": {k: v.detach().clone() for k, v in self.masks.items()},
            "targets": dict(self.targets),
            "step": self.step,
            "dormant": {k: v.detach().clone() for k, v in self.dormant.items()},
            "buffers": {
                b: {k: v.detach().clone() for k, v in d.items()} for b, d in self.buffers.items()
            },
            "counters": copy.deepcopy(self.counters),
        }

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        if not isinstance(sd, dict) or sd.get("schema") != _SCHEMA:
            raise ValueError(
                f"not a regrow SparseState state_dict (expected schema '{_SCHEMA}', "
                f"got {sd.get('schema') if isinstance(sd, dict) else type(sd).__name__!r})"
            )
        if set(sd["masks"]) != set(self.masks):
            missing = sorted(set(self.masks) - set(sd["masks"]))
            extra = sorted(set(sd["masks"]) - set(self.masks))
            raise ValueError(
                f"SparseState masks do not match this model: missing {missing}, unexpected {extra}"
            )
        for k, m in sd["masks"].items():
            if m.shape != self.masks[k].shape:
                raise ValueError(
                    f"mask '{k}' has shape {tuple(m.shape)} in the checkpoint "
                    f"but {tuple(self.masks[k].shape)} in the model"
                )
            self.masks[k] = _like(m.to(self.masks[k].device, torch.bool).clone(), self.masks[k])
        like = dict(self.masks)
        self.targets = dict(sd["targets"])
        self.step = int(sd["step"])
        self.dormant = {k: _like(v.to(like[k].device if k in like else v.device).clone(), like.get(k))
                        for k, v in sd["dormant"].items()}
        self.buffers = {
            b: {k: _like(v.to(like[k].device if k in like else v.device).clone(), like.get(k))
                for k, v in d.items()}
            for b, d in sd["buffers"].items()
        }
        self.counters = copy.deepcopy(sd["counters"])


def _like(value: torch.Tensor, ref: Optional[torch.Tensor]) -> torch.Tensor:
    """A loaded tensor laid out like this model's (a whole tensor from a checkpoint of an
    unsharded run, loaded into an FSDP2 one, keeps this rank's shard; a per-weight
    tensor of a sharded run loaded unsharded is gathered)."""
    if ref is None or value.shape != ref.shape:
        return value
    if is_sharded(ref):
        return shard_like(value, ref)
    return full(value)


def mask_checksum(masks: Dict[str, torch.Tensor]) -> int:
    """CRC32 over every mask's packed bits, in name order.

    Cheap enough to compare across ranks at every structure update: equal
    checksums mean (with overwhelming probability) identical masks. FSDP2-sharded masks
    are gathered one at a time (a collective), so the checksum is the whole mask's,
    equal to a single-process run's.
    """
    crc = 0
    for name in sorted(masks):
        crc = zlib.crc32(name.encode(), crc)
        bits = np.packbits(full(masks[name]).detach().to("cpu", torch.bool).numpy().ravel())
        crc = zlib.crc32(bits.tobytes(), crc)
    return crc


def check_masks_synchronized(masks: Dict[str, torch.Tensor], group: Any = None) -> int:
    """Compare :func:`mask_checksum` across the ranks of ``group`` and return it.

    Every rank must make the same mask decision (scores from synchronised tensors,
    random draws from identically seeded generators); a divergence here means some
    score was computed from rank-local data. Raises RuntimeError naming every rank's
    checksum when they differ; without an initialised process group it only returns
    the local checksum. Collective: call it on every rank.
    """
    crc = mask_checksum(masks)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return crc
    world = dist.get_world_size(group)
    sums: list = [None] * world
    dist.all_gather_object(sums, crc, group=group)
    if len(set(sums)) > 1:
        raise RuntimeError(f"sparsity masks differ across ranks: checksums by rank {sums}")
    return crc
