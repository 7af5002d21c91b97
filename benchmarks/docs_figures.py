"""Regenerate the figures of the documentation from real runs.

Runs one small `regrow compare` (dense, static, SET, RigL and IEE on cnn1d/MNIST-1D,
densities 0.1 and 0.05, 20 epochs, one seed: about two minutes on two CPU cores),
re-renders it with `regrow report`, and copies the plots into docs/figures/:

    .venv/bin/python benchmarks/docs_figures.py              # runs, then copies
    .venv/bin/python benchmarks/docs_figures.py --out runs/docs-figures --skip-done

The figures show what these short runs show, not the benchmark results (those are in
benchmarks/RESULTS.md); the pages that show them say so.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"

COMPARE = [
    "compare", "--methods", "dense,static,set,rigl,iee", "--densities", "0.1,0.05", "--seeds", "0",
    "--model", "cnn1d", "--data", "mnist1d", "--epochs", "20", "--update-interval", "30",
    "--opt", "H=10", "--opt", "J=10", "--opt", "Q=10",
    "--quiet", "--threads", "1", "--deterministic", "--log-every", "10", "--eval-every", "2",
]

# (file in the compare directory, name under docs/figures/)
COPIES = [
    ("plots/accuracy_vs_density.png", "compare-accuracy-vs-density.png"),
    ("plots/structure.png", "compare-structure.png"),
    ("iee-d0.1-s0/plots/loss.png", "run-iee-loss.png"),
    ("iee-d0.1-s0/plots/accuracy.png", "run-iee-accuracy.png"),
    ("iee-d0.1-s0/plots/density.png", "run-iee-density.png"),
    ("iee-d0.1-s0/plots/structure.png", "run-iee-structure.png"),
]


def regrow(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "regrow", *args], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/docs-figures", help="compare directory")
    parser.add_argument("--skip-done", action="store_true", help="keep finished cells")
    args = parser.parse_args()
    out = ROOT / args.out
    regrow(*COMPARE, "--out", str(out), *(["--skip-done"] if args.skip_done else []))
    regrow("report", str(out))
    FIGURES.mkdir(parents=True, exist_ok=True)
    for src, dst in COPIES:
        if not (out / src).is_file():
            raise SystemExit(f"missing {out / src}: did every run finish?")
        shutil.copyfile(out / src, FIGURES / dst)
        print(f"docs/figures/{dst}  <- {args.out}/{src}")


if __name__ == "__main__":
    main()
