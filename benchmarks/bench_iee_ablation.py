"""IEE ablations of the paper's Table 4 on one task (issue 4, "Ablation").

Full IEE against one switch changed at a time, 3 seeds, same recipe:
no freeze (``freeze=false``), no Accuracy Improvement (``J=0``), zero-initialised
growth (``grow_init=zero``) and random growth (``grow_by=random``). The paper
(ResNet-50/ImageNet, 90% ERK, H = J = Q = 150) reports full 74.3, no freeze 73.6,
J = 0 73.4, ZeroInit 74.0, random growth NaN (overflow); the table says for each
variant whether it is worse than full IEE here as well. One more variant, not in the
paper: never-active weights explore from their random init values instead of 0.

Each variant is a `regrow compare` of the ``iee`` method with its ``--opt`` into its
own directory; done cells are kept (``--skip-done``) and ``--report-only`` prints
the table from what exists. 18 cells of ≈ 15 min each on the shared 2-core machine
with the defaults (100 epochs; ``--epochs`` / ``--variants`` cut it down):

    nohup .venv/bin/python benchmarks/bench_iee_ablation.py > runs/bench_iee_ablation.log 2>&1 &
    .venv/bin/python benchmarks/bench_iee_ablation.py --report-only
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

VARIANTS: Dict[str, List[str]] = {
    "full": [],
    "no-freeze": ["freeze=false"],
    "J=0": ["J=0"],
    "zero-init": ["grow_init=zero"],
    "random-grow": ["grow_by=random"],
    # not in the paper: never-active weights explore from their random init values
    "unused-weights": ["unused_init=weights"],
}
PAPER = {"full": 74.3, "no-freeze": 73.6, "J=0": 73.4, "zero-init": 74.0, "random-grow": float("nan"),
         "unused-weights": float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench_iee_ablation")
    ap.add_argument("--model", default="cnn1d")
    ap.add_argument("--data", default="mnist1d")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--density", default="0.1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--hjq", type=int, default=25, help="H = J = Q of full IEE (J = 0 variant: H = Q)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--report-only", action="store_true")
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    names = [v for v in args.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant '{v}'; allowed: {', '.join(VARIANTS)}")
    k = args.hjq
    results: Dict[str, List[float]] = {}
    for v in names:
        opts = {"H": str(k), "J": str(k), "Q": str(k)}
        for o in VARIANTS[v]:
            key, val = o.split("=")
            opts[key] = val
        if not args.report_only:
            cmd = [sys.executable, "-m", "regrow", "compare", "--methods", "iee", "--densities", args.density,
                   "--seeds", args.seeds, "--distribution", "erk", "--model", args.model, "--data", args.data,
                   "--epochs", str(args.epochs), "--batch-size", "128", "--optimizer", "sgd", "--lr", str(args.lr),
                   "--momentum", "0.9", "--weight-decay", "5e-4", "--schedule", "cosine", "--device", "cpu",
                   "--quiet", "--skip-done", "--out", str(out / v), *extra]
            for key, val in opts.items():
                cmd += ["--opt", f"{key}={val}"]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        results[v] = [json.loads(p.read_text())["test_top1"] for p in sorted((out / v).glob("*/summary.json"))]
    print(f"\n### IEE ablation: {args.model} on {args.data}, density {args.density} ERK, {args.epochs} epochs, "
          f"H = J = Q = {k}, seeds {args.seeds}\n")
    print("| variant | seeds | test top-1 (%) | Δ vs full | worse than full? | paper top-1 (ResNet-50/ImageNet) |")
    print("|---|---|---|---|---|---|")
    full = statistics.mean(results["full"]) if results.get("full") else math.nan
    for v, xs in results.items():
        if not xs:
            print(f"| {v} | 0 | — | — | — | {PAPER[v]} |")
            continue
        m = statistics.mean(xs)
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        delta = 100 * (m - full)
        worse = "—" if v == "full" else ("yes" if m < full else "no")
        print(f"| {v} | {len(xs)} | {100 * m:.2f} ± {100 * sd:.2f} | {delta:+.2f} | {worse} | {PAPER[v]} |")


if __name__ == "__main__":
    main()
