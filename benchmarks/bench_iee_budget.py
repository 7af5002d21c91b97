"""IEE against RigL, SET and dense across training budgets (issue 15): where IEE starts to
win, and how budget-aware IEE variants do at the short budgets.

One `regrow compare` per (budget, group) into ``OUT/e<epochs>/<group>``: a group is a
baseline (dense, set, rigl) or an IEE variant (``iee`` is paper IEE; the others add
``--opt`` switches, see ``VARIANTS``). Done cells are
kept, so the script can be stopped and restarted; ``--report-only`` prints the tables
from what exists.

Scaling of the period with the run (the paper's H = J = Q = 100/150 are iterations of
runs with 250/100 epochs of 391/5005 steps): ΔT = H + J + Q with
H = J = Q = max(10, round(T / 186)), T the run's steps, i.e. the 60-epoch grid's
H = J = Q = 10 on 1860 steps (≈ 46 IEE steps before T_end = 0.75·T) kept as a fixed
number of cycles at long budgets, floored at 10 iterations per stage at short ones
(explored weights need iterations to prove themselves; RESULTS.md, "Why IEE falls
short"). RigL and SET use ΔT = 3·H, so every dynamic method updates equally often.

Recipe (the quality grid's, RESULTS.md "1. Quality grid"): cnn1d on mnist1d, lr 0.1, or
(``--data fashion-mnist``) lenet5 on fashion-mnist (60k/10k, 468 steps per epoch), lr 0.05;
both SGD momentum 0.9, cosine, wd 5e-4, batch 128, ERK, α = 0.3, T_end = 0.75·T, one torch
thread, test set evaluated at the end only. ``--model`` / ``--lr`` override the task's.

Budget-aware IEE as recommended is the group ``iee-budget-q-half``: the preset
``budget_aware=True`` (``lr_clock=trained``, ``criterion=taylor``) with ``stages=budget``
(H = J = k, Q = ⌊k/2⌋). The group ``iee-budget`` is the preset with equal short stages,
H = J = Q = ⌊k/2⌋; the group ``iee-lrclock-0.5x`` is the same stages with the LR clock only
(the preset before it took the Taylor criterion; with ``--opt criterion=taylor`` it runs the
preset); ``iee-budget-tend-0.5`` is the equal short stages over half the run. Results and
the exact commands: benchmarks/RESULTS.md, "IEE at the budgets users actually run".

    python benchmarks/bench_iee_budget.py --out runs/budget --epochs 10,20,40,80,160 \\
        --groups rigl,iee,iee-lrclock-0.5x,set,dense --densities 0.1,0.05 --seeds 0,1,2
    python benchmarks/bench_iee_budget.py --out runs/budget --report-only --per-seed
    python benchmarks/bench_iee_budget.py --out runs/budget-fm --data fashion-mnist --epochs 3,8,20 \\
        --groups rigl,iee,iee-lrclock-0.5x --densities 0.1 --seeds 0,1,2
    python benchmarks/bench_iee_budget.py --out runs/budget-fm-mlp --data fashion-mnist --model mlp \\
        --epochs 3,8 --groups rigl,iee,iee-period-2x,iee-period-4x --densities 0.1,0.05 --seeds 0,1,2

The second table gives, per cell, the final-epoch training loss, the mean survival rate,
the physical training FLOPs and the median ``new_grown_fraction`` over the first half of
the updates (what Grow brought in that was not active before the update).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

STEPS_PER_EPOCH = {"mnist1d": 31,          # 4000 samples, batch 128, last partial batch dropped
                   "fashion-mnist": 468}   # 60000 samples, batch 128, last partial batch dropped
# each task's quality-grid recipe (RESULTS.md, "1. Quality grid"): model and learning rate
RECIPE = {"mnist1d": {"model": "cnn1d", "lr": 0.1}, "fashion-mnist": {"model": "lenet5", "lr": 0.05}}
# budget-aware IEE for the report's difference columns, the first present: the recommended
# setting (the preset with stages=budget), the preset with equal short stages, or (runs made
# before it took the Taylor criterion) the LR clock with short stages
BUDGET_GROUPS = ("iee-budget-q-half", "iee-budget", "iee-lrclock-0.5x")
EXPLORE_LR = 0.1             # the explore_lr measured (≈ the density 0.1: Θ_P is ~9× Θ_K there)
BASELINES = ("dense", "set", "rigl", "rigl-0.5x")   # rigl-0.5x: ΔT = 3·(k // 2), as iee-*-0.5x
# IEE variants: group name -> extra --opt switches given H = J = Q = k (``iee`` is the
# paper's method; each other one changes one thing, except the preset and the
# combinations named after their parts)
VARIANTS: Dict[str, Callable[[int], List[str]]] = {
    "iee": lambda k: [],
    "iee-lrclock": lambda k: ["lr_clock=trained"],          # Θ_K's LR clock stops while frozen
    "iee-q-half": lambda k: [f"Q={max(1, k // 2)}"],         # shorter Reactivate & Explore
    "iee-tend-0.5": lambda k: ["end_fraction=0.5"],          # IEE steps over half the run
    "iee-nofreeze": lambda k: ["freeze=false"],              # reference: not IEE's idea
    "iee-period-2x": lambda k: [f"H={2 * k}", f"J={2 * k}", f"Q={2 * k}"],   # fewer, longer IEE steps
    "iee-period-4x": lambda k: [f"H={4 * k}", f"J={4 * k}", f"Q={4 * k}"],
    "iee-period-0.5x": lambda k: [f"H={k // 2}", f"J={k // 2}", f"Q={k // 2}"],  # more, shorter ones
    "iee-period-0.25x": lambda k: [f"H={max(2, k // 4)}", f"J={max(2, k // 4)}", f"Q={max(2, k // 4)}"],
    "iee-lrclock-0.5x": lambda k: [f"H={k // 2}", f"J={k // 2}", f"Q={k // 2}", "lr_clock=trained"],
    # the preset as it is now (lr_clock=trained, criterion=taylor) with short stages; on the code
    # of session 6 the same runs as iee-lrclock-0.5x with --opt criterion=taylor
    "iee-budget": lambda k: [f"H={k // 2}", f"J={k // 2}", f"Q={k // 2}", "budget_aware=true"],
    # the preset with Θ_K frozen in a smaller share of the run (session 8): the paper's H = J = k
    # with a half-length Reactivate & Explore (the option stages=budget, regrow.methods.iee.
    # budget_stages, since session 9; runs before it passed H = J = k, Q = k // 2, the same
    # values), or the short stages over half the run
    "iee-budget-q-half": lambda k: ["stages=budget", "budget_aware=true"],
    # the frozen share of iee-budget-q-half (H = J = 2Q) with about as many IEE steps as
    # iee-budget: Q = max(5, k // 4) (session 9)
    "iee-budget-q4": lambda k: [f"H={2 * max(5, k // 4)}", f"J={2 * max(5, k // 4)}", f"Q={max(5, k // 4)}",
                                "budget_aware=true"],
    "iee-budget-tend-0.5": lambda k: [f"H={k // 2}", f"J={k // 2}", f"Q={k // 2}", "budget_aware=true",
                                      "end_fraction=0.5"],
    "iee-q1": lambda k: ["Q=1"],                                 # one explore step per IEE step
    "iee-0.5x-q1-lrclock": lambda k: [f"H={k // 2}", f"J={k // 2}", "Q=1", "lr_clock=trained"],
    # controls: (almost) no structure change, so what is left is the cost of the frozen steps
    "iee-alpha-0.01": lambda k: ["alpha=0.01"],
    "iee-alpha-0.01-q1": lambda k: ["alpha=0.01", "Q=1"],
}
# explore_lr on top of a group above (Θ_P explores at EXPLORE_LR × the step's LR)
for _name, _group in (("iee-explore-lr", "iee"), ("iee-lrclock-elr", "iee-lrclock"),
                      ("iee-lrclock-0.5x-elr", "iee-lrclock-0.5x")):
    VARIANTS[_name] = lambda k, _g=VARIANTS[_group]: [*_g(k), f"explore_lr={EXPLORE_LR}"]


def hjq(epochs: int, data: str) -> int:
    return max(10, round(STEPS_PER_EPOCH[data] * epochs / 186))


def run(out: Path, epochs: int, group: str, densities: str, seeds: str, data: str, model: str, lr: float,
        extra: List[str]) -> None:
    k = hjq(epochs, data)
    dt = 3 * k
    if group in BASELINES:
        methods, opts = group.split("-")[0], []
        if group == "rigl-0.5x":
            dt = 3 * (k // 2)
    else:
        methods = "iee"
        opts = [f"H={k}", f"J={k}", f"Q={k}", *VARIANTS[group](k)]
    cmd = [sys.executable, "-m", "regrow", "compare", "--methods", methods, "--densities", densities,
           "--seeds", seeds, "--distribution", "erk", "--model", model, "--data", data,
           "--epochs", str(epochs), "--batch-size", "128", "--optimizer", "sgd", "--lr", f"{lr:g}",
           "--momentum", "0.9", "--weight-decay", "5e-4", "--schedule", "cosine", "--device", "cpu",
           "--quiet", "--threads", "1", "--eval-every", "100000", "--log-every", "100000", "--deterministic",
           "--out", str(out / f"e{epochs}" / group)]
    if group != "dense":   # ΔT means nothing to dense (compare refuses it)
        cmd += ["--update-interval", str(dt)]
    for o in opts:
        cmd += ["--opt", o]
    cmd += extra   # last, so that an --opt given here overrides the group's (the last --opt wins)
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def cells(d: Path) -> List[dict]:
    out = []
    for f in sorted(d.glob("*/summary.json")):
        s = json.loads(f.read_text())
        surv, new = [], []
        m = f.parent / "metrics.jsonl"
        if m.exists():
            for line in m.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("survival_rate") is not None:
                    surv.append(rec["survival_rate"])
                if rec.get("new_grown_fraction") is not None:
                    new.append(rec["new_grown_fraction"])
        s["_survival"] = statistics.mean(surv) if surv else None
        # what Grow returned: median share of new weights over the first half of the updates
        # (α_t has decayed to a few weights by the last ones); runs before the metric: none
        s["_new"] = statistics.median(new[:(len(new) + 1) // 2]) if new else None
        out.append(s)
    return out


def mean(xs: List[float]) -> Optional[float]:
    return statistics.mean(xs) if xs else None


def fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def report(out: Path, per_seed: bool = False, show: Optional[List[str]] = None, budgets_shown=None,
           data: str = "mnist1d", model: str = "cnn1d") -> None:
    budgets = sorted(int(p.name[1:]) for p in out.glob("e*") if p.name[1:].isdigit())
    rows: Dict[tuple, List[dict]] = {}   # (epochs, group, density) -> summaries
    for e in budgets:
        for g in sorted(p.name for p in (out / f"e{e}").iterdir() if p.is_dir()):
            for s in cells(out / f"e{e}" / g):
                rows.setdefault((e, g, s["target_density"]), []).append(s)
    names = [n for n in BASELINES if any(k[1] == n for k in rows)]
    names += [g for g in VARIANTS if any(k[1] == g for k in rows)]
    if show:
        names = [n for n in show if n in names]
    if budgets_shown:
        budgets = [e for e in budgets if e in budgets_shown]
    densities = sorted({k[2] for k in rows if k[2] < 1}, reverse=True)
    budget = next((g for g in BUDGET_GROUPS if g in names), BUDGET_GROUPS[0])

    def get(e, n, dens):
        return rows.get((e, n, 1.0 if n == "dense" else dens), [])

    for dens in densities:
        print(f"\n### {model} on {data}, density {dens:g} ERK: test top-1 (%), mean ± std over seeds "
              f"(n = seeds where not 3)\n")
        print("| epochs (steps) | k | " + " | ".join(names)
              + f" | iee − rigl | {budget} − best rigl | {budget} − iee |")
        print("|---|---|" + "---|" * len(names) + "---|---|---|")
        for e in budgets:
            cols, acc = [], {}
            for n in names:
                ss = get(e, n, dens)
                if not ss:
                    cols.append("—")
                    continue
                top = [100 * s["test_top1"] for s in ss]
                acc[n] = statistics.mean(top)
                sd = statistics.stdev(top) if len(top) > 1 else 0.0
                cell = f"{acc[n]:.2f} ± {sd:.2f}" + ("" if len(ss) == 3 else f" (n={len(ss)})")
                if per_seed:
                    cell += " (" + ", ".join(f"{t:.1f}" for t in top) + ")"
                cols.append(cell)
            best_rigl = max([acc[r] for r in ("rigl", "rigl-0.5x") if r in acc], default=None)
            diffs = [f"{acc['iee'] - acc['rigl']:+.2f}" if "iee" in acc and "rigl" in acc else "—",
                     f"{acc[budget] - best_rigl:+.2f}" if budget in acc and best_rigl is not None else "—",
                     f"{acc[budget] - acc['iee']:+.2f}" if budget in acc and "iee" in acc else "—"]
            print(f"| {e} ({e * STEPS_PER_EPOCH[data]}) | {hjq(e, data)} | " + " | ".join(cols)
                  + " | " + " | ".join(diffs) + " |")
        print(f"\nSame cells, density {dens:g}: final-epoch training loss / mean survival rate (over "
              f"updates and seeds) / physical training FLOPs (× dense, train_flops_physical_relative)"
              f" / new-growth fraction (median over the first half of the updates, mean over seeds;"
              f" — for runs older than the metric)\n")
        shown = [n for n in names if n not in ("dense",)]
        print("| epochs | " + " | ".join(shown) + " |")
        print("|---|" + "---|" * len(shown))
        for e in budgets:
            cols = []
            for n in shown:
                ss = get(e, n, dens)
                if not ss:
                    cols.append("—")
                    continue
                surv = mean([s["_survival"] for s in ss if s["_survival"] is not None])
                fresh = mean([s["_new"] for s in ss if s["_new"] is not None])
                cols.append(f"{mean([s['train_loss'] for s in ss]):.3f} / {fmt(surv, '.3f')} / "
                            f"{mean([s['train_flops_physical_relative'] for s in ss]):.3f} / {fmt(fresh, '.2f')}")
            print(f"| {e} | " + " | ".join(cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/budget")
    ap.add_argument("--epochs", default="10,20,40,80,160")
    ap.add_argument("--groups", default="rigl,iee,set,dense",
                    help=f"baselines and/or IEE variants: {', '.join(BASELINES + tuple(VARIANTS))}")
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", default="mnist1d", choices=sorted(STEPS_PER_EPOCH))
    ap.add_argument("--model", default=None, help="default: the task's grid model (cnn1d, lenet5)")
    ap.add_argument("--lr", type=float, default=None, help="default: the task's grid lr (0.1, 0.05)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--per-seed", action="store_true", help="print every seed's top-1 in the table")
    ap.add_argument("--show", default="", help="report only these groups (comma-separated), in this order")
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    model = args.model or RECIPE[args.data]["model"]
    lr = RECIPE[args.data]["lr"] if args.lr is None else args.lr
    if not lr > 0:
        raise SystemExit(f"--lr must be > 0, got {lr}")
    groups = [g for g in args.groups.split(",") if g]
    for g in groups:
        if g not in BASELINES and g not in VARIANTS:
            raise SystemExit(f"unknown group '{g}'; allowed: {', '.join(BASELINES + tuple(VARIANTS))}")
    if not args.report_only:
        for e in (int(x) for x in args.epochs.split(",")):
            for g in groups:
                run(out, e, g, args.densities, args.seeds, args.data, model, lr, extra)
    shown_budgets = [int(x) for x in args.epochs.split(",")] if args.report_only else None
    report(out, args.per_seed, [g for g in args.show.split(",") if g], shown_budgets, args.data, model)


if __name__ == "__main__":
    main()
