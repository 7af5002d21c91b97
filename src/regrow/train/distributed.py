"""Process-group setup, the data order, and cross-rank consistency checks.

``torchrun --nproc_per_node=N -m regrow train ...`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; :func:`setup` then starts DDP with NCCL on CUDA and gloo on CPU.
A plain ``python -m regrow`` run is world size 1 and touches no process group.

The data order is a pure function of (seed, epoch): :class:`GlobalBatchSampler`
draws one permutation per epoch from a CPU generator seeded with both, cuts it into
global batches of ``batch_size`` (the last incomplete batch is dropped so every
optimizer step sees the same number of samples), gives rank r the samples
r, r + N, r + 2N, ... of each global batch (like ``DistributedSampler``), and splits
those into ``grad_accum`` micro-batches. Resuming mid-epoch skips the steps already
taken, so the data order is restored exactly.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; allowed here: cpu, auto")
        if name == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device: str = "auto", timeout: Optional[float] = None) -> Context:
    """Join the process group when launched by torchrun; pick this rank's device.
    ``timeout``: seconds a collective waits for every rank (``--dist-timeout``; torch's
    default is 30 minutes, which a stopped rank makes the others sit through)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        kw = {} if timeout is None else {"timeout": datetime.timedelta(seconds=float(timeout))}
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **kw)
    return Context(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_sum(ctx: Context, values: Sequence[float]) -> List[float]:
    """Sum floats over ranks (float64, so counts stay exact)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_int(ctx: Context, value: int) -> List[int]:
    if not ctx.distributed:
        return [int(value)]
    t = torch.tensor([int(value)], dtype=torch.int64, device=ctx.device)
    out = [torch.zeros_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [int(o.item()) for o in out]


def all_gather_floats(ctx: Context, values: Sequence[float]) -> List[List[float]]:
    """Every rank's ``values`` (float64, exact), in rank order."""
    if not ctx.distributed:
        return [[float(v) for v in values]]
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    out = [torch.zeros_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]


class RankMismatch(RuntimeError):
    """Ranks disagree on something that must be identical (mask checksums)."""


def check_same(values: Sequence[int], what: str, step: int) -> None:
    """Raise when ranks disagree (e.g. mask checksums after a structure update)."""
    if len(set(values)) > 1:
        detail = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise RankMismatch(
            f"{what} differ across ranks at step {step} ({detail}); the ranks no longer "
            "train the same sparse model (non-identical seeds, data or non-deterministic scores)"
        )


def check_masks(ctx: Context, checksum: int, step: int) -> List[int]:
    values = all_gather_int(ctx, checksum)
    check_same(values, "mask checksums", step)
    return values


def broadcast_flag(ctx: Context, flag: bool) -> bool:
    """True on every rank when any rank set it (used to stop all ranks together)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Micro-batches of indices for this rank; the order is a function of (seed, epoch).

    Yields ``steps_per_epoch * grad_accum`` lists; ``set_epoch(e, skip_steps=k)``
    starts epoch e after its first k optimizer steps.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1, shuffle: bool = True):
        per_rank, rem = divmod(batch_size, world_size * grad_accum)
        if rem or per_rank == 0:
            raise ValueError(
                f"batch_size {batch_size} must be a positive multiple of world size x grad_accum "
                f"= {world_size} x {grad_accum}"
            )
        if n < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the training set ({n} samples)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.grad_accum, self.shuffle = rank, world_size, grad_accum, shuffle
        self.micro = per_rank
        self.epoch, self.skip_steps = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        self.epoch, self.skip_steps = epoch, skip_steps

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def index_batches(self) -> Iterator[torch.Tensor]:
        """The micro-batches as index tensors (for in-memory tensor datasets)."""
        perm = self.order(self.epoch)
        for s in range(self.skip_steps, self.steps_per_epoch):
            batch = perm[s * self.batch_size:(s + 1) * self.batch_size]
            mine = batch[self.rank::self.world_size] if self.world_size > 1 else batch
            if self.grad_accum == 1:
                yield mine
                continue
            for a in range(self.grad_accum):
                yield mine[a * self.micro:(a + 1) * self.micro]

    def __iter__(self) -> Iterator[List[int]]:
        for idx in self.index_batches():
            yield idx.tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.skip_steps) * self.grad_accum


def fsdp_blocks(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The units ``--fsdp`` shards one by one: the elements of every ``nn.ModuleList``
    (transformer blocks, residual stages), else every module that holds a Linear, Conv or
    Embedding weight of its own; innermost first, as ``fully_shard`` needs children
    sharded before their parents."""
    from torch import nn

    blocks = [b for m in model.modules() if isinstance(m, nn.ModuleList) for b in m]
    if not blocks:
        leaf = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
        blocks = [m for m in model.modules() if m is not model and isinstance(m, leaf)]
    order = {id(m): i for i, m in enumerate(model.modules())}
    return sorted(blocks, key=lambda m: -order[id(m)])


def shard_model(model: torch.nn.Module, ctx: Context, amp: bool = False) -> torch.nn.Module:
    """FSDP2 (``fully_shard``) over all ranks: every block of :func:`fsdp_blocks`, then the
    root. With ``amp`` on CUDA a ``MixedPrecisionPolicy`` gathers parameters in bfloat16
    and reduces gradients in float32; on CPU everything stays float32. Parameters become
    ``DTensor`` row shards; build the optimizer and the sparsity method afterwards."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {}
    if amp and ctx.device.type == "cuda":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in fsdp_blocks(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model
