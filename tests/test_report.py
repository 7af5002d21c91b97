"""Tables and plots from hand-written run and compare directories."""
from __future__ import annotations

import csv
import json
import math

import pytest

from regrow import report


def make_run(path, method="rigl", density=0.1, seed=0, top1=0.5, updates=True):
    path.mkdir(parents=True)
    summary = {"method": method, "model": "mlp", "data": "digits", "target_density": density,
               "final_density": density, "per_layer_density": {"a.weight": density, "b.weight": 1.0},
               "test_top1": top1, "steps": 20, "wall_seconds": 2.0, "seed": seed}
    if method != "dense":
        summary["train_flops_relative"] = 0.25
    (path / "summary.json").write_text(json.dumps(summary))
    recs = [{"event": "train", "step": s, "epoch": s / 10, "loss": 1.0 / s, "batch_acc": 0.1 * s / 2,
             "lr": 0.1, "density": density} for s in (5, 10, 15, 20)]
    recs += [{"event": "epoch", "step": s, "epoch": s // 10, "train_loss": 0.5,
              "test_loss": 0.7, "test_acc": top1} for s in (10, 20)]
    if updates:
        recs += [{"event": "update", "step": s, "iou_grow": 0.8, "survival_rate": 0.5,
                  "exploration_degree": 0.2} for s in (4, 8)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_mean_std_golden():
    assert report.mean_std([0.5, 0.7]) == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)))
    assert report.mean_std([0.3]) == (0.3, 0.0)
    m, s = report.mean_std([])
    assert math.isnan(m) and math.isnan(s)


def test_render_run_writes_plots_and_a_row(tmp_path):
    run = make_run(tmp_path / "r")
    table = report.render_run(run)
    for name in ("loss", "accuracy", "density", "structure"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000
    row = table.splitlines()[2]
    assert row.startswith("| rigl | 0.1 density | 0.1000 | 50.00 | 0.250 | – | 20 |")   # no physical figure in this summary


def test_run_table_shows_a_channel_method_s_cost_target():
    s = {"method": "halp", "target_density": 0.1, "final_density": 0.42, "test_top1": 0.9, "steps": 5,
         "structured": {"cost_kind": "latency", "budget": 7.5, "predicted_dense": 15.0}}
    assert report.run_table([s]).splitlines()[2].startswith("| halp | 0.5 × dense latency | 0.4200 | 90.00 |")


def test_structure_series_golden():
    recs = [{"event": "train", "step": 1, "loss": 2.0},
            {"event": "grow", "step": 10, "iou_grow": 0.9, "new_grown_fraction": 0.25, "n_grown": 4},
            {"event": "prune", "step": 15, "survival_rate": 0.5},
            {"event": "grow", "step": 20, "iou_grow": 0.8, "new_grown_fraction": 0.75}]
    assert report.structure_series(recs) == {"iou_grow": ([10, 20], [0.9, 0.8]), "survival_rate": ([15], [0.5]),
                                             "new_grown_fraction": ([10, 20], [0.25, 0.75])}


def test_structure_plot_only_when_the_method_logged_updates(tmp_path):
    run = make_run(tmp_path / "s", method="static", updates=False)
    report.render(run)
    assert (run / "plots" / "loss.png").exists() and not (run / "plots" / "structure.png").exists()


def test_compare_aggregates_seeds(tmp_path):
    root = tmp_path / "cmp"
    make_run(root / "rigl-d0.1-s0", top1=0.5, seed=0)
    make_run(root / "rigl-d0.1-s1", top1=0.7, seed=1)
    make_run(root / "iee-d0.1-s0", method="iee", top1=0.8)
    make_run(root / "dense-d1-s0", method="dense", density=1.0, top1=0.9, updates=False)
    (root / "stray").mkdir()  # not a run: ignored
    table = report.render_compare(root, order=["dense", "rigl", "iee"])
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert [(r["method"], r["seeds"]) for r in rows] == [("dense", "1"), ("rigl", "2"), ("iee", "1")]
    rigl = rows[1]
    assert float(rigl["test_top1_mean"]) == pytest.approx(0.6)
    assert float(rigl["test_top1_std"]) == pytest.approx(math.sqrt(0.02))
    assert rows[0]["train_flops_relative_mean"] == ""
    assert "| rigl | 0.1 | 2 | 60.00 ± 14.14 |" in table
    assert table in (root / "results.md").read_text()
    assert (root / "plots" / "accuracy_vs_density.png").exists()
    assert (root / "plots" / "structure.png").exists()  # iee and rigl IoU/survival on one figure
    # without an order: method names sorted; with compare.json: the grid's order
    assert [r.split(" | ")[0] for r in report.render(root).splitlines()[2:]] == ["| dense", "| iee", "| rigl"]
    (root / "compare.json").write_text(json.dumps({"methods": ["rigl", "iee", "dense"]}))
    assert [r.split(" | ")[0] for r in report.render(root).splitlines()[2:]] == ["| rigl", "| iee", "| dense"]


def test_render_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        report.render(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no finished runs"):
        report.render(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{")
    with pytest.raises(ValueError, match="summary.json is not valid JSON"):
        report.render(bad)


def test_tables_have_as_many_separator_cells_as_header_cells():
    s = {"method": "iee", "target_density": 0.1, "final_density": 0.1, "test_top1": 0.9, "steps": 10,
         "train_flops_relative": 0.13, "train_flops_physical_relative": 0.28, "wall_seconds": 1.0}
    for table in (report.run_table([s]), report.compare_table(report.aggregate([s]))):
        header, sep, row = table.splitlines()[:3]
        assert header.count("|") == sep.count("|") == row.count("|")


def _columns(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_language_model_runs_get_a_perplexity_column(tmp_path):
    for seed, ppl in ((0, 8.0), (1, 10.0)):
        run = make_run(tmp_path / "cmp" / f"iee-d0.1-s{seed}", method="iee", seed=seed)
        s = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**s, "val_perplexity": ppl}))
    make_run(tmp_path / "cmp" / "dense-d1-s0", method="dense", density=1.0)  # no figure: shown as –
    lines = report.render_run(tmp_path / "cmp" / "iee-d0.1-s1").splitlines()
    head, rule, row = (_columns(x) for x in lines)
    assert head[4] == "val perplexity" and row[4] == "10.000" and len(rule) == len(head) == len(row)
    lines = report.render_compare(tmp_path / "cmp", order=["dense", "iee"]).splitlines()
    head, rule, dense, iee = (_columns(x) for x in lines)
    assert head[4] == "val perplexity mean ± std" and len(rule) == len(head) == len(dense)
    assert iee[4] == f"9.000 ± {math.sqrt(2):.3f}" and dense[4] == "–"
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "results.csv")))
    assert float(rows[1]["val_perplexity_mean"]) == 9.0 and rows[0]["val_perplexity_mean"] == ""


def test_classification_tables_have_no_perplexity_and_a_rule_per_column(tmp_path):
    lines = report.render_run(make_run(tmp_path / "r")).splitlines()
    assert "perplexity" not in lines[0] and len(_columns(lines[0])) == len(_columns(lines[1]))
    make_run(tmp_path / "c" / "rigl-d0.1-s0")
    lines = report.render_compare(tmp_path / "c").splitlines()
    assert "perplexity" not in lines[0] and len(_columns(lines[0])) == len(_columns(lines[1]))
    assert "val_perplexity_mean" not in open(tmp_path / "c" / "results.csv").readline()
