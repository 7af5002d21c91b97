"""Tables and plots for run directories and compare directories (matplotlib, Agg).

* A run directory (``summary.json`` + ``metrics.jsonl``) gets ``plots/loss.png``,
  ``plots/accuracy.png``, ``plots/density.png`` (per-layer density bars) and, when
  the method logged structure updates, ``plots/structure.png`` (mask IoU, survival
  rate, exploration degree and the share of grown weights that are new, over steps;
  IEE §4.4, DST-EE §3).
* A compare directory (one run directory per cell) gets ``results.csv``,
  ``results.md`` (mean ± sample std over seeds per method and density),
  ``plots/accuracy_vs_density.png`` and ``plots/structure.png`` with every dynamic
  method's IoU and survival rate over steps on the same axes (e.g. IEE vs RigL).

Language-model runs (their summaries carry ``val_perplexity``) get a validation
perplexity column in both tables and in ``results.csv``; their top-1 is next-token
accuracy.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STRUCTURE_KEYS = ("iou_grow", "iou_prune", "survival_rate", "exploration_degree", "new_grown_fraction")
CSV_FIELDS = ("method", "density", "seeds", "test_top1_mean", "test_top1_std", "final_density_mean",
              "train_flops_relative_mean", "train_flops_physical_relative_mean", "steps", "wall_seconds_mean")
PPL_FIELDS = ("val_perplexity_mean", "val_perplexity_std")  # added where the runs are language models


def read_metrics(run_dir: Path) -> List[Dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: Path) -> Dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (is {run_dir} a finished run directory?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(records, event: str, key: str):
    pts = [(r["step"], r[key]) for r in records if r.get("event") == event and r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def structure_series(records) -> Dict[str, tuple]:
    out = {}
    method_records = [r for r in records if r.get("event") not in ("train", "epoch")]
    for key in STRUCTURE_KEYS:
        xs = [r["step"] for r in method_records if r.get(key) is not None]
        ys = [r[key] for r in method_records if r.get(key) is not None]
        if xs:
            out[key] = (xs, ys)
    return out


def render_run(run_dir) -> str:
    """Write a run's plots and return its one-row markdown summary."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    records = read_metrics(run_dir)
    plots = run_dir / "plots"
    title = f"{summary.get('method')} · {summary.get('model')} · {summary.get('data')}"

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*_series(records, "train", "loss"), label="train (logged steps)")
    ax.plot(*_series(records, "epoch", "test_loss"), "o-", label="test")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    _save(fig, plots / "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*_series(records, "train", "batch_acc"), alpha=0.6, label="train (batch at logged steps)")
    ax.plot(*_series(records, "epoch", "test_acc"), "o-", label="test")
    ax.set(xlabel="step", ylabel="top-1 accuracy", title=title)
    ax.legend()
    _save(fig, plots / "accuracy.png")

    layers = summary.get("per_layer_density", {})
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(layers)), 4))
    ax.bar(range(len(layers)), list(layers.values()))
    ax.set_xticks(range(len(layers)), list(layers), rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="density", ylim=(0, 1.05), title=f"per-layer density (total {summary.get('final_density', 0):.4f})")
    _save(fig, plots / "density.png")

    series = structure_series(records)
    if series:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, (xs, ys) in series.items():
            ax.plot(xs, ys, ".-", label=key)
        ax.set(xlabel="step", ylim=(0, 1.05), title=f"structure updates · {summary.get('method')}")
        ax.legend()
        _save(fig, plots / "structure.png")
    return run_table([summary])


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _target(summary: Dict[str, Any]) -> str:
    """Density for weight sparsity; for channel methods the cost budget over the dense cost."""
    st = summary.get("structured") or {}
    if st.get("budget") and st.get("predicted_dense"):
        return f"{st['budget'] / st['predicted_dense']:.3g} × dense {st.get('cost_kind', 'cost')}"
    return f"{summary.get('target_density', 0):.4g} density"


def _flops(v) -> str:
    return "–" if v is None else f"{v:.3f}"


# Training FLOPs in two accountings: the papers' (IEE appendix §3) and what each step
# physically needs with sparse kernels (they differ for IEE's Reactivate & Explore).
FLOPS_HEADER = "train FLOPs (× dense): paper | physical"


