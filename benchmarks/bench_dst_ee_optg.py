"""DST-EE and OptG against dense, RigL and IEE (issue 5), through ``regrow compare``.

Three experiments, each resumable (finished cells are kept, ``--skip-done``):

``grid``   one dataset × densities × seeds for dense, rigl, iee, dst_ee, optg (every
           method with its own default distribution: ERK, global for OptG); prints
           test top-1 mean ± std, training FLOPs relative to dense, inference FLOPs, and
           for OptG vs ERK RigL at the same density (equal parameter count) the
           inference-FLOPs ratio and the per-layer densities (plot: optg_layers_d*.png).
``csweep`` DST-EE's exploration weight c (Eq. 1) on one dataset and density: final
           exploration degree R and test top-1 per c (paper Figure 3: higher c, higher R).

    .venv/bin/python benchmarks/bench_dst_ee_optg.py grid --data mnist1d --model cnn1d \\
        --epochs 10 --update-interval 30 --out runs/bench-h5/mnist1d
    .venv/bin/python benchmarks/bench_dst_ee_optg.py grid --data fashion-mnist --model mlp \\
        --epochs 3 --update-interval 50 --out runs/bench-h5/fmnist
    .venv/bin/python benchmarks/bench_dst_ee_optg.py csweep --data mnist1d --model cnn1d \\
        --epochs 10 --update-interval 30 --density 0.05 --cs 0,1e-3,1e-2,1e-1,1 --out runs/bench-h5/csweep

IEE uses H = J = Q = round(ΔT / 3), so its period matches the others' ΔT. An OptG variant
with shorter "epochs" (more of the paper's sigmoid shape in a short run), next to the
RigL cells of the grid above:

    .venv/bin/python benchmarks/bench_dst_ee_optg.py grid --methods optg --optg-epoch-steps 8 \
        --epochs 10 --reference runs/bench-h5/mnist1d --out runs/bench-h5/mnist1d-optg-es8
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import yaml

METHODS = ["dense", "rigl", "iee", "dst_ee", "optg"]


def run_compare(out: Path, methods: List[str], densities: List[float], seeds: List[int], args,
                options: Dict[str, dict]) -> None:
    """One ``regrow compare`` call; its recipe is written next to the results."""
    out.mkdir(parents=True, exist_ok=True)
    recipe = {
        "compare": {"methods": methods, "densities": densities, "seeds": seeds,
                    "options": {m: o for m, o in options.items() if m in methods}},
        "model": args.model, "data": args.data, "distribution": None, "epochs": args.epochs,
        "batch_size": args.batch_size, "optimizer": "sgd", "lr": args.lr, "momentum": 0.9,
        "weight_decay": 5e-4, "schedule": "cosine", "quiet": True, "deterministic": True,
        "device": args.device, "log_every": 10_000,
    }
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    cmd = [sys.executable, "-m", "regrow", "compare", "--config", str(path), "--out", str(out), "--skip-done"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def method_options(args) -> Dict[str, dict]:
    h = max(1, round(args.update_interval / 3))
    out = {m: {"update_interval": args.update_interval} for m in ("rigl", "dst_ee")}
    out["iee"] = {"H": h, "J": h, "Q": h}
    if getattr(args, "optg_epoch_steps", None):
        out["optg"] = {"epoch_steps": args.optg_epoch_steps}
    return out


def summaries(out: Path) -> List[dict]:
    rows = []
    for f in sorted(out.glob("*/summary.json")):
        s = json.loads(f.read_text())
        s["dir"] = f.parent
        rows.append(s)
    return rows


def last_exploration(run_dir: Path) -> float:
    value = float("nan")
    with open(run_dir / "metrics.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            if "exploration_degree" in r:
                value = r["exploration_degree"]
    return value


def explore_share(run_dir: Path) -> float:
    """Fraction of all grown weights that the bonus term chose (DST-EE's split)."""
    explore = grown = 0
    with open(run_dir / "metrics.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            if "n_grown_explore" in r:
                explore += r["n_grown_explore"]
                grown += r["n_grown"]
    return explore / grown if grown else float("nan")


def mean_std(xs: List[float], digits: int = 2) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def grid(args) -> None:
    out = Path(args.out)
    run_compare(out, args.methods, args.densities, args.seeds, args, method_options(args))
    rows = summaries(out)
    own = {s["method"] for s in rows}
    for ref in args.reference:  # cells of methods not run here, e.g. RigL for an OptG variant
        rows += [s for s in summaries(Path(ref)) if s["method"] not in own]
    groups: Dict[tuple, List[dict]] = {}
    for s in rows:
        groups.setdefault((s["method"], s["target_density"]), []).append(s)
    print(f"\n{args.data} / {args.model}, {args.epochs} epochs, seeds {args.seeds}")
    print("| method | density | distribution | test top-1 (%) | train FLOPs (× dense) | inference FLOPs (× dense) "
          "| exploration degree R |")
    print("|---|---|---|---|---|---|---|")
    for m in METHODS:
        for d in sorted({k[1] for k in groups if k[0] == m}, reverse=True):
            g = groups[(m, d)]
            acc = mean_std([100 * s["test_top1"] for s in g])
            tf = statistics.mean(s["train_flops_relative"] for s in g)
            inf = statistics.mean(s["inference_flops"] / s["dense_inference_flops"] for s in g)
            r = statistics.mean(last_exploration(s["dir"]) for s in g) if m in ("rigl", "dst_ee", "optg", "iee") \
                else float("nan")
            print(f"| {m} | {d:g} | {g[0]['distribution']} | {acc} | {tf:.3f} | {inf:.3f} | "
                  f"{'' if r != r else f'{r:.3f}'} |")
    for d in args.densities:
        optg, rigl = groups.get(("optg", d)), groups.get(("rigl", d))
        if not optg or not rigl:
            continue
        o = statistics.mean(s["inference_flops"] for s in optg)
        r = statistics.mean(s["inference_flops"] for s in rigl)
        print(f"\nOptG (global) vs RigL (ERK) at density {d:g}, equal parameter count: inference FLOPs "
              f"{o:.0f} vs {r:.0f} = {o / r:.3f}×")
        layers = list(optg[0]["per_layer_density"])
        print("| layer | OptG density (mean over seeds) | ERK density |")
        print("|---|---|---|")
        od = {n: statistics.mean(s["per_layer_density"][n] for s in optg) for n in layers}
        ed = {n: rigl[0]["per_layer_density"][n] for n in layers}
        for n in layers:
            print(f"| {n} | {od[n]:.4f} | {ed[n]:.4f} |")
        plot_layers(out / f"optg_layers_d{d:g}.png", layers, od, ed, d, args)


def plot_layers(path: Path, layers, optg, erk, density, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = range(len(layers))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(layers)), 3))
    ax.bar([i - 0.2 for i in x], [optg[n] for n in layers], 0.4, label="OptG (global sort)")
    ax.bar([i + 0.2 for i in x], [erk[n] for n in layers], 0.4, label="ERK (RigL)")
    ax.set_xticks(list(x))
    ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("layer density")
    ax.set_title(f"{args.data}/{args.model}, overall density {density:g}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def csweep(args) -> None:
    out = Path(args.out)
    print(f"\nDST-EE c sweep: {args.data} / {args.model}, density {args.density:g}, {args.epochs} epochs, "
          f"seeds {args.seeds}")
    results = []
    for c in args.cs:
        cell = out / f"c{c:g}"
        opts = {"dst_ee": {"update_interval": args.update_interval, "c": c}}
        run_compare(cell, ["dst_ee"], [args.density], args.seeds, args, opts)
        rows = summaries(cell)
        results.append((c, [100 * s["test_top1"] for s in rows], [last_exploration(s["dir"]) for s in rows],
                        [explore_share(s["dir"]) for s in rows]))
    print("| c | exploration degree R (final) | grown by the bonus (share) | test top-1 (%) |")
    print("|---|---|---|---|")
    for c, acc, r, share in results:
        print(f"| {c:g} | {mean_std(r, 3)} | {mean_std(share, 3)} | {mean_std(acc)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("grid", "csweep"):
        p = sub.add_parser(name)
        p.add_argument("--data", default="mnist1d")
        p.add_argument("--model", default="cnn1d")
        p.add_argument("--epochs", type=int, default=10)
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--lr", type=float, default=0.1)
        p.add_argument("--update-interval", type=int, default=30)
        p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", required=True)
    sub.choices["grid"].add_argument("--densities", type=lambda s: [float(x) for x in s.split(",")],
                                     default=[0.1, 0.05])
    sub.choices["grid"].add_argument("--methods", type=lambda s: s.split(","), default=METHODS)
    sub.choices["grid"].add_argument("--optg-epoch-steps", type=int, default=None,
                                     help="OptG's epoch length in steps (default: the data's epoch)")
    sub.choices["grid"].add_argument("--reference", action="append", default=[],
                                     help="another grid directory whose other methods join the tables")
    sub.choices["csweep"].add_argument("--density", type=float, default=0.05)
    sub.choices["csweep"].add_argument("--cs", type=lambda s: [float(x) for x in s.split(",")],
                                       default=[0.0, 1e-3, 1e-2, 1e-1, 1.0])
    args = ap.parse_args()
    {"grid": grid, "csweep": csweep}[args.cmd](args)


if __name__ == "__main__":
    main()
