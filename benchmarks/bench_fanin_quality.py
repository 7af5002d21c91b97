"""Accuracy cost of constant fan-in (SRigL's structure) against unstructured sparsity at
equal density, for RigL and IEE, paired by seed (issue 13).

Runs ``regrow compare`` twice with the quick MNIST-1D preset (cnn1d, ERK, 1 thread per run),
once per structure, then prints per method and density: mean ± std test top-1 of each
structure and the mean paired difference fan-in − unstructured (same seed, same data).

    PYTHONPATH=src python benchmarks/bench_fanin_quality.py --out runs/fanin-quality
    PYTHONPATH=src python benchmarks/bench_fanin_quality.py --epochs 60 --densities 0.1,0.05 --out ...
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run_grid(out: Path, structure: str, args) -> None:
    cmd = [sys.executable, "-m", "regrow", "compare", "--config", "configs/quick-mnist1d.yaml",
           "--methods", args.methods, "--densities", args.densities, "--seeds", args.seeds,
           "--structure", structure, "--epochs", str(args.epochs), "--skip-done", "--out", str(out / structure)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))


def acc(out: Path, structure: str, method: str, density: str, seed: str) -> float:
    s = json.loads((out / structure / f"{method}-d{density}-s{seed}" / "summary.json").read_text())
    return 100.0 * s["test_top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="rigl,iee")
    ap.add_argument("--densities", default="0.1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    out = Path(args.out)
    for structure in ("unstructured", "fanin"):
        run_grid(out, structure, args)
    seeds = args.seeds.split(",")
    print(f"cnn1d / MNIST-1D, ERK, {args.epochs} epochs, seeds {args.seeds}; test top-1 (%)")
    print("| method | density | unstructured | fan-in | fan-in − unstructured (paired) |")
    print("|---|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        for d in args.densities.split(","):
            u = [acc(out, "unstructured", method, d, s) for s in seeds]
            f = [acc(out, "fanin", method, d, s) for s in seeds]
            diff = [b - a for a, b in zip(u, f)]
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
            print(f"| {method} | {d} | {statistics.fmean(u):.2f} ± {sd(u):.2f} | {statistics.fmean(f):.2f} ± "
                  f"{sd(f):.2f} | {statistics.fmean(diff):+.2f} ± {sd(diff):.2f} |")


if __name__ == "__main__":
    main()
