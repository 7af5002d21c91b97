"""Accuracy cost of constant fan-in (SRigL's structure) against unstructured sparsity at
equal density, for RigL and IEE, with and without SRigL's neuron ablation, paired by
seed (issue 13).

Runs ``regrow compare`` once per variant with the quick MNIST-1D preset (cnn1d, ERK, one
thread per run, one run at a time), then prints per method and density: mean ± std test
top-1 of each variant, the mean ± std of the paired differences (same seed, same data)
against unstructured and of ablation against plain fan-in, and how many neurons the
ablating runs ended with ablated (per layer, mean over seeds, from the final masks).

Variants: ``unstructured``, ``fanin`` (exactly k per neuron: ``neuron_ablation=false``),
``fanin-ablation`` (neuron ablation at ``--gamma-sal``), ``fanin-ablation-G`` (at γ_sal = G).

    PYTHONPATH=src python benchmarks/bench_fanin_quality.py --out runs/fq60 --epochs 60 \\
        --densities 0.1,0.05 --seeds 0,1,2,3,4
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple


def variant_options(variant: str, gamma_sal: float) -> Tuple[str, List[str]]:
    """(structure, extra ``regrow compare`` arguments) of a variant name."""
    if variant == "unstructured":
        return variant, []
    if variant == "fanin":   # every neuron keeps exactly k (neuron ablation is on by default)
        return variant, ["--opt", "neuron_ablation=false"]
    if variant == "fanin-ablation":
        g = gamma_sal
    elif variant.startswith("fanin-ablation-"):
        g = float(variant.rsplit("-", 1)[1])
    else:
        raise ValueError(f"unknown variant {variant!r}; allowed: unstructured, fanin, fanin-ablation, "
                         f"fanin-ablation-G (G = gamma_sal)")
    return "fanin", ["--opt", "neuron_ablation=true", "--opt", f"gamma_sal={g}"]


def run_grid(out: Path, variant: str, args) -> None:
    structure, extra = variant_options(variant, args.gamma_sal)
    cmd = [sys.executable, "-m", "regrow", "compare", "--config", "configs/quick-mnist1d.yaml",
           "--methods", args.methods, "--densities", args.densities, "--seeds", args.seeds,
           "--structure", structure, "--epochs", str(args.epochs), "--threads", str(args.threads),
           "--out", str(out / variant), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))


def cell(out: Path, variant: str, method: str, density: str, seed: str) -> Path:
    return out / variant / f"{method}-d{density}-s{seed}"


def acc(out: Path, variant: str, method: str, density: str, seed: str) -> float:
    s = json.loads((cell(out, variant, method, density, seed) / "summary.json").read_text())
    return 100.0 * s["test_top1"]


def ablated_neurons(out: Path, variant: str, method: str, density: str, seed: str) -> Dict[str, int]:
    """Empty output neurons per layer in the run's final masks."""
    import torch

    ckpt = torch.load(cell(out, variant, method, density, seed) / "checkpoint.pt", map_location="cpu",
                      weights_only=True)
    masks = ckpt["method"]["state"]["masks"]
    return {n: int((m.reshape(m.shape[0], -1).sum(1) == 0).sum()) for n, m in masks.items()}


def _sd(v: List[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="rigl,iee")
    ap.add_argument("--densities", default="0.1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="unstructured,fanin,fanin-ablation")
    ap.add_argument("--gamma-sal", type=float, default=0.3, help="γ_sal of the fanin-ablation variant")
    ap.add_argument("--no-train", action="store_true", help="only aggregate finished runs")
    args = ap.parse_args()
    out = Path(args.out)
    variants = args.variants.split(",")
    for v in variants:
        variant_options(v, args.gamma_sal)   # a bad name fails before anything trains
    if not args.no_train:
        for v in variants:
            run_grid(out, v, args)
    seeds = args.seeds.split(",")
    fan = [v for v in variants if v != "unstructured"]
    print(f"cnn1d / MNIST-1D, ERK, {args.epochs} epochs, seeds {args.seeds}; test top-1 (%), mean ± std; "
          f"differences paired by seed")
    head = " | ".join(variants)
    diffs = " | ".join(f"{v} − unstructured" for v in fan)
    abl = [v for v in fan if v.startswith("fanin-ablation")]
    extra = " | ".join(f"{v} − fanin" for v in abl) if "fanin" in variants else ""
    print(f"| method | density | {head} | {diffs} |" + (f" {extra} |" if extra else ""))
    ncols = 2 + len(variants) + len(fan) + (len(abl) if extra else 0)
    print("|" + "---|" * 2 + "---:|" * (ncols - 2))
    notes = []
    for method in args.methods.split(","):
        for d in args.densities.split(","):
            a = {v: [acc(out, v, method, d, s) for s in seeds] for v in variants}
            row = [f"{statistics.fmean(a[v]):.2f} ± {_sd(a[v]):.2f}" for v in variants]
            pairs = []
            if "unstructured" in variants:
                for v in fan:
                    diff = [b - u for u, b in zip(a["unstructured"], a[v])]
                    pairs.append(f"{statistics.fmean(diff):+.2f} ± {_sd(diff):.2f}")
            if extra:
                for v in abl:
                    diff = [b - f for f, b in zip(a["fanin"], a[v])]
                    pairs.append(f"{statistics.fmean(diff):+.2f} ± {_sd(diff):.2f}")
            print(f"| {method} | {d} | " + " | ".join(row + pairs) + " |")
            for v in abl:
                per = [ablated_neurons(out, v, method, d, s) for s in seeds]
                mean = {n: statistics.fmean(p[n] for p in per) for n in per[0]}
                notes.append(f"{method} d={d} {v}: ablated neurons at the end (mean over seeds) "
                             + ", ".join(f"{n} {m:.1f}" for n, m in mean.items()))
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()
