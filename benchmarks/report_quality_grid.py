"""Report of a quality grid (issues 4 and 5): one table from one or more `regrow compare`
directories of the same task, plus IEE's survival rate against RigL's update by update.

For every (method, density): test top-1 mean ± std over seeds (and per seed), training
FLOPs relative to dense (the ledger), inference FLOPs relative to dense and absolute,
mean survival rate and final exploration degree. Then, per density, IEE vs RigL: mean
top-1, and the survival rate at the u-th update (mean over the seeds both have), IEE
against RigL at every u. Both methods must run on the same period (RigL's ΔT = IEE's
H + J + Q) for the u-th updates to be at matching points of training.

    .venv/bin/python benchmarks/report_quality_grid.py runs/f3/mnist1d --title "MNIST-1D"
    .venv/bin/python benchmarks/report_quality_grid.py runs/f3/fmnist-a runs/f3/fmnist-b
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Dict, List, Tuple

ORDER = ["dense", "static", "snip", "set", "rigl", "gmp", "dst_ee", "optg", "iee"]


def load(dirs: List[Path]) -> List[dict]:
    cells = []
    for d in dirs:
        if not d.is_dir():
            raise SystemExit(f"not a directory: {d}")
        for f in sorted(d.glob("*/summary.json")):
            s = json.loads(f.read_text())
            events = []
            metrics = f.parent / "metrics.jsonl"
            if metrics.exists():
                for line in metrics.read_text().splitlines():
                    rec = json.loads(line)
                    if "survival_rate" in rec or "exploration_degree" in rec:
                        events.append(rec)
            cells.append({"s": s, "events": events})
    return cells


def survival(cell: dict) -> List[float]:
    return [e["survival_rate"] for e in cell["events"] if e.get("survival_rate") is not None]


def exploration(cell: dict) -> float:
    xs = [e["exploration_degree"] for e in cell["events"] if e.get("exploration_degree") is not None]
    return xs[-1] if xs else float("nan")


def ms(xs: List[float], scale: float = 100.0) -> str:
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{scale * statistics.mean(xs):.2f} ± {scale * sd:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="compare directories of one task")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    cells = load(args.dirs)
    by: Dict[Tuple[str, float], List[dict]] = {}
    for c in cells:
        by.setdefault((c["s"]["method"], c["s"]["target_density"]), []).append(c)
    first = cells[0]["s"]
    print(f"### {args.title or first['data']}: {first['model']} on {first['data']}, {first['epochs']} epochs "
          f"({first['total_steps']} steps)\n")
    print("| density | method | distribution | seeds | test top-1 (%) | per seed | train FLOPs (× dense) "
          "| inference FLOPs (× dense) | inference MFLOPs | mean survival | exploration R |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    methods = sorted({k[0] for k in by}, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
    for density in sorted({k[1] for k in by}, reverse=True):
        for m in methods:
            cs = sorted(by.get((m, density), []), key=lambda c: c["s"]["seed"])
            if not cs:
                continue
            top1 = [c["s"]["test_top1"] for c in cs]
            tf = statistics.mean(c["s"]["train_flops_relative"] for c in cs)
            inf = statistics.mean(c["s"]["inference_flops"] / c["s"]["dense_inference_flops"] for c in cs)
            mf = statistics.mean(c["s"]["inference_flops"] for c in cs) / 1e6
            surv = [v for c in cs for v in survival(c)]
            r = [exploration(c) for c in cs]
            r = [x for x in r if x == x]
            print(f"| {density:g} | {m} | {cs[0]['s']['distribution']} | {len(cs)} | {ms(top1)} | "
                  f"{', '.join(f'{100 * x:.1f}' for x in top1)} | {tf:.3f} | {inf:.3f} | {mf:.4f} | "
                  f"{f'{statistics.mean(surv):.3f}' if surv else '—'} | "
                  f"{f'{statistics.mean(r):.3f}' if r else '—'} |")
    print()
    for density in sorted({k[1] for k in by}, reverse=True):
        iee, rigl = by.get(("iee", density), []), by.get(("rigl", density), [])
        if not iee or not rigl:
            continue
        a = statistics.mean(c["s"]["test_top1"] for c in iee)
        b = statistics.mean(c["s"]["test_top1"] for c in rigl)
        seeds = sorted({c["s"]["seed"] for c in iee} & {c["s"]["seed"] for c in rigl})
        si = {c["s"]["seed"]: survival(c) for c in iee}
        sr = {c["s"]["seed"]: survival(c) for c in rigl}
        n = min(min(len(si[s]) for s in seeds), min(len(sr[s]) for s in seeds))
        mi = [statistics.mean(si[s][u] for s in seeds) for u in range(n)]
        mr = [statistics.mean(sr[s][u] for s in seeds) for u in range(n)]
        above = sum(x > y for x, y in zip(mi, mr))
        ties = sum(x == y for x, y in zip(mi, mr))
        per_seed = sum(si[s][u] > sr[s][u] for s in seeds for u in range(n))
        print(f"- density {density:g}: IEE top-1 {100 * a:.2f} {'≥' if a >= b else '<'} RigL {100 * b:.2f}; "
              f"survival (mean over seeds {seeds}) IEE > RigL at {above}/{n} updates, equal at {ties} "
              f"({per_seed}/{n * len(seeds)} seed-updates); IEE {statistics.mean(mi) if mi else float('nan'):.3f} "
              f"vs RigL {statistics.mean(mr) if mr else float('nan'):.3f} on average")
        below = [u + 1 for u in range(n) if mi[u] < mr[u]]
        if below:
            print(f"  - IEE below RigL at updates {below}")
        if n:
            print(f"  - IEE  by update: {' '.join(f'{x:.2f}' for x in mi)}")
            print(f"  - RigL by update: {' '.join(f'{x:.2f}' for x in mr)}")


if __name__ == "__main__":
    main()
