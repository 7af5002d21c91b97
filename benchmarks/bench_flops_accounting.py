"""Training FLOPs in both accountings for a recorded recipe, without training.

The ledger's figures depend only on the schedule and the per-layer active counts, not on
the data, for every unstructured method here except OptG (whose global sort decides
which layers are dense), so the same model and method are driven with random gradients
for the recipe's number of steps and the ledger reports:

* paper: the accounting of IEE appendix §3 (``train_flops_relative``);
* physical: what each step needs with sparse kernels (``train_flops_physical_relative``):
  different only in IEE's Reactivate & Explore, where Θ_P is live (3·ζ_D − ζ_P per sample
  instead of 2·ζ_P + ζ_D).

    .venv/bin/python benchmarks/bench_flops_accounting.py            # the two quality grids
    .venv/bin/python benchmarks/bench_flops_accounting.py --grid mnist1d --methods iee,rigl
"""
from __future__ import annotations

import argparse
import math

import torch

import regrow
from regrow.cost import FlopsLedger
from regrow.train.models import build_model

# the recipes of benchmarks/RESULTS.md's quality grid (§ "1. Quality grid")
GRIDS = {
    "mnist1d": dict(model="cnn1d", input_shape=(1, 40), classes=10, train=4000, batch=128, epochs=60,
                    optg_epoch=32),
    "fashion-mnist": dict(model="lenet5", input_shape=(1, 28, 28), classes=10, train=60000, batch=128,
                          epochs=3, optg_epoch=30),
}
OPTIONS = {"iee": dict(H=10, J=10, Q=10), "set": dict(update_interval=30), "rigl": dict(update_interval=30),
           "dst_ee": dict(update_interval=30), "static": {}}


def simulate(grid: dict, method: str, density: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_model(grid["model"], grid["input_shape"], grid["classes"])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    steps_per_epoch = math.ceil(grid["train"] / grid["batch"])
    total = steps_per_epoch * grid["epochs"]
    opts = dict(OPTIONS.get(method, {}))
    if method == "optg":
        opts["epoch_steps"] = grid["optg_epoch"]
    else:
        opts["distribution"] = "erk"
    m = regrow.create(method, model, opt, density=density, total_steps=total, seed=seed, **opts)
    ledger = FlopsLedger(model, m, grid["input_shape"])
    g = torch.Generator().manual_seed(seed)
    for _ in range(total):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g) * 1e-2
        opt.step()
        ledger.record_step(grid["batch"])
    return {"paper": ledger.relative, "physical": ledger.physical_relative, "steps": total}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="mnist1d,fashion-mnist")
    ap.add_argument("--methods", default="static,set,rigl,dst_ee,iee,optg")
    ap.add_argument("--densities", default="0.1,0.05")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.grid.split(","):
        grid = GRIDS[name]
        print(f"\n{name}: {grid['model']}, {grid['epochs']} epochs, batch {grid['batch']}")
        print("| density | method | train FLOPs, paper (× dense) | physical (× dense) | physical / paper |")
        print("|---|---|---|---|---|")
        for d in (float(x) for x in args.densities.split(",")):
            for method in args.methods.split(","):
                r = simulate(grid, method, d)
                print(f"| {d:g} | {method} | {r['paper']:.3f} | {r['physical']:.3f} | "
                      f"{r['physical'] / r['paper']:.2f} |")


if __name__ == "__main__":
    main()
