"""Trace one IEE run step by step (issue 15): stage, training loss, gradient norm, LR and
the norm of every weight matrix, printed as one JSON line per optimizer step from
``first`` to ``last``. Written to find where budget-aware IEE (H = J = Q = 5) blew up on
Fashion-MNIST seed 1: in Reactivate & Explore (benchmarks/RESULTS.md, issue 15, "4.").

    python benchmarks/trace_iee_explore.py --seed 1 --hjq 5 --first 80 --last 95 --opt lr_clock=trained
    python benchmarks/trace_iee_explore.py --seed 1 --hjq 5 --first 80 --last 95 --opt lr_clock=trained \\
        --opt explore_lr=0.1

Recipe: the Fashion-MNIST budget sweep's (bench_iee_budget.py --data fashion-mnist): lenet5,
SGD momentum 0.9, lr 0.05 cosine, wd 5e-4, batch 128, ERK density 0.1, α = 0.3, one thread,
deterministic. The run stops after step ``last``.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile

import yaml

from regrow.integrations.protocol import Callback
from regrow.train.config import RunConfig
from regrow.train.loop import train


class Stop(Exception):
    pass


class Trace(Callback):
    """Prints the step's record before the optimizer step (the gradient is the step's,
    unmasked for Θ_P during Reactivate & Explore) and stops the run after ``last``."""

    def __init__(self, first: int, last: int):
        self.first, self.last = first, last

    def on_before_optimizer_step(self, fit) -> None:
        i = fit.step + 1   # IEE iteration
        if i > self.last:
            raise Stop
        if i < self.first:
            return
        method = fit.sparsity.method
        grads = [p.grad for p in fit.model.parameters() if p.grad is not None]
        rec = {"iteration": i, "stage": method.stage(i),
               "loss": round(fit._step_loss / max(1, fit._step_seen), 4),
               "grad_norm": round(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)), 3),
               "lr": round(fit.optimizer.param_groups[0]["lr"], 5), "density": round(method.density(), 4)}
        rec.update({n: round(float(p.detach().norm()), 3) for n, p in fit.model.named_parameters() if p.dim() > 1})
        print(json.dumps(rec), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hjq", type=int, default=5, help="H = J = Q")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--last", type=int, default=100)
    ap.add_argument("--opt", action="append", default=[], help="extra IEE option KEY=VALUE (YAML value)")
    args = ap.parse_args()
    opts = {"H": args.hjq, "J": args.hjq, "Q": args.hjq, "alpha": 0.3}
    for o in args.opt:
        key, _, value = o.partition("=")
        opts[key] = yaml.safe_load(value)
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig(method="iee", method_options=opts, model="lenet5", data="fashion-mnist",
                        epochs=args.epochs, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                        distribution="erk", density=0.1, seed=args.seed, deterministic=True, threads=1,
                        quiet=True, eval_every=10 ** 6, log_every=10 ** 6, out=out)
        try:
            train(cfg, callbacks=[Trace(args.first, args.last)], overwrite=True)
        except Stop:
            pass


if __name__ == "__main__":
    main()
