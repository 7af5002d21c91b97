"""FSDP2 (``fully_shard``) against DDP for sparse training: per-rank memory and the
structure-update time (issue 14, item 1).

Run under torchrun with two ranks (gloo on CPU, NCCL on CUDA):

    torchrun --standalone --nproc_per_node=2 benchmarks/bench_fsdp.py [--layers 14 --width 768]

Model: the GPT-2 architecture of regrow's ``gpt_small`` grown to ``--layers`` × ``--width``
(14 × 768, 12 heads, byte vocabulary, 128 positions: 99.4M parameters). For each method
it builds the model under DDP and under FSDP2 (every transformer block, then the root,
as ``regrow train --fsdp`` does), takes one AdamW step (so the optimizer state exists)
and counts, on every rank, the bytes of the tensors that rank holds (local shards of
DTensors): parameters, masks, sparsity state (dormant values, DST-EE counters, IEE
snapshots, the mask tracker) and optimizer state. Gradients and DDP's buckets are not
counted (they are freed or transient). Goal: FSDP2 ≤ 0.55× DDP's bytes per rank.

Then the time of one RigL structure update (grow scores read, drop and grow over every
layer, commit with optimizer-state zeroing and metrics) per rank, FSDP2 on two ranks
against the same update in one process on an unsharded copy (rank 0, while rank 1
waits), alternating, median of ``--repeats``; with the ERK distribution (per-layer
selections) and with ``global`` (one ranking over all layers). One torch thread per
process.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

import regrow
from regrow.sharding import local_bytes
from regrow.train import distributed as dist_utils
from regrow.train.models import build_model

VOCAB, BLOCK = 256, 128


def make_model(args):
    torch.manual_seed(0)
    return build_model("gpt_small", (BLOCK,), VOCAB, n_layer=args.layers, n_embd=args.width, n_head=args.heads)


def method_options(name: str, density: float):
    opts = {"density": density, "total_steps": 10_000, "seed": 0}
    if name in ("rigl", "dst_ee", "set"):
        opts["update_interval"] = 100
    return opts


def build(args, name: str, mode: str, ctx, **extra):
    """mode: ``ddp`` | ``fsdp`` | ``single`` (an unsharded model in this process alone)."""
    model = make_model(args).to(ctx.device)
    net = model
    if mode == "fsdp":
        dist_utils.shard_model(model, ctx)
    elif mode == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    method = regrow.create(name, model, opt, **{**method_options(name, args.density), **extra})
    return model, net, opt, method


def batch(args, ctx):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (args.batch, args.seq + 1), generator=g).to(ctx.device)
    return x[:, :-1], x[:, 1:]


def backward(net, args, ctx):
    x, y = batch(args, ctx)
    F.cross_entropy(net(x).reshape(-1, VOCAB), y.reshape(-1)).backward()


def unique(tensors):
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def rank_bytes(model, opt, method):
    st = method.state
    state = list(st.dormant.values()) + [t for d in st.buffers.values() for t in d.values() if torch.is_tensor(t)]
    opt_state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "parameters": local_bytes(unique(model.parameters())),
        "masks": local_bytes(st.masks.values()),
        "sparsity state": local_bytes(state),
        "optimizer state": local_bytes(opt_state),
    }


def memory(args, name, mode, ctx):
    model, net, opt, method = build(args, name, mode, ctx)
    backward(net, args, ctx)
    opt.step()
    opt.zero_grad(set_to_none=True)
    out = rank_bytes(model, opt, method)
    n_params = sum(p.numel() for p in unique(model.parameters()))
    method.detach()
    del model, net, opt, method
    gc.collect()
    return out, n_params


def timed_update(method, net, args, ctx, step):
    """One RigL structure update at ``step`` (seconds on this rank)."""
    backward(net, args, ctx)
    method._grow_scores = method.grow_scores(step)
    t0 = time.perf_counter()
    method.after_step(step)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=14)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--methods", default="rigl,dst_ee,iee")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--distributions", default="erk,global", help="distributions of the timed RigL updates")
    args = p.parse_args()
    torch.set_num_threads(1)
    ctx = dist_utils.setup("auto")
    if ctx.world_size < 2:
        raise SystemExit("run under torchrun with --nproc_per_node=2 (or more)")
    main_rank = ctx.is_main

    def say(*a):
        if main_rank:
            print(*a, flush=True)

    say(f"world size {ctx.world_size}, device {ctx.device}, torch {torch.__version__}")
    rows = []
    for name in [m for m in args.methods.split(",") if m]:
        got = {}
        for mode in ("ddp", "fsdp"):
            b, n_params = memory(args, name, mode, ctx)
            worst = dist_utils.all_gather_floats(ctx, [sum(b.values())] + list(b.values()))
            got[mode] = max(worst, key=lambda r: r[0])   # the rank holding most
        keys = list(b)
        rows.append((name, n_params, keys, got))
        say(f"{name}: {n_params / 1e6:.1f}M parameters; per-rank bytes (max over ranks) DDP "
            f"{got['ddp'][0] / 2**20:.0f} MiB, FSDP2 {got['fsdp'][0] / 2**20:.0f} MiB: "
            f"{got['fsdp'][0] / got['ddp'][0]:.3f}x")

    if not rows:
        keys = []
    say("\n| method | parameters | " + " | ".join(f"{k} DDP / FSDP2 (MiB)" for k in keys)
        + " | total DDP / FSDP2 (MiB) | FSDP2 / DDP |")
    say("|---|---:|" + "---:|" * (len(keys) + 2))
    for name, n_params, keys, got in rows:
        cells = [f"{got['ddp'][i + 1] / 2**20:.0f} / {got['fsdp'][i + 1] / 2**20:.0f}" for i in range(len(keys))]
        say(f"| {name} | {n_params / 1e6:.1f}M | " + " | ".join(cells)
            + f" | {got['ddp'][0] / 2**20:.0f} / {got['fsdp'][0] / 2**20:.0f} | {got['fsdp'][0] / got['ddp'][0]:.3f} |")

    # ---- structure-update time: FSDP2 (2 ranks) vs one process, alternating -------------
    for distribution in args.distributions.split(","):
        _, fnet, fopt, fmethod = build(args, "rigl", "fsdp", ctx, distribution=distribution)
        single = build(args, "rigl", "single", ctx, distribution=distribution) if main_rank else None
        t_fsdp, t_single = [], []
        step = 100
        for _ in range(args.repeats):
            dist.barrier()
            mine = timed_update(fmethod, fnet, args, ctx, step)
            t_fsdp.append(max(dist_utils.all_gather_floats(ctx, [mine]))[0])
            fopt.zero_grad(set_to_none=True)
            dist.barrier()
            if main_rank:
                _, snet, sopt, smethod = single
                t_single.append(timed_update(smethod, snet, args, ctx, step))
                sopt.zero_grad(set_to_none=True)
            dist.barrier()
        if main_rank:
            mf, ms = statistics.median(t_fsdp), statistics.median(t_single)
            say(f"\nRigL structure update, {distribution}, at step {step} (density {args.density}), median of "
                f"{args.repeats} alternating repeats, 1 thread per process:")
            say(f"  FSDP2, 2 ranks (slowest rank): {mf:.3f} s  (all: {', '.join(f'{t:.3f}' for t in t_fsdp)})")
            say(f"  one process, unsharded:        {ms:.3f} s  (all: {', '.join(f'{t:.3f}' for t in t_single)})")
            say(f"  FSDP2 / one process: {mf / ms:.2f}x")
        fmethod.detach()
        del fnet, fopt, fmethod, single
        gc.collect()
    dist_utils.teardown(ctx)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
