"""Latency table quality on this device (issue 6 benchmarks).

1. Builds (or reuses) a latency table for the model and times how long it took.
2. Predicted vs measured latency of the dense model and of ``--structures`` random
   slimmed structures (each group keeps a uniform-random 20–100% of its channels).
3. For each latency target (fraction of the dense prediction): HALP's knapsack with
   Taylor-on-BN importance from a few batches of random data, slim, measure; reports
   measured / target and the measured speedup over dense.

All timings are medians of ``--repeats`` runs after warm-up, dense and slim measured
side by side in one process. On a shared machine concurrent load distorts them.

    .venv/bin/python benchmarks/bench_latency.py --model resnet20 --batch-size 64
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

import regrow
from regrow.structured.latency import LatencyTable, build_table, measure_model, model_key, model_layers
from regrow.structured.slim import slim_copy
from regrow.train.models import build_model


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--input-shape", default="3,32,32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--table", default="latency-cache/resnet20_b64_cpuclock.json")
    ap.add_argument("--points", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--structures", type=int, default=5)
    ap.add_argument("--targets", default="0.5,0.3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1: a preempted worker thread cannot stall a parallel region)")
    ap.add_argument("--clock", default="wall", help="wall | cpu (thread CPU time; needs --threads 1)")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="torch.set_flush_denormal(True) for table and measurements (CPU kernels that "
                         "meet denormals run several times slower, and unevenly)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    shape = tuple(int(s) for s in args.input_shape.split(","))
    dev = torch.device("cpu")
    model = build_model(args.model, shape, 10)
    layers = model_layers(model, torch.zeros((1,) + shape))
    t0 = time.perf_counter()
    table = LatencyTable.load(args.table, dev) if os.path.exists(args.table) else None
    table = build_table(layers, args.batch_size, dev, args.points, repeats=10, table=table,
                        progress=False, clock=args.clock, model=model, input_shape=shape)
    table.save(args.table)
    overhead = table.overheads[model_key(layers, args.batch_size)]
    print(f"table: {len(table.entries)} signatures, {time.perf_counter() - t0:.1f} s (0 s if cached) on "
          f"{table.device}, clock {table.clock}; model overhead: latency = {overhead['scale']:.3f} x table "
          f"+ {overhead['offset']:.2f} ms")

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    meth = regrow.create("halp", model, opt, input_shape=shape, latency_table=args.table,
                         latency_batch=args.batch_size, latency_target=0.99, prune_steps=1, prune_interval=1)
    x = torch.randn((args.batch_size,) + shape)
    model.eval()
    dense = measure_model(model, x, repeats=args.repeats, clock=args.clock)["latency_ms"]
    print(f"dense: predicted {meth.dense_cost:.2f} ms, measured {dense:.2f} ms, "
          f"ratio {dense / meth.dense_cost:.3f}")
    g = torch.Generator().manual_seed(args.seed)
    errs = []
    for i in range(args.structures):
        ch = {}
        for grp in meth.groups:
            frac = 0.2 + 0.8 * float(torch.rand((), generator=g))
            k = max(1, int(round(frac * grp.size)))
            c = torch.zeros(grp.size, dtype=torch.bool)
            c[torch.randperm(grp.size, generator=g)[:k]] = True
            ch[grp.name] = c
        slim, _ = slim_copy(model, meth.groups, ch)
        pred = meth.predicted_cost(ch)
        meas = measure_model(slim.eval(), x, repeats=args.repeats, clock=args.clock)["latency_ms"]
        errs.append(meas / pred - 1)
        print(f"random structure {i}: predicted {pred:.2f} ms, measured {meas:.2f} ms, "
              f"error {100 * (meas / pred - 1):+.1f}%")
    print(f"max |error| {100 * max(abs(e) for e in errs):.1f}%")

    # importance from a few batches of random labels: enough to exercise the pipeline
    model.train()
    y = torch.randint(0, 10, (args.batch_size,))
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        meth.accumulate_importance()
        opt.zero_grad()
    model.eval()
    for t in (float(s) for s in args.targets.split(",")):
        budget = t * meth.dense_cost
        none = {k: c & False for k, c in meth.channels.items()}
        lo = {grp.name: 1 for grp in meth.groups}
        try:
            ch = meth.knapsack(meth.state.buffers["importance"], meth.channels, none, budget, lo)
        except ValueError as e:
            print(f"target {t}: {e}")
            continue
        slim, _ = slim_copy(model, meth.groups, ch)
        reps = []
        for _ in range(3):  # dense and slim alternated, medians of medians
            reps.append((measure_model(model, x, repeats=args.repeats, clock=args.clock)["latency_ms"],
                         measure_model(slim.eval(), x, repeats=args.repeats, clock=args.clock)["latency_ms"]))
        d = sorted(r[0] for r in reps)[1]
        s = sorted(r[1] for r in reps)[1]
        target_ms = t * d
        print(f"target {t}: predicted {meth.predicted_cost(ch):.2f} ms (budget {budget:.2f}); measured slim {s:.2f} ms "
              f"vs dense {d:.2f} ms -> {s / target_ms:.3f}x target, speedup {d / s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
