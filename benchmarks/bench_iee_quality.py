"""Quality of IEE against dense, static, SET and RigL (issue 4, "Quality").

`regrow compare` of dense, static, set, rigl, iee at densities 0.1 and 0.05 (ERK),
seeds 0, 1, 2, on MNIST-1D (cnn1d) and Fashion-MNIST (lenet5); one recipe per task for
every method (SGD momentum 0.9, cosine LR, wd 5e-4, batch 128). RigL/SET update every
ΔT steps; IEE uses H = J = Q = ΔT (the paper pairs RigL's ΔT = 100 with H = J = Q = 100).

Goal: IEE's mean top-1 ≥ RigL's at both densities on both tasks, and IEE's survival
rate above RigL's at every update. The table also gives the training FLOPs relative
to dense (the ledger) and the mean IoU after prune / after grow.

Long: 60 cells; on the shared 2-core machine an MNIST-1D cell took ≈ 9 s per epoch
(per-epoch evaluation included, load average ≈ 9), i.e. ≈ 15 min at 100 epochs, so
hours in all (Fashion-MNIST cells are longer; ``--tasks``, ``--epochs``, ``--seeds``
cut it down). Run it in the background; cells already done are kept
(``--skip-done``), so it can be restarted, and ``--report-only`` prints the table
from what exists:

    nohup .venv/bin/python benchmarks/bench_iee_quality.py > runs/bench_iee_quality.log 2>&1 &
    .venv/bin/python benchmarks/bench_iee_quality.py --report-only
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

METHODS = ("dense", "static", "set", "rigl", "iee")
TASKS: Dict[str, Dict[str, Any]] = {
    # 31 steps/epoch; 100 epochs = 3100 steps, T_end = 2325: 93 RigL updates, 31 IEE steps
    "mnist1d": {"model": "cnn1d", "data": "mnist1d", "epochs": 100, "lr": 0.1, "interval": 25},
    # 469 steps/epoch; 10 epochs = 4690 steps: 70 RigL updates, 23 IEE steps
    "fashion-mnist": {"model": "lenet5", "data": "fashion-mnist", "epochs": 10, "lr": 0.05, "interval": 50},
}


def compare_cmd(task: Dict[str, Any], out: Path, densities: str, seeds: str, methods: str,
                extra: List[str]) -> List[str]:
    k = task["interval"]
    return [sys.executable, "-m", "regrow", "compare", "--methods", methods,
            "--densities", densities, "--seeds", seeds, "--distribution", "erk",
            "--model", task["model"], "--data", task["data"], "--epochs", str(task["epochs"]),
            "--batch-size", "128", "--optimizer", "sgd", "--lr", str(task["lr"]), "--momentum", "0.9",
            "--weight-decay", "5e-4", "--schedule", "cosine", "--update-interval", str(k),
            "--opt", f"H={k}", "--opt", f"J={k}", "--opt", f"Q={k}",
            "--device", "cpu", "--quiet", "--skip-done", "--out", str(out), *extra]


def read_cells(root: Path) -> List[Dict[str, Any]]:
    cells = []
    for summary in sorted(root.glob("*/summary.json")):
        s = json.loads(summary.read_text())
        events = []
        metrics = summary.parent / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                rec = json.loads(line)
                if "event" in rec:
                    events.append(rec)
        cells.append({"summary": s, "events": events})
    return cells


def _mean_std(xs: List[float]) -> str:
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.2f} ± {100 * sd:.2f}"


def survival_series(events: List[Dict[str, Any]]) -> List[tuple]:
    """(step, survival) at every update that has one (RigL: "update", IEE: "prune")."""
    return [(e["step"], e["survival_rate"]) for e in events if "survival_rate" in e]


def table(name: str, cells: List[Dict[str, Any]]) -> str:
    rows = [f"### {name}", "",
            "| density | method | seeds | test top-1 (%) | train FLOPs (× dense) | inference FLOPs (× dense) "
            "| mean survival | mean IoU prune / grow |", "|---|---|---|---|---|---|---|---|"]
    by: Dict[tuple, List[Dict[str, Any]]] = {}
    for c in cells:
        s = c["summary"]
        by.setdefault((s["target_density"], s["method"]), []).append(c)
    verdict = []
    for density in sorted({k[0] for k in by}, reverse=True):
        for method in METHODS:
            cs = by.get((density, method), [])
            if not cs:
                continue
            top1 = [c["summary"]["test_top1"] for c in cs]
            flops = statistics.mean(c["summary"].get("train_flops_relative", float("nan")) for c in cs)
            inf = statistics.mean(c["summary"]["inference_flops"] / c["summary"]["dense_inference_flops"]
                                  for c in cs) if "inference_flops" in cs[0]["summary"] else float("nan")
            surv = [v for c in cs for _, v in survival_series(c["events"])]
            iou_p = [e["iou_prune"] for c in cs for e in c["events"] if "iou_prune" in e]
            iou_g = [e["iou_grow"] for c in cs for e in c["events"] if "iou_grow" in e]
            fmt = lambda xs: f"{statistics.mean(xs):.3f}" if xs else "—"  # noqa: E731
            rows.append(f"| {density} | {method} | {len(cs)} | {_mean_std(top1)} | {flops:.3f} | {inf:.3f} "
                        f"| {fmt(surv)} | {fmt(iou_p)} / {fmt(iou_g)} |")
        iee, rigl = by.get((density, "iee"), []), by.get((density, "rigl"), [])
        if iee and rigl:
            a = statistics.mean(c["summary"]["test_top1"] for c in iee)
            b = statistics.mean(c["summary"]["test_top1"] for c in rigl)
            # survival at every IEE update vs RigL's nearest update (same seed)
            worse = total = 0
            for ci in iee:
                seed = ci["summary"]["seed"]
                cr = next((c for c in rigl if c["summary"]["seed"] == seed), None)
                if cr is None:
                    continue
                rs = survival_series(cr["events"])
                for step, v in survival_series(ci["events"]):
                    if rs:
                        nearest = min(rs, key=lambda r: abs(r[0] - step))[1]
                        total += 1
                        worse += v <= nearest
            verdict.append(f"- density {density}: IEE top-1 {'≥' if a >= b else '<'} RigL "
                           f"({100 * a:.2f} vs {100 * b:.2f}); IEE survival above RigL's nearest update at "
                           f"{total - worse}/{total} IEE updates")
    return "\n".join(rows + [""] + verdict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench_iee_quality")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated: {', '.join(TASKS)}")
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=None, help="override every task's epochs")
    ap.add_argument("--report-only", action="store_true", help="print the table from existing cells")
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    names = [t for t in args.tasks.split(",") if t]
    for t in names:
        if t not in TASKS:
            raise SystemExit(f"unknown task '{t}'; allowed: {', '.join(TASKS)}")
    for t in names:
        task = dict(TASKS[t])
        if args.epochs is not None:
            task["epochs"] = args.epochs
        if not args.report_only:
            cmd = compare_cmd(task, out / t, args.densities, args.seeds, args.methods, extra)
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        print(table(f"{t}: {task['model']} on {task['data']}, {task['epochs']} epochs, ERK, "
                    f"ΔT = H = J = Q = {task['interval']}", read_cells(out / t)), flush=True)
        print()


if __name__ == "__main__":
    main()
