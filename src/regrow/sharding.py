"""Sparse training on FSDP2-sharded models (``torch.distributed.fsdp.fully_shard``).

Under FSDP2 every parameter is a ``DTensor`` (``Shard(0)`` over the data-parallel
mesh): each rank holds a slice of rows. regrow keeps every per-weight piece of
sparsity state the same way — masks, dormant values, DST-EE's counters, OptG's
scores, IEE's snapshots and accumulated scores are DTensors with the parameter's
mesh and placements — so masking, dormant bookkeeping and optimizer-state zeroing
are element-wise operations on the local shards, with no communication.

A structure decision needs the whole layer, and runs the single-process selection
unchanged on it (per-layer top-k, ``global`` across layers, exact counts, lowest-index
ties), so a sharded run chooses exactly the masks a single-process run chooses (random
scores come from the same seeded generator on every rank). Per-layer selections
(:func:`select_layers`) are dealt out to the ranks: the owner of a layer gathers its
scores and mask (to itself alone), selects, and scatters the rows of the new mask back,
so each rank computes 1/N of the selections and holds one layer whole at a time.
``global`` selections (and OptG's, which are global) gather nothing
(:func:`global_select`): the k-th best score over all shards comes from a radix select
on all-reduced histograms, and the ties at it are shared out in index order (or drawn
at random, as OptG does, with the same single draw) from all-gathered tie counts.
Layouts other than row shards over a 1-D mesh fall back to gathering (:func:`full`)
and keeping this rank's rows (:func:`shard_like`).

Everything here is the identity on ordinary tensors: without FSDP nothing changes.
"""
from __future__ import annotations

import bisect
import math
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


def all_reduce_ints(values, group) -> list:
    """Sums of integers over the ranks of ``group``, in one all-reduce."""
    import torch.distributed as dist

    n = torch.tensor(list(values), dtype=torch.int64)
    if dist.get_backend(group) == "nccl":
        n = n.cuda()   # NCCL reduces CUDA tensors only
    dist.all_reduce(n, group=group)
    return [int(v) for v in n.tolist()]


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


def check_current(model: torch.nn.Module, params: Dict[str, torch.Tensor]) -> None:
    """Raise a ValueError when the model was ``fully_shard``-ed after the method was
    built: FSDP2 replaced its parameters, and masks applied to the old ones would never
    reach the model (the stale-reference failure of other libraries under FSDP)."""
    if any(is_sharded(p) for p in model.parameters()) and not all(is_sharded(p) for p in params.values()):
        raise ValueError("the model was sharded (fully_shard) after the sparsity method was built, so the "
                         "method holds parameters the model no longer uses; call fully_shard first, then "
                         "build the optimizer and the method on the sharded model")


def mesh_of(model: torch.nn.Module):
    """The device mesh of a model's FSDP2-sharded parameters (None when none is sharded)."""
    for p in model.parameters():
        if is_sharded(p):
            return p.device_mesh
    return None


