"""The training loop's own overhead: regrow's loop vs a bare forward/backward/step.

Same model (LeNet-300-100 MLP), same data (MNIST-1D), same batch and optimizer, in
one process. The bare loop indexes the data tensors with a random permutation and
does forward, cross-entropy, backward, ``optimizer.step()``, ``zero_grad``. The
regrow loop adds everything a run does per step: batch sampling, the LR schedule,
loss/accuracy bookkeeping, NaN check, metrics.jsonl logging every ``log_every``
steps, and the method's step. Three methods are measured: ``dense`` (its step is the
plain optimizer step, so this is the harness alone), ``static`` at density 0.1
(harness + mask maintenance: the gradients masked every step so inactive weights and
their optimizer state stay exactly 0) and ``rigl`` at density 0.1 with its default
ΔT = 100 (the same plus RigL's own structure updates: 4 drop/grow updates with their
IoU/survival metrics in the 620 steps).

The dataset is generated once and handed to both (data generation is a one-off
cost, not loop overhead). The loop's per-step time is the run's own
``train_step_cpu_seconds / steps`` from summary.json: time spent in training steps
only (evaluation and checkpoints excluded; data feeding, logging and mask
maintenance included). Each repeat times bare and each method back to back for the
same number of steps; the overhead is the median over repeats of
``loop_step / bare_step − 1``, on process CPU time with one torch thread (this
machine is shared: CPU time is what the loop itself spends, whatever runs beside
it). Wall-clock figures are printed too.

    .venv/bin/python benchmarks/bench_loop_overhead.py --repeats 11
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from regrow.train import config as C
from regrow.train import data as data_mod
from regrow.train.data import load_dataset
from regrow.train.loop import train
from regrow.train.models import build_model


def bare_step_time(bundle, steps: int, batch: int, lr: float, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model("mlp", bundle.input_shape, bundle.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    x_all, y_all = bundle.train.tensors
    g = torch.Generator().manual_seed(seed)
    n = len(y_all) // batch * batch
    perm = torch.randperm(len(y_all), generator=g)
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    while done < steps:
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return (time.process_time() - c0) / steps, (time.perf_counter() - t0) / steps


def loop_time(method: str, epochs: int, out: str, args) -> tuple:
    cfg = C.build({"method": method, "model": "mlp", "data": "mnist1d", "density": 0.1,
                   "epochs": epochs, "batch_size": args.batch_size, "lr": 0.1, "quiet": True,
                   "device": "cpu", "log_every": args.log_every, "eval_every": 10_000,
                   "checkpoint_every": 10_000, "out": out})
    s = train(cfg, overwrite=True, report=False)
    return s["train_step_cpu_seconds"] / s["steps"], s["train_step_seconds"] / s["steps"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--epochs", type=int, default=20, help="epochs of each measurement")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="dense,static,rigl", help="comma-separated methods to run the loop with")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_dataset("mnist1d", seed=0)
    data_mod.load_dataset = lambda *a, **k: bundle  # train() looks it up at call time
    spe = len(bundle.train) // args.batch_size
    steps = args.epochs * spe
    methods = args.methods.split(",")
    ratios = {m: [] for m in methods}
    wall_ratios = {m: [] for m in methods}
    loop_ms = {m: [] for m in methods}
    bare_ms = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            bare, bare_wall = bare_step_time(bundle, steps, args.batch_size, 0.1, r)
            bare_ms.append(1e3 * bare)
            line = [f"repeat {r}: CPU ms/step bare {1e3 * bare:.3f}"]
            for m in methods:
                per_step, per_step_wall = loop_time(m, args.epochs, f"{tmp}/{m}", args)
                ratios[m].append(per_step / bare - 1)
                wall_ratios[m].append(per_step_wall / bare_wall - 1)
                loop_ms[m].append(1e3 * per_step)
                line.append(f"{m} {1e3 * per_step:.3f} ({100 * ratios[m][-1]:+.1f}%)")
            print("  ".join(line), flush=True)
    med = statistics.median
    print(f"mlp on mnist1d, batch {args.batch_size}, {steps} steps per measurement, "
          f"{args.threads} thread(s), {args.repeats} repeats")
    print(f"median CPU time per step: bare {med(bare_ms):.3f} ms")
    for m in methods:
        print(f"  loop with {m:6s}: {med(loop_ms[m]):.3f} ms/step, median overhead (CPU time) "
              f"{100 * med(ratios[m]):+.1f}%  (wall-clock {100 * med(wall_ratios[m]):+.1f}%)")
    print("goal: <= +5%")

if __name__ == "__main__":
    main()
