"""Training step time before and after in-training slimming (issue 6 benchmark).

HALP (FLOPs cost, one pruning step) prunes a model to ``--target`` of its dense MACs;
then training steps are timed on the masked network (dense kernels over zeroed
channels), the model is slimmed in place (``method.slim_now()``, optimizer state
carried over), and the same steps are timed again. Median of ``--repeats`` blocks of
``--steps`` steps each, one torch thread, CPU time of the thread (other processes' load
inflates it less than wall time).

    .venv/bin/python benchmarks/bench_slim_training.py --model resnet20 --target 0.5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import regrow
from regrow.train.models import build_model


def block_time(model, opt, meth, x, y, steps: int) -> float:
    t0 = time.thread_time()
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        meth.step()
        opt.zero_grad()
    return (time.thread_time() - t0) / steps * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--input-shape", default="3,32,32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = tuple(int(s) for s in args.input_shape.split(","))
    model = build_model(args.model, shape, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    meth = regrow.create("halp", model, opt, input_shape=shape, cost="flops", latency_target=args.target,
                         prune_steps=1, prune_interval=1)
    x, y = torch.randn((args.batch_size,) + shape), torch.randint(0, 10, (args.batch_size,))
    model.train()
    block_time(model, opt, meth, x, y, 1)  # the pruning step
    s = meth.summary()
    before = statistics.median(block_time(model, opt, meth, x, y, args.steps) for _ in range(args.repeats))
    meth.slim_now()
    after = statistics.median(block_time(model, opt, meth, x, y, args.steps) for _ in range(args.repeats))
    print(f"{args.model} {shape} batch {args.batch_size}: MACs {s['macs'] / s['macs_dense']:.3f} of dense, "
          f"params {s['params']}/{s['params_dense']}")
    print(f"train step: masked {before:.1f} ms, slimmed {after:.1f} ms -> {before / after:.2f}x faster "
          f"(median of {args.repeats} x {args.steps} steps, thread CPU time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