def _row_split(ref) -> Optional[tuple]:
    """(group, ranks' row counts, chunk) when ``ref`` is a DTensor split by rows over a
    1-D mesh (FSDP2's layout); None for any other layout."""
    if not is_sharded(ref) or ref.device_mesh.ndim != 1 or not ref.placements[0].is_shard(0):
        return None
    world = ref.device_mesh.size()
    rows = ref.shape[0]
    chunk = -(-rows // world)   # torch.chunk's split, as Shard(0) lays rows out
    counts = [max(0, min(chunk, rows - r * chunk)) for r in range(world)]
    return ref.device_mesh.get_group(), counts, chunk


def _padded(t: torch.Tensor, chunk: int) -> torch.Tensor:
    t = t.contiguous()
    if t.shape[0] == chunk:
        return t
    pad = torch.zeros((chunk - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad])


def _gather_to(t: torch.Tensor, owner: int, split: tuple, me: int) -> Optional[torch.Tensor]:
    """The whole of the row-sharded ``t`` on group rank ``owner`` (None elsewhere); an
    ordinary tensor (the same on every rank) is already whole."""
    import torch.distributed as dist

    if not is_sharded(t):
        return t if me == owner else None
    group, counts, chunk = split
    local_t = t.to_local()
    is_bool = local_t.dtype == torch.bool   # sent as bytes: not every backend sends bool
    mine = _padded(local_t.view(torch.uint8) if is_bool else local_t, chunk)
    parts = [torch.empty_like(mine) for _ in counts] if me == owner else None
    dist.gather(mine, parts, dst=dist.get_global_rank(group, owner), group=group)
    if me != owner:
        return None
    whole = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return whole.view(torch.bool) if is_bool else whole


def _scatter_from(whole: Optional[torch.Tensor], owner: int, split: tuple, me: int, ref, dtype):
    """Rows of ``whole`` (held by group rank ``owner``) to every rank, as a DTensor laid
    out like ``ref``."""
    import torch.distributed as dist

    group, counts, chunk = split
    wire = torch.uint8 if dtype == torch.bool else dtype
    out = torch.empty((chunk, *ref.shape[1:]), dtype=wire, device=ref.to_local().device)
    parts = None
    if me == owner:
        w = whole.to(dtype)
        w = w.view(torch.uint8) if dtype == torch.bool else w
        parts = [_padded(w[r * chunk: r * chunk + c], chunk) for r, c in enumerate(counts)]
    dist.scatter(out, parts, src=dist.get_global_rank(group, owner), group=group)
    mine = out[:counts[me]].contiguous()
    mine = mine.view(torch.bool) if dtype == torch.bool else mine
    return DTensor.from_local(mine, ref.device_mesh, ref.placements,
                              run_check=False, shape=ref.shape, stride=ref.stride())


def select_layers(fn, names, scores: Dict[str, torch.Tensor], masks: Optional[Dict[str, torch.Tensor]],
                  refs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``{n: fn(n, whole scores, whole mask)}`` for every name in ``names``: the per-layer
    selection of a single process, returned laid out like ``refs[n]``.

    Under FSDP2 (row shards over a 1-D mesh) the layers are dealt out to the ranks
    (largest first, each to the least loaded) and run in waves of one layer per rank:
    each rank gathers the scores and mask of its layer of the wave (``gather`` to it
    alone), runs ``fn`` on the whole layer while the others run theirs, and scatters the
    rows of the new mask back. Each rank then computes 1/N of the selections and holds
    one layer whole at a time. Ordinary tensors take the plain path."""
    import torch.distributed as dist

    names = list(names)
    splits = {n: _row_split(refs[n]) for n in names}
    plain = [n for n in names if splits[n] is None]
    out = {n: shard_like(fn(n, full(scores[n]), None if masks is None else full(masks[n])), refs[n])
           for n in plain}
    sharded = [n for n in names if splits[n] is not None]
    if not sharded:
        return out
    group = splits[sharded[0]][0]
    if any(splits[n][0] is not group for n in sharded):   # several meshes: one layer at a time
        return {**out, **{n: shard_like(fn(n, full(scores[n]), None if masks is None else full(masks[n])),
                                        refs[n]) for n in sharded}}
    world, me = dist.get_world_size(group), dist.get_rank(group)
    load, owned = [0] * world, [[] for _ in range(world)]
    for n in sorted(sharded, key=lambda n: (-refs[n].numel(), names.index(n))):
        r = min(range(world), key=lambda r: (load[r], r))
        load[r] += refs[n].numel()
        owned[r].append(n)
    for wave in range(max(len(o) for o in owned)):
        jobs = [(r, owned[r][wave]) for r in range(world) if wave < len(owned[r])]
        mine = None
        for r, n in jobs:   # the same sequence of collectives on every rank
            s = _gather_to(scores[n], r, splits[n], me)
            m = None if masks is None else _gather_to(masks[n], r, splits[n], me)
            if r == me:
                mine = (n, s, m)
        result = None
        if mine is not None:
            result = fn(mine[0], mine[1], mine[2])
        for r, n in jobs:
            out[n] = _scatter_from(result if r == me else None, r, splits[n], me, refs[n], torch.bool)
    return {n: out[n] for n in names}


# ---- global selection over row shards, without gathering --------------------------
_PREFILTER, _SAMPLE = 1 << 15, 1 << 12   # as regrow.structures: sample-based prefilter
def _keys(v: torch.Tensor, clean=None) -> torch.Tensor:
    """int64 keys ordered as the float values ``v`` (NaN ranked as -inf, -0.0 == 0.0;
    ``clean``: another mapping of the values first, as the caller's selection does)."""
    v = v.detach()
    if clean is not None:
        v = clean(v)
    d = torch.nan_to_num(v.to(torch.float64), nan=float("-inf"), posinf=float("inf"),
                         neginf=float("-inf")) + 0.0   # -0.0 -> +0.0
    b = d.view(torch.int64)
    return torch.where(b < 0, b ^ 0x7FFFFFFFFFFFFFFF, b)


def _rank_key(keys, r: int, group) -> int:
    """The ``r``-th smallest (1-based) of the keys held by every rank together: radix
    select on 16 bits at a time, one all-reduced histogram per round (4 rounds)."""
    import torch.distributed as dist

    cand = torch.cat(list(keys))
    found = 0
    for shift in (48, 32, 16, 0):
        b = ((cand >> 48) + 32768) if shift == 48 else ((cand >> shift) & 0xFFFF)
        hist = torch.bincount(b, minlength=65536).to(torch.int64)
        dist.all_reduce(hist, group=group)
        cum = torch.cumsum(hist, 0)
        bucket = int(torch.searchsorted(cum, torch.tensor([r], dtype=torch.int64, device=cum.device)).item())
        r -= int(cum[bucket - 1]) if bucket > 0 else 0
        cand = cand[b == bucket]
        found |= ((bucket - 32768) << 48) if shift == 48 else (bucket << shift)
    return found


def global_select(kind: str, scores: Dict[str, torch.Tensor], masks: Optional[Dict[str, torch.Tensor]],
                  k: int, refs: Dict[str, torch.Tensor], *, clean=None,
                  generator: Optional[torch.Generator] = None) -> Optional[Dict[str, torch.Tensor]]:
    """The ``global`` selection of :mod:`regrow.structures` over row-sharded layers, with
    no rank gathering any layer: ``kind`` is ``topk`` (the k highest scores), ``prune``
    (the mask without its k lowest-scored active entries) or ``grow`` (the mask with its k
    highest-scored inactive entries). NaN ranks as -inf; ties go to the lowest index of
    the layers concatenated in order, exactly as in one process. The k-th best value is
    found by a radix select on all-reduced histograms, the ties at it are shared out in
    index order (layer, then rank, then position) from all-gathered tie counts.

    ``generator``: ties at the k-th value are picked uniformly at random instead, by
    ``randperm`` over all of them in index order (as OptG's ``topk_random_ties`` draws in
    one process); ``clean``: how the caller maps values before ranking.

    Returns None unless every layer is a DTensor split by rows over one 1-D mesh (the
    caller then gathers)."""
    import torch.distributed as dist

    names = list(refs)
    splits = [_row_split(refs[n]) for n in names]
    if not names or any(s is None for s in splits) or any(s[0] is not splits[0][0] for s in splits):
        return None
    group, world = splits[0][0], dist.get_world_size(splits[0][0])
    me = dist.get_rank(group)
    dev = refs[names[0]].to_local().device
    largest = kind != "prune"
    vals, cands, base = [], [], []
    for n, (_, counts, chunk) in zip(names, splits):
        s = scores[n]
        if is_sharded(s):
            s = s.to_local()
        else:   # the same whole tensor on every rank: this rank's rows
            s = s[me * chunk: me * chunk + counts[me]]
        v = s.detach().reshape(-1).to(dev)
        v = clean(v) if clean is not None else v
        vals.append(torch.nan_to_num(v if v.is_floating_point() else v.float(), nan=float("-inf"),
                                     posinf=float("inf"), neginf=float("-inf")))
        if masks is None:
            cands.append(None)
            base.append(torch.zeros(v.numel(), dtype=torch.bool, device=dev))
        else:
            m = local(masks[n]).reshape(-1).to(dev)
            base.append(m.clone())
            cands.append(m if kind == "prune" else ~m)
    n_local = [v.numel() if c is None else count_local(c) for v, c in zip(vals, cands)]
    n_cand = sum(all_reduce_ints([sum(n_local)], group))
    if 0 < k < n_cand and n_cand >= _PREFILTER and k <= n_cand // 2:
        # a threshold from a sample of every rank's candidates keeps few of them; when at
        # least k survive, every winner and every tie competing with it is among them
        stride = max(1, sum(n_local) // _SAMPLE)
        mine = torch.cat([v[::stride] if c is None else v[::stride][c[::stride]] for v, c in zip(vals, cands)])
        every: list = [None] * world
        dist.all_gather_object(every, mine.cpu(), group=group)
        sample = torch.cat(every).to(torch.float64)
        size = sample.numel()
        p = k / n_cand
        r = min(size, int(math.ceil(p * size * 1.1 + 4.0 * math.sqrt(p * size) + 8)))
        if size:
            t0 = float(torch.kthvalue(sample, size - r + 1 if largest else r).values)
            keep = [(v >= t0) if largest else (v <= t0) for v in vals]
            keep = [kp if c is None else kp & c for kp, c in zip(keep, cands)]
            if sum(all_reduce_ints([sum(count_local(kp) for kp in keep)], group)) >= k:
                cands = keep
    pos = [None if c is None else torch.nonzero(c).squeeze(1) for c in cands]
    keys = [_keys(v if i is None else v[i]) for v, i in zip(vals, pos)]
    n_used = sum(all_reduce_ints([sum(k_.numel() for k_ in keys)], group))
    if k <= 0 or n_cand == 0:
        chosen = [torch.zeros(k_.numel(), dtype=torch.bool, device=dev) for k_ in keys]
    elif k >= n_cand:
        chosen = [torch.ones(k_.numel(), dtype=torch.bool, device=dev) for k_ in keys]
    else:
        t = _rank_key(keys, n_used - k + 1 if largest else k, group)
        better = [(k_ > t) if largest else (k_ < t) for k_ in keys]
        need = k - sum(all_reduce_ints([int(b.sum()) for b in better], group))
        ties = [torch.nonzero(k_ == t).squeeze(1) for k_ in keys]
        mine = torch.tensor([x.numel() for x in ties], dtype=torch.int64, device=dev)
        every = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(every, mine, group=group)
        counts = torch.stack(every).tolist()   # [rank][layer]
        picked = None
        if generator is not None and need > 0:   # OptG: uniformly random ties, one draw
            total = sum(map(sum, counts))
            perm = torch.randperm(total, generator=generator, device=generator.device)[:need]
            picked = perm.sort().values.tolist()
        chosen, offset = [], 0
        for li, (b, tie) in enumerate(zip(better, ties)):
            for r in range(world):   # ties in index order: this layer's rows rank by rank
                c = counts[r][li]
                if picked is None:
                    take = min(need, c)
                    if r == me:
                        b = b.clone()
                        b[tie[:take]] = True
                    need -= take
                elif r == me:
                    lo, hi = bisect.bisect_left(picked, offset), bisect.bisect_left(picked, offset + c)
                    b = b.clone()
                    b[tie[torch.tensor(picked[lo:hi], dtype=torch.int64, device=tie.device) - offset]] = True
                offset += c
            chosen.append(b)
    out = {}
    for n, c, idx, m in zip(names, chosen, pos, base):
        hit = c if idx is None else idx[c]
        m[hit] = kind != "prune"
        ref = refs[n]
        local_out = m.view(ref.to_local().shape).to(ref.to_local().device)
        out[n] = DTensor.from_local(local_out, ref.device_mesh, ref.placements, run_check=False,
                                    shape=ref.shape, stride=ref.stride())
    return out
