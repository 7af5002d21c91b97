"""Whole-model CPU speed of regrow's exports vs dense (issue 13).

Models: the MLP 784-1024-1024-10 (LeNet-300-100 style; trained on 10 classes given by a random
linear teacher on Gaussian 784-d inputs: Fashion-MNIST is not installed on this machine) and
a transformer MLP block 512->2048->512 (GELU; tokens as the batch, trained to mimic a random
teacher block).
Each is trained briefly with RigL or IEE at density 0.1 / 0.05 under ERK or uniform
(speed does not depend on accuracy; the masks are real ones), exported with
``regrow.export(format="sparse", batch_sizes=[1, 128])`` and, for fan-in runs, also
``format="fanin"``, then timed with :func:`regrow.deploy.bench.bench`: dense, a second dense
copy (control pair: its ratio shows the noise), CSR by hand (``torch.sparse.mm`` on
``to_sparse_csr()``), a narrower dense model with as many weights (what channel slimming to
the same size would run), and the exports; one thread, interleaved rounds, medians.

    PYTHONPATH=src python benchmarks/bench_export_speed.py                  # the full grid
    PYTHONPATH=src python benchmarks/bench_export_speed.py --models mlp --methods rigl \
        --densities 0.1 --distributions uniform --structures fanin        # one cell
    PYTHONPATH=src python benchmarks/bench_export_speed.py --structures fanin --gamma-sal 1.0
                                          # fan-in with heavy neuron ablation (exported: alive rows)
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import regrow
from regrow.deploy.bench import bench

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support.*")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


def block() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))


def slim_equal(name: str, density: float) -> nn.Module:
    """What channel slimming to the same number of weights gives: a narrower dense model
    (its accuracy is another matter; this is the speed reference)."""
    if name == "mlp":   # 784h + h² + 10h = density · (784·1024 + 1024² + 10·1024)
        budget = density * (784 * 1024 + 1024 * 1024 + 10 * 1024)
        h = int((-(794) + (794 ** 2 + 4 * budget) ** 0.5) / 2)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                             nn.Linear(h, 10)).eval()
    h = int(density * 2048)
    return nn.Sequential(nn.Linear(512, h), nn.GELU(), nn.Linear(h, 512)).eval()


def batches(name: str, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if name == "mlp":   # 10 classes from a random linear teacher on 784-d Gaussian inputs
        teacher = torch.randn(784, 10, generator=g)
        for _ in range(steps):
            x = torch.randn(128, 1, 28, 28, generator=g)
            yield x, (x.flatten(1) @ teacher).argmax(1)
    else:
        teacher = block()
        for _ in range(steps):
            x = torch.randn(128, 512, generator=g)
            with torch.no_grad():
                y = teacher(x)
            yield x, y


def train(name: str, method: str, density: float, distribution: str, structure: str, steps: int, seed: int,
          gamma_sal: float = 0.0):
    torch.manual_seed(seed)
    model = mlp() if name == "mlp" else block()
    opt = torch.optim.SGD(model.parameters(), lr=0.05 if name == "mlp" else 0.01, momentum=0.9)
    extra = {"H": 10, "J": 10, "Q": 10} if method == "iee" else {"update_interval": 30}
    if structure == "fanin" and gamma_sal:   # else fan-in's default neuron ablation (γ_sal 0.3)
        extra.update(neuron_ablation=True, gamma_sal=gamma_sal)
    sp = regrow.create(method, model, opt, density=density, distribution=distribution, structure=structure,
                       total_steps=steps, seed=seed, **extra)
    for x, y in batches(name, steps, seed):
        out = model(x)
        loss = F.cross_entropy(out, y) if name == "mlp" else F.mse_loss(out, y)
        opt.zero_grad()
        loss.backward()
        sp.step()
    return model.eval(), sp.state.masks, float(loss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,block")
    ap.add_argument("--methods", default="rigl,iee")
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--distributions", default="erk,uniform")
    ap.add_argument("--structures", default="unstructured,fanin")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gamma-sal", type=float, default=0.0,
                    help="fan-in runs: neuron ablation at this γ_sal (0: the method's default)")
    ap.add_argument("--runs", type=int, default=1, help="export and time each cell this many times: medians")
    ap.add_argument("--json", default=None, help="also write every row here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    rows = []
    print(f"1 thread; medians of {args.repeats} interleaved rounds (and of {args.runs} runs); "
          "×dense = dense ms / model ms (same run)")
    print("| model | method | dist | structure | density | ablated neurons | model | b1 ms | b1 ×dense | "
          f"b{args.batch} ms | b{args.batch} ×dense |")
    print("|---|---|---|---|---:|---:|---|---:|---:|---:|---:|")
    for name, method, dist, structure, d in itertools.product(
            split(args.models), split(args.methods), split(args.distributions), split(args.structures),
            [float(v) for v in split(args.densities)]):
        t0 = time.time()
        model, masks, loss = train(name, method, d, dist, structure, args.steps, args.seed, args.gamma_sal)
        # fan-in's neuron ablation (on by default for methods that regrow) empties rows
        ablated = sum(int((m.reshape(m.shape[0], -1).sum(1) == 0).sum()) for m in masks.values())
        neurons = sum(m.shape[0] for m in masks.values())
        shape = (1, 28, 28) if name == "mlp" else (512,)
        formats = ("sparse", "fanin") if structure == "fanin" else ("sparse",)
        # --runs > 1: export and time again (the kernel choice too), per-cell medians over runs
        runs = [bench(model, shape, formats=formats, batch_sizes=(1, args.batch), threads=1,
                      repeats=args.repeats, masks=masks, extra={"slim (equal weights)": slim_equal(name, d)})
                for _ in range(args.runs)]

        def med(variant: str, batch: int) -> dict:
            got = [q for res in runs for q in res["rows"] if q["model"] == variant and q["batch"] == batch]
            return {k: statistics.median(q[k] for q in got) for k in ("ms", "speedup")}

        for variant in dict.fromkeys(q["model"] for q in runs[0]["rows"]):
            r, rb = med(variant, 1), med(variant, args.batch)
            print(f"| {name} | {method} | {dist} | {structure} | {d} | {ablated}/{neurons} | {variant} | "
                  f"{r['ms']:.3f} | {r['speedup']:.2f} | {rb['ms']:.3f} | {rb['speedup']:.2f} |", flush=True)
            rows.append({"model": name, "method": method, "distribution": dist, "structure": structure,
                         "density": d, "ablated_neurons": ablated, "neurons": neurons, "variant": variant,
                         "b1_ms": r["ms"], "b1_speedup": r["speedup"],
                         "bN_ms": rb["ms"], "bN_speedup": rb["speedup"], "batch": args.batch,
                         "runs": [{q["batch"]: q["speedup"] for q in res["rows"] if q["model"] == variant}
                                  for res in runs],
                         "final_loss": loss, "seconds": time.time() - t0})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