def _ppl(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def run_table(summaries: List[Dict[str, Any]]) -> str:
    lm = any("val_perplexity" in s for s in summaries)
    ppl_head, ppl_rule = (" val perplexity |", "---|") if lm else ("", "")
    lines = [f"| method | target | final density | test top-1 (%) |{ppl_head} {FLOPS_HEADER} | steps | wall (s) |",
             f"|---|---|---|---|{ppl_rule}---|---|---|---|"]  # FLOPS_HEADER is two columns
    for s in summaries:
        ppl = f" {_ppl(s.get('val_perplexity'))} |" if lm else ""
        lines.append(
            f"| {s.get('method')} | {_target(s)} | {s.get('final_density', 0):.4f} | "
            f"{_pct(s.get('test_top1'))} |{ppl} {_flops(s.get('train_flops_relative'))} | "
            f"{_flops(s.get('train_flops_physical_relative'))} | {s.get('steps')} | "
            f"{s.get('wall_seconds', 0):.1f} |")
    return "\n".join(lines)


def mean_std(values: List[float]) -> tuple:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def find_runs(compare_dir: Path) -> List[Path]:
    return sorted(p.parent for p in Path(compare_dir).glob("*/summary.json"))


def aggregate(summaries: List[Dict[str, Any]], order: List[str] = ()) -> List[Dict[str, Any]]:
    """One row per (method, target density): mean ± std over seeds."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for s in summaries:
        groups.setdefault((s["method"], round(float(s["target_density"]), 6)), []).append(s)
    rank = {m: i for i, m in enumerate(order)}
    rows = []
    for (method, density), runs in sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0][0], -kv[0][1])):
        top1 = mean_std([r["test_top1"] for r in runs if r.get("test_top1") is not None])
        flops = [r["train_flops_relative"] for r in runs if r.get("train_flops_relative") is not None]
        physical = [r["train_flops_physical_relative"] for r in runs
                    if r.get("train_flops_physical_relative") is not None]
        ppl = [r["val_perplexity"] for r in runs if r.get("val_perplexity") is not None]
        lm = any("val_perplexity" in r for r in runs)
        rows.append({
            **({"val_perplexity_mean": mean_std(ppl)[0] if ppl else None,
                "val_perplexity_std": mean_std(ppl)[1] if ppl else None} if lm else {}),
            "method": method, "density": density, "seeds": len(runs),
            "test_top1_mean": top1[0], "test_top1_std": top1[1],
            "final_density_mean": mean_std([r["final_density"] for r in runs])[0],
            "train_flops_relative_mean": mean_std(flops)[0] if flops else None,
            "train_flops_physical_relative_mean": mean_std(physical)[0] if physical else None,
            "steps": runs[0].get("steps"),
            "wall_seconds_mean": mean_std([r.get("wall_seconds", 0.0) for r in runs])[0],
        })
    return rows


def compare_table(rows: List[Dict[str, Any]]) -> str:
    lm = any("val_perplexity_mean" in r for r in rows)
    ppl_head, ppl_rule = (" val perplexity mean ± std |", "---|") if lm else ("", "")
    lines = [f"| method | density | seeds | test top-1 (%) mean ± std |{ppl_head} final density | {FLOPS_HEADER} "
             f"| wall (s) |",
             f"|---|---|---|---|{ppl_rule}---|---|---|---|"]  # FLOPS_HEADER is two columns
    for r in rows:
        ppl = ""
        if lm:
            ppl = (" – |" if r.get("val_perplexity_mean") is None else
                   f" {r['val_perplexity_mean']:.3f} ± {r['val_perplexity_std']:.3f} |")
        lines.append(
            f"| {r['method']} | {r['density']:g} | {r['seeds']} | {100 * r['test_top1_mean']:.2f} ± "
            f"{100 * r['test_top1_std']:.2f} |{ppl} {r['final_density_mean']:.4f} | "
            f"{_flops(r['train_flops_relative_mean'])} | {_flops(r.get('train_flops_physical_relative_mean'))} | "
            f"{r['wall_seconds_mean']:.1f} |")
    return "\n".join(lines)


def render_compare(compare_dir, order: List[str] = (), runs: Optional[List[Path]] = None) -> str:
    """Write results.csv, results.md and plots for a compare directory; return the table.
    ``runs``: the cells to show (``regrow compare`` passes exactly its grid); default: every
    ``*/summary.json``."""
    compare_dir = Path(compare_dir)
    runs = find_runs(compare_dir) if runs is None else [r for r in runs if (Path(r) / "summary.json").is_file()]
    if not runs:
        raise FileNotFoundError(f"{compare_dir} holds no finished runs (no */summary.json)")
    summaries = [read_summary(r) for r in runs]
    grid = compare_dir / "compare.json"
    if not order and grid.is_file():  # the order `regrow compare` ran the methods in
        order = json.loads(grid.read_text()).get("methods", [])
    rows = aggregate(summaries, list(order))
    lm = any("val_perplexity_mean" in r for r in rows)
    with open(compare_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS + (PPL_FIELDS if lm else ()))
        w.writeheader()
        for r in rows:
            w.writerow(r)
    s0 = summaries[0]
    table = compare_table(rows)
    (compare_dir / "results.md").write_text(
        f"# {s0.get('model')} on {s0.get('data')}\n\n{table}\n\n"
        "Mean ± sample standard deviation over seeds; one run directory per cell.\n")

    plots = compare_dir / "plots"
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["density"])
        ax.errorbar([r["density"] for r in mine], [100 * r["test_top1_mean"] for r in mine],
                    yerr=[100 * r["test_top1_std"] for r in mine], marker="o", capsize=3, label=method)
    ax.set(xscale="log", xlabel="density", ylabel="test top-1 (%)", title="accuracy vs density")
    ax.legend()
    _save(fig, plots / "accuracy_vs_density.png")

    # IoU / survival of every dynamic method on shared axes (first seed of each cell)
    curves = {}
    for run, s in zip(runs, summaries):
        key = (s["method"], s["target_density"])
        if key in curves:
            continue
        series = structure_series(read_metrics(run))
        if series:
            curves[key] = series
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i, ((method, density), series) in enumerate(curves.items()):
            for ax, key in zip(axes, ("iou_grow", "survival_rate")):
                if key in series:  # one colour per run on both panels
                    ax.plot(*series[key], ".-", color=f"C{i % 10}", label=f"{method} d={density:g}")
        for ax, key in zip(axes, ("mask IoU (before vs after update)", "survival rate of grown weights")):
            ax.set(xlabel="step", ylabel=key, ylim=(0, 1.05))
            ax.legend(fontsize=7)
        _save(fig, plots / "structure.png")
    return table


def render(path) -> str:
    """Re-render a run directory or a compare directory, whichever ``path`` is."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory (expected a run or compare directory)")
    if (path / "summary.json").is_file():
        return render_run(path)
    return render_compare(path)
