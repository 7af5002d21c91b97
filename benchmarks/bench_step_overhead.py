"""Steady-state training-step time of a RigL-maintained LeNet-5 over a dense one.

Three identical models (Caffe LeNet-5: conv 20 5x5, pool, conv 50 5x5, pool, fc 500,
fc 10; 28x28 inputs, batch 128, SGD with momentum) are trained side by side in one
process: a dense one, a RigL-maintained one, and a second dense one as a control.
Every round runs a block of steps on each, in rotating order, so machine noise hits
all alike. The figure is the median over rounds of t_rigl / t_dense with a bootstrap
95% confidence interval; the control's t_dense2 / t_dense shows how far the harness
alone strays from 1 on this machine. The amortised ratio (all time, structure updates
included) is printed too.

    .venv/bin/python benchmarks/bench_step_overhead.py [--rounds 60] [--steps 5]

Goal (issue 2): median ratio <= 1.02.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import regrow


def lenet5() -> nn.Module:
    try:
        from regrow.train.models import build_model

        return build_model("lenet5", (1, 28, 28), 10)
    except ImportError:  # the model zoo is optional for this script
        return _LeNet5()


class _LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def bootstrap_ci(xs, n=2000, seed=0):
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--steps", type=int, default=5, help="steps per model per round")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--update-interval", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense_model = lenet5()
    sparse_model = lenet5()
    control_model = lenet5()
    sparse_model.load_state_dict(dense_model.state_dict())
    control_model.load_state_dict(dense_model.state_dict())
    opt_d = torch.optim.SGD(dense_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_c = torch.optim.SGD(control_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_s = torch.optim.SGD(sparse_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    total = args.rounds * args.steps + 10
    rigl = regrow.create("rigl", sparse_model, opt_s, density=args.density, distribution="erk",
                         total_steps=10 * total, update_interval=args.update_interval)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g))
               for _ in range(8)]

    step_calls = {"d": [], "s": []}  # the optimizer-step call alone: low-noise view of the overhead

    def run_dense(i):
        x, y = batches[i % len(batches)]
        opt_d.zero_grad()
        F.cross_entropy(dense_model(x), y).backward()
        t0 = time.perf_counter()
        opt_d.step()
        step_calls["d"].append(time.perf_counter() - t0)

    def run_control(i):
        x, y = batches[i % len(batches)]
        opt_c.zero_grad()
        F.cross_entropy(control_model(x), y).backward()
        opt_c.step()

    def run_sparse(i):
        x, y = batches[i % len(batches)]
        opt_s.zero_grad()
        F.cross_entropy(sparse_model(x), y).backward()
        t0 = time.perf_counter()
        rigl.step()
        step_calls["s"].append(time.perf_counter() - t0)

    for i in range(5):  # warm-up
        run_dense(i)
        run_sparse(i)
        run_control(i)
    ratios, controls, t_dense, t_sparse = [], [], 0.0, 0.0
    step_calls["d"].clear()
    step_calls["s"].clear()
    i = 0
    runs = [("d", run_dense), ("s", run_sparse), ("c", run_control)]
    for r in range(args.rounds):
        order = runs[r % 3:] + runs[: r % 3]
        if (r // 3) % 2:
            order = order[::-1]
        took = {}
        for tag, fn in order:
            t0 = time.perf_counter()
            for j in range(args.steps):
                fn(i + j)
            took[tag] = time.perf_counter() - t0
        i += args.steps
        ratios.append(took["s"] / took["d"])
        controls.append(took["c"] / took["d"])
        t_dense += took["d"]
        t_sparse += took["s"]
    updates = rigl.state.step // args.update_interval
    lo, hi = bootstrap_ci(ratios)
    clo, chi = bootstrap_ci(controls)
    n = args.rounds * args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; LeNet-5 28x28 batch 128, "
          f"RigL density {args.density} ERK, ΔT={args.update_interval}; {args.rounds} rounds x {args.steps} steps each")
    print(f"dense step {t_dense / n * 1e3:.1f} ms, rigl step {t_sparse / n * 1e3:.1f} ms (means); "
          f"density {rigl.density():.4f}; structure updates in the run: {updates}")
    print(f"median ratio rigl/dense {statistics.median(ratios):.4f}  95% CI [{lo:.4f}, {hi:.4f}]  "
          f"amortised ratio {t_sparse / t_dense:.4f}  goal <= 1.02: "
          f"{'met' if statistics.median(ratios) <= 1.02 else 'MISSED'}")
    print(f"control dense2/dense {statistics.median(controls):.4f}  95% CI [{clo:.4f}, {chi:.4f}]  "
          f"(the harness's own spread)")
    sd, ss = statistics.median(step_calls["d"]), statistics.median(step_calls["s"])
    print(f"step call alone (median): optimizer.step {sd * 1e3:.3f} ms, rigl.step {ss * 1e3:.3f} ms -> "
          f"+{(ss - sd) * 1e3:.3f} ms = {1 + (ss - sd) / (t_dense / n):.4f}x of a dense training step")


if __name__ == "__main__":
    main()
