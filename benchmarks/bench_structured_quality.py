"""Structured quality (issue 6): channel IEE from scratch vs HALP from a dense checkpoint.

For every seed: one dense run (``--dense-epochs``) whose checkpoint HALP starts from;
per latency target, HALP prunes it step by step (``--halp-prune-steps`` ×
``--halp-prune-interval`` optimizer steps) and fine-tunes for ``--finetune-epochs`` in
all, and channel IEE trains from a random structure meeting the budget for
``--iee-epochs`` (by default dense + fine-tune epochs, so both see as many samples).
Every run is a ``regrow train``; finished runs are kept, ``--report-only`` prints the
table from what exists. Training FLOPs: the ledger's ``train_flops_relative`` (HALP's
includes its dense pre-training, read from the checkpoint, over dense training of the
fine-tuning samples only); the last column puts every run over dense training of
``dense_epochs + finetune_epochs`` epochs (IEE's run length by default).
``--iee-end-fraction F`` ends IEE's update period at T_end = F·T (the paper's channel
protocol settles the structure early: 5 of 130 epochs); ``--slim`` passes
``--slim-after-updates`` to the HALP and IEE runs, so their epochs after the last
structure update run on the physically smaller network.

    .venv/bin/python benchmarks/bench_structured_quality.py --model resnet20 --data fashion-mnist \\
        --seeds 0 --targets 0.5,0.3 --cost flops --threads 1 --out runs/f3/structured
    .venv/bin/python benchmarks/bench_structured_quality.py --model resnet20 --data fashion-mnist \\
        --seeds 0,1,2 --targets 0.5,0.3 --cost flops --threads 1 --dense-epochs 2 --finetune-epochs 2 \\
        --iee-epochs 3 --iee-end-fraction 0.3 --hjq 25 --slim --out runs/s2/structured
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List


def train(out: Path, args, extra: List[str], *opts: str) -> None:
    if (out / "summary.json").exists():
        return
    cmd = [sys.executable, "-m", "regrow", "train", "--model", args.model, "--data", args.data,
           "--batch-size", str(args.batch_size), "--optimizer", "sgd", "--lr", str(args.lr), "--momentum", "0.9",
           "--weight-decay", "5e-4", "--schedule", "cosine", "--device", args.device, "--quiet",
           "--threads", str(args.threads), "--eval-every", "1000", "--log-every", "10000", "--out", str(out),
           *opts, *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def summary(run: Path) -> Dict:
    return json.loads((run / "summary.json").read_text())


def ms(xs: List[float], scale: float = 1.0, digits: int = 2) -> str:
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{scale * statistics.mean(xs):.{digits}f} ± {scale * sd:.{digits}f}"


def train_flops(run: Path, s: Dict, key: str = "train_flops_relative") -> float:
    """``train_flops_relative`` with the steps after in-training slimming recounted at the
    slim model's true MACs. The ledger (src/regrow/cost.py) counts a layer missing from the
    method's masks at its full dense FLOPs; after slimming, a group left with a single
    channel is no longer a group (structured/groups.py drops size-1 groups), so its convs
    drop out of the masks and are counted dense. After the slim the structure is fixed and
    every step costs 3·ζ_P, so the excess is (steps after the slim / steps) × (ζ_ledger −
    ζ_true) / ζ_D, with ζ_ledger = the summary's ``inference_flops`` and ζ_true its MACs.
    Zero when nothing was slimmed or the ledger already agrees. ``key`` picks the paper's
    accounting (``train_flops_relative``) or the physical one (``train_flops_physical_relative``;
    both count 3·ζ_P per step after the slim, so the same correction applies)."""
    rel = s[key]
    st = s.get("structured", {})
    if not st.get("slimmed_in_training") or "macs" not in st or not s.get("dense_inference_flops"):
        return rel
    slim_steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                  if '"event": "slim"' in line]
    if not slim_steps:
        return rel
    after = (s["steps"] - slim_steps[0]) / s["steps"]
    excess = s["inference_flops"] / s["dense_inference_flops"] - st["macs"] / st["macs_dense"]
    return rel - after * excess


def epoch_seconds(runs: List[Dict]) -> List[float]:
    """Wall seconds of training steps per epoch (evaluation and setup excluded)."""
    return [r["train_step_seconds"] / r["epochs"] for r in runs if "train_step_seconds" in r and r.get("epochs")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench_structured_quality")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--targets", default="0.5,0.3", help="latency targets, fractions of the dense cost")
    ap.add_argument("--cost", default="flops", help="latency | flops")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--dense-epochs", type=int, default=1)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--iee-epochs", type=int, default=None, help="default: dense + fine-tune epochs")
    ap.add_argument("--halp-prune-steps", type=int, default=10)
    ap.add_argument("--halp-prune-interval", type=int, default=30)
    ap.add_argument("--hjq", type=int, default=25, help="channel IEE's H = J = Q")
    ap.add_argument("--iee-end-fraction", type=float, default=None,
                    help="IEE's T_end / T (--opt end_fraction); default: none passed, so channel IEE's "
                         "own default, the paper's 5/130")
    ap.add_argument("--slim", action="store_true",
                    help="--slim-after-updates for the HALP and IEE runs (not dense)")
    ap.add_argument("--iee-pretrained", action="store_true",
                    help="also run channel IEE from the dense checkpoint (init=criterion) for "
                         "--finetune-epochs, as HALP (runs iee-pt-t*-s*)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="all", choices=("all", "halp", "iee"),
                    help="run only HALP (with its dense runs) or only IEE, e.g. in two processes")
    ap.add_argument("--report-only", action="store_true")
    args, extra = ap.parse_known_args()
    iee_epochs = args.iee_epochs or args.dense_epochs + args.finetune_epochs
    if args.iee_end_fraction is not None and not 0 < args.iee_end_fraction <= 1:
        raise SystemExit(f"--iee-end-fraction must be in (0, 1], got {args.iee_end_fraction}")
    iee_end = [] if args.iee_end_fraction is None else ["--opt", f"end_fraction={args.iee_end_fraction:g}"]
    slim = ["--slim-after-updates"] if args.slim else []
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    targets = [float(t) for t in args.targets.split(",") if t]
    for t in targets:
        if not 0 < t < 1:
            raise SystemExit(f"--targets: each target must be in (0, 1), got {t}")
    if not args.report_only:
        for seed in seeds:
            dense = out / f"dense-s{seed}"
            if args.only != "iee":
                train(dense, args, extra, "--method", "dense", "--epochs", str(args.dense_epochs),
                      "--seed", str(seed))
            for t in targets:
                common = ["--structure", "channel", "--latency-target", str(t), "--cost", args.cost,
                          "--seed", str(seed), *slim]
                if args.only != "iee":
                    train(out / f"halp-t{t:g}-s{seed}", args, extra, "--method", "halp", *common,
                          "--pretrained", str(dense / "checkpoint.pt"), "--epochs", str(args.finetune_epochs),
                          "--opt", f"prune_steps={args.halp_prune_steps}",
                          "--opt", f"prune_interval={args.halp_prune_interval}")
                if args.only != "halp":
                    train(out / f"iee-t{t:g}-s{seed}", args, extra, "--method", "iee", *common,
                          "--epochs", str(iee_epochs), "--opt", f"H={args.hjq}", "--opt", f"J={args.hjq}",
                          "--opt", f"Q={args.hjq}", *iee_end)
                if args.iee_pretrained and args.only != "halp":
                    train(out / f"iee-pt-t{t:g}-s{seed}", args, extra, "--method", "iee", *common,
                          "--pretrained", str(dense / "checkpoint.pt"), "--opt", "init=criterion",
                          "--epochs", str(args.finetune_epochs), "--opt", f"H={args.hjq}",
                          "--opt", f"J={args.hjq}", "--opt", f"Q={args.hjq}", *iee_end)
    # channel IEE's own default end_fraction is the paper's 5/130 (methods/iee_channel.py)
    end = "5/130 (default)" if args.iee_end_fraction is None else f"{args.iee_end_fraction:g}"
    print(f"\n### {args.model} on {args.data}: channel IEE from scratch ({iee_epochs} epochs, H = J = Q = "
          f"{args.hjq}, T_end = {end}·T) vs HALP ({args.dense_epochs} dense + {args.finetune_epochs} epochs pruning "
          f"{args.halp_prune_steps} × {args.halp_prune_interval} steps and fine-tuning), cost {args.cost}, "
          f"{'slimmed after the last structure update' if args.slim else 'not slimmed during training'}\n")
    print("| method | target | seeds | test top-1 (%) | predicted cost (× dense) | MACs (× dense) "
          "| measured latency ms (dense → slim, batch 1) | speedup | train FLOPs (ledger) "
          "| train FLOPs (slim-corrected) "
          f"| train FLOPs (× dense training of {args.dense_epochs + args.finetune_epochs} epochs) "
          f"| physical train FLOPs (× dense training of {args.dense_epochs + args.finetune_epochs} epochs) "
          "| train s / epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    dense_runs = [summary(out / f"dense-s{s}") for s in seeds if (out / f"dense-s{s}" / "summary.json").exists()]
    if dense_runs:
        print(f"| dense ({args.dense_epochs} ep) | 1 | {len(dense_runs)} | "
              f"{ms([r['test_top1'] for r in dense_runs], 100)} | 1 | 1 | — | — | 1.000 | 1.000 | — | — | "
              f"{ms(epoch_seconds(dense_runs), 1, 0)} |")
    diffs = []   # (target, method, Δ top-1, Δ paper FLOPs, Δ physical FLOPs) against HALP
    for t in targets:
        base = None
        for m in ("halp", "iee", "iee-pt"):
            dirs = [out / f"{m}-t{t:g}-s{s}" for s in seeds if (out / f"{m}-t{t:g}-s{s}" / "summary.json").exists()]
            runs = [summary(d) for d in dirs]
            if not runs:
                continue
            st = [r.get("structured", {}) for r in runs]
            pred = [x["predicted"] / x["predicted_dense"] for x in st if "predicted" in x]
            macs = [x["macs"] / x["macs_dense"] for x in st if "macs" in x]
            lat_d = [x["latency_ms_dense"] for x in st if "latency_ms_dense" in x]
            lat = [x["latency_ms"] for x in st if "latency_ms" in x]
            sp = [x["speedup"] for x in st if "speedup" in x]
            ledger = statistics.mean(r["train_flops_relative"] for r in runs)
            own = statistics.mean(train_flops(d, r) for d, r in zip(dirs, runs))
            run_epochs = iee_epochs if m == "iee" else args.finetune_epochs  # HALP, IEE from dense
            same = own * run_epochs / (args.dense_epochs + args.finetune_epochs)
            phys = statistics.mean(train_flops(d, r, "train_flops_physical_relative") for d, r in zip(dirs, runs))
            phys_same = phys * run_epochs / (args.dense_epochs + args.finetune_epochs)
            top = statistics.mean(r["test_top1"] for r in runs)
            if m == "halp":
                base = (top, same, phys_same)
            elif base is not None:
                diffs.append((t, m, 100 * (top - base[0]), same, base[1], phys_same, base[2]))
            print(f"| {m} | {t:g} | {len(runs)} | {ms([r['test_top1'] for r in runs], 100)} | "
                  f"{ms(pred, 1, 3)} | {ms(macs, 1, 3)} | {ms(lat_d)} → {ms(lat)} | {ms(sp)} | {ledger:.3f} | {own:.3f} | "
                  f"{same:.3f} | {phys_same:.3f} | {ms(epoch_seconds(runs), 1, 0)} |")
    if diffs:
        print("\n| target | method | top-1 − HALP (points) | train FLOPs / HALP's, paper | physical |")
        print("|---|---|---|---|---|")
        for t, m, d, own_p, halp_p, own_ph, halp_ph in diffs:
            print(f"| {t:g} | {m} | {d:+.2f} | {own_p:.3f} / {halp_p:.3f} = {own_p / halp_p:.2f}× "
                  f"| {own_ph:.3f} / {halp_ph:.3f} = {own_ph / halp_ph:.2f}× |")


if __name__ == "__main__":
    main()
