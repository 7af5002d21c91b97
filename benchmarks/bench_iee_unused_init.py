"""Why IEE fell short of RigL in short MNIST-1D runs: what never-active weights explore from.

IEE's Reactivate & Explore brings every inactive weight back at its most-recently-used
value. Weights that were never active have none; taking their random value at
construction (``unused_init=weights``) puts a tenth of them back at init magnitude, as
large as trained weights, and magnitude growth then favours them for their size.
``unused_init=zero`` (the default) explores them from 0.

Same model, data order, recipe and seeds for every variant (the harness's recipe without
its per-epoch evaluation, to keep it short): SGD momentum 0.9, lr 0.1 cosine, wd 5e-4,
batch 128, 10% ERK, RigL ΔT = IEE H = J = Q = 25.

    .venv/bin/python benchmarks/bench_iee_unused_init.py --epochs 60 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

import regrow
from regrow.train.data import load_dataset
from regrow.train.models import build_model

VARIANTS = {
    "rigl": ("rigl", {}),
    "iee (unused_init=zero)": ("iee", {"unused_init": "zero"}),
    "iee (unused_init=weights)": ("iee", {"unused_init": "weights"}),
}


def tensors(ds):
    return (torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor([int(ds[i][1]) for i in range(len(ds))]))


def run(method, opts, args, bundle, train, test, seed):
    xs, ys = train
    spe = len(ys) // args.batch_size
    total = args.epochs * spe
    torch.manual_seed(seed)
    model = build_model(args.model, bundle.input_shape, bundle.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    k = args.interval
    cfg = dict(density=args.density, total_steps=total, seed=seed, **opts)
    cfg.update(update_interval=k) if method == "rigl" else cfg.update(H=k, J=k, Q=k)
    m = regrow.create(method, model, opt, **cfg)
    g = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        perm = torch.randperm(len(ys), generator=g)
        model.train()
        for i in range(spe):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            m.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test[0]).argmax(1) == test[1]).float().mean().item()
    surv = [r["survival_rate"] for r in m.pop_metrics() if "survival_rate" in r]
    return acc, surv


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn1d")
    ap.add_argument("--data", default="mnist1d")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--interval", type=int, default=25)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_dataset(args.data, seed=0, augment=False)
    train, test = tensors(bundle.train), tensors(bundle.test)
    seeds = [int(s) for s in args.seeds.split(",")]
    res = {v: [] for v in VARIANTS}
    for seed in seeds:
        for v, (method, opts) in VARIANTS.items():
            t0 = time.perf_counter()
            acc, surv = run(method, opts, args, bundle, train, test, seed)
            res[v].append((acc, surv))
            print(f"seed {seed} {v:27s} top-1 {100 * acc:.2f}  mean survival "
                  f"{statistics.mean(surv) if surv else float('nan'):.3f} over {len(surv)} updates "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n{args.model} on {args.data}, {args.epochs} epochs, density {args.density} ERK, "
          f"RigL ΔT = IEE H = J = Q = {args.interval}, seeds {args.seeds}\n")
    print("| variant | test top-1 (%) | per seed | mean survival rate |")
    print("|---|---|---|---|")
    for v, rs in res.items():
        accs = [100 * a for a, _ in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        surv = [x for _, s in rs for x in s]
        print(f"| {v} | {statistics.mean(accs):.2f} ± {sd:.2f} | {', '.join(f'{a:.1f}' for a in accs)} "
              f"| {statistics.mean(surv):.3f} |")


if __name__ == "__main__":
    main()
