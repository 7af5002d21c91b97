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

Recipe (the quality grid's): cnn1d on mnist1d, SGD momentum 0.9, lr 0.1 cosine,
wd 5e-4, batch 128, ERK, α = 0.3, T_end = 0.75·T, one torch thread, test set evaluated
at the end only.

    python benchmarks/bench_iee_budget.py --out runs/budget --epochs 10,20,40,80,160 \\
        --groups rigl,iee,set,dense --densities 0.1,0.05 --seeds 0,1,2
    python benchmarks/bench_iee_budget.py --out runs/budget --report-only
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

STEPS_PER_EPOCH = {"mnist1d": 31}   # 4000 samples, batch 128, last partial batch dropped
BASELINES = ("dense", "set", "rigl")
# IEE variants: group name -> extra --opt switches given H = J = Q = k (``iee`` is the
# paper's method; each other one changes one thing, except the preset)
VARIANTS: Dict[str, Callable[[int], List[str]]] = {
    "iee": lambda k: [],
    "iee-lrclock": lambda k: ["lr_clock=trained"],          # Θ_K's LR clock stops while frozen
    "iee-q-half": lambda k: [f"Q={max(1, k // 2)}"],         # shorter Reactivate & Explore
    "iee-tend-0.5": lambda k: ["end_fraction=0.5"],          # IEE steps over half the run
    "iee-nofreeze": lambda k: ["freeze=false"],              # reference: not IEE's idea
    "iee-period-2x": lambda k: [f"H={2 * k}", f"J={2 * k}", f"Q={2 * k}"],   # fewer, longer IEE steps
    "iee-period-0.5x": lambda k: [f"H={k // 2}", f"J={k // 2}", f"Q={k // 2}"],  # more, shorter ones
    "iee-budget": lambda k: ["budget_aware=true"],           # the preset
}


def hjq(epochs: int, data: str) -> int:
    return max(10, round(STEPS_PER_EPOCH[data] * epochs / 186))


def run(out: Path, epochs: int, group: str, densities: str, seeds: str, data: str, extra: List[str]) -> None:
    k = hjq(epochs, data)
    if group in BASELINES:
        methods, opts = group, []
    else:
        methods = "iee"
        opts = [f"H={k}", f"J={k}", f"Q={k}", *VARIANTS[group](k)]
    cmd = [sys.executable, "-m", "regrow", "compare", "--methods", methods, "--densities", densities,
           "--seeds", seeds, "--distribution", "erk", "--model", "cnn1d", "--data", data,
           "--epochs", str(epochs), "--batch-size", "128", "--optimizer", "sgd", "--lr", "0.1",
           "--momentum", "0.9", "--weight-decay", "5e-4", "--schedule", "cosine", "--device", "cpu",
           "--quiet", "--threads", "1", "--eval-every", "100000", "--log-every", "100000", "--deterministic",
           "--update-interval", str(3 * k), "--out", str(out / f"e{epochs}" / group), *extra]
    for o in opts:
        cmd += ["--opt", o]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def cells(d: Path) -> List[dict]:
    out = []
    for f in sorted(d.glob("*/summary.json")):
        s = json.loads(f.read_text())
        surv = []
        m = f.parent / "metrics.jsonl"
        if m.exists():
            for line in m.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("survival_rate") is not None:
                    surv.append(rec["survival_rate"])
        s["_survival"] = statistics.mean(surv) if surv else None
        out.append(s)
    return out


def mean(xs: List[float]) -> Optional[float]:
    return statistics.mean(xs) if xs else None


def fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def report(out: Path, groups: List[str]) -> None:
    budgets = sorted(int(p.name[1:]) for p in out.glob("e*") if p.name[1:].isdigit())
    rows = {}   # (epochs, group/method, density) -> list of summaries
    for e in budgets:
        for g in sorted(p.name for p in (out / f"e{e}").iterdir() if p.is_dir()):
            for s in cells(out / f"e{e}" / g):
                name = g
                rows.setdefault((e, name, s["target_density"]), []).append(s)
    names = [n for n in ("dense", "set", "rigl") if any(k[1] == n for k in rows)]
    names += [g for g in VARIANTS if any(k[1] == g for k in rows) and (not groups or g in groups)]
    densities = sorted({k[2] for k in rows if k[2] < 1}, reverse=True)
    for dens in densities:
        print(f"\n### cnn1d on mnist1d, density {dens:g} ERK: test top-1 (%), 3-seed mean ± std "
              f"[final-epoch train loss | mean survival | physical train FLOPs × dense]\n")
        print("| epochs (steps) | H = J = Q | " + " | ".join(names) + " | IEE − RigL |")
        print("|---|---|" + "---|" * len(names) + "---|")
        for e in budgets:
            cols, acc = [], {}
            for n in names:
                ss = rows.get((e, n, 1.0 if n == "dense" else dens), [])
                if not ss:
                    cols.append("—")
                    continue
                top = [100 * s["test_top1"] for s in ss]
                acc[n] = statistics.mean(top)
                sd = statistics.stdev(top) if len(top) > 1 else 0.0
                surv = mean([s["_survival"] for s in ss if s["_survival"] is not None])
                cols.append(f"{acc[n]:.2f} ± {sd:.2f} (n={len(ss)}) [{fmt(mean([s['train_loss'] for s in ss]), '.3f')}"
                            f" \\| {fmt(surv, '.3f')} \\| {fmt(mean([s['train_flops_physical_relative'] for s in ss]), '.3f')}]")
            diff = f"{acc['iee'] - acc['rigl']:+.2f}" if "iee" in acc and "rigl" in acc else "—"
            print(f"| {e} ({e * STEPS_PER_EPOCH['mnist1d']}) | {hjq(e, 'mnist1d')} | " + " | ".join(cols)
                  + f" | {diff} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/budget")
    ap.add_argument("--epochs", default="10,20,40,80,160")
    ap.add_argument("--groups", default="rigl,iee,set,dense",
                    help=f"baselines and/or IEE variants: {', '.join(BASELINES + tuple(VARIANTS))}")
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", default="mnist1d", choices=sorted(STEPS_PER_EPOCH))
    ap.add_argument("--report-only", action="store_true")
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    groups = [g for g in args.groups.split(",") if g]
    for g in groups:
        if g not in BASELINES and g not in VARIANTS:
            raise SystemExit(f"unknown group '{g}'; allowed: {', '.join(BASELINES + tuple(VARIANTS))}")
    if not args.report_only:
        for e in (int(x) for x in args.epochs.split(",")):
            for g in groups:
                run(out, e, g, args.densities, args.seeds, args.data, extra)
    report(out, [])


if __name__ == "__main__":
    main()
