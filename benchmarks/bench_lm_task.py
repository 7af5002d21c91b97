"""The language-model task at density 0.1 (issue 14): dense vs RigL vs IEE (unstructured,
ERK) vs IEE 2:4, validation perplexity after a fixed budget.

Task and budget are the shipped recipes: gpt_tiny (GPT-2 architecture, 2 layers x 64,
0.12M parameters) on the text of Debian's ``fortunes`` package (byte tokens, blocks of
128, 10% of the fortunes held out), one epoch = 1128 AdamW steps of 16 x 128 tokens,
one torch thread, cells run one after another (one process). The 2:4 row is density
0.5 by construction. It runs

    regrow compare --config configs/gpt-tiny-fortunes.yaml       --out OUT/unstructured
    regrow compare --config configs/gpt-tiny-fortunes-2of4.yaml  --out OUT/2of4

(finished cells are kept, so a stopped benchmark continues) and prints per-seed and
mean ± std perplexity with the training-step time. Needs ``apt-get install fortunes``.

    PYTHONPATH=src python benchmarks/bench_lm_task.py --out runs/bench_lm --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("dense", "rigl", "iee", "iee 2:4")
GRIDS = {"unstructured": ROOT / "configs" / "gpt-tiny-fortunes.yaml",
         "2of4": ROOT / "configs" / "gpt-tiny-fortunes-2of4.yaml"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_lm")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--report-only", action="store_true", help="print the table from the cells that exist")
    args = ap.parse_args()
    from regrow import cli

    out = Path(args.out)
    t0 = time.perf_counter()
    if not args.report_only:
        for name, recipe in GRIDS.items():
            rc = cli.main(["compare", "--config", str(recipe), "--seeds", args.seeds, "--out", str(out / name)])
            if rc:
                return rc
    rows = []
    for name in GRIDS:
        cells = {}
        for f in sorted((out / name).glob("*/summary.json")):
            s = json.loads(f.read_text())
            label = s["method"] + (" 2:4" if s["structure"] == "nm" else "")
            cells.setdefault((label, s["target_density"]), []).append(s)
        for (label, density), runs in cells.items():
            runs.sort(key=lambda s: s["seed"])
            ppl = [s["val_perplexity"] for s in runs]
            rows.append((label, density, runs, ppl))
    rows.sort(key=lambda r: (ORDER.index(r[0]) if r[0] in ORDER else len(ORDER), r[0], -r[1]))
    print(f"\ngpt_tiny on fortunes, {rows[0][2][0]['steps'] if rows else '?'} steps of 16 x 128 tokens; "
          f"validation perplexity (byte level)\n")
    print("| method | density | seeds | per seed | mean ± std | next-byte top-1 (%) | train FLOPs (× dense) "
          "paper / physical | training s per run: CPU / wall |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for label, density, runs, ppl in rows:
        std = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
        top1 = statistics.mean(s["test_top1"] for s in runs) * 100
        wall = statistics.mean(s["train_step_seconds"] for s in runs)
        cpu = statistics.mean(s["train_step_cpu_seconds"] for s in runs)
        flops = statistics.mean(s["train_flops_relative"] for s in runs)
        physical = statistics.mean(s["train_flops_physical_relative"] for s in runs)
        print(f"| {label} | {density:g} | {len(runs)} | {', '.join(f'{p:.3f}' for p in ppl)} | "
              f"{statistics.mean(ppl):.3f} ± {std:.3f} | {top1:.2f} | {flops:.3f} / {physical:.3f} | "
              f"{cpu:.0f} / {wall:.0f} |")
    print(f"\nwall time of this invocation: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
