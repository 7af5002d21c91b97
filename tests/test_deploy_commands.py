"""`regrow export --format ...` and `regrow bench` on a trained run (regrow.cli.deploy)."""
from __future__ import annotations

import json

import pytest
import torch

import regrow
from regrow import cli

TINY = ["--model", "mlp", "--model-opt", "hidden=[32]", "--data", "synthetic",
        "--synthetic", "shape=[1,16]", "--synthetic", "num_classes=4", "--synthetic", "train_size=64",
        "--synthetic", "test_size=32", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def fanin_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fanin"
    assert cli.main(["train", "--method", "rigl", "--structure", "fanin", "--density", "0.25",
                     "--update-interval", "2", "--out", str(out)] + TINY) == 0
    return out


@pytest.mark.parametrize("fmt", ["sparse", "fanin"])
def test_export_run_writes_a_loadable_file_and_report(fanin_run, fmt, tmp_path, capsys):
    out = tmp_path / f"{fmt}.pt"
    rc = cli.main(["export", str(fanin_run), "--format", fmt, "--batch-size", "1", "--batch-size", "8",
                   "--repeats", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "chosen" in text and "vs dense" in text
    report = json.loads((tmp_path / f"{fmt}.pt.json").read_text())
    assert [l["layer"] for l in report["layers"]] == ["net.fc1", "net.fc2", "net.fc3"] or report["layers"]
    torch.load(out, weights_only=True)
    model = regrow.load_export(out)        # rebuilt from the stored builder (zoo model)
    assert model(torch.randn(3, 1, 16)).shape == (3, 4)


def test_export_errors_are_actionable(fanin_run, tmp_path, capsys):
    assert cli.main(["export", str(fanin_run), "--out", str(tmp_path / "x.pt")]) == 2
    assert "--format is required" in capsys.readouterr().err
    assert cli.main(["export", str(fanin_run), "--slim", "--format", "sparse", "--out", str(tmp_path / "x.pt")]) == 2
    assert "contradicts" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["export", str(fanin_run), "--format", "nm", "--out", str(tmp_path / "x.pt")]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nowhere"), "--format", "sparse", "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()


def test_bench_run_writes_table_json_and_plot(fanin_run, tmp_path, capsys):
    rc = cli.main(["bench", str(fanin_run), "--batch-size", "8", "--repeats", "2", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert rc == 0 and "dense (control)" in text and "regrow fanin" in text and "csr (by hand)" in text
    res = json.loads((tmp_path / "bench.json").read_text())
    assert {r["batch"] for r in res["rows"]} == {1, 8}
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert cli.main(["bench", str(fanin_run), "--formats", "coo"]) == 2


@pytest.mark.parametrize("command,flags", [
    ("export", ["--format", "--slim", "--batch-size", "--threads", "--out", "--measure"]),
    ("bench", ["--formats", "--batch-size", "--threads", "--repeats", "--out"]),
])
def test_help_lists_the_flags(command, flags, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert all(f in text for f in flags)


def test_bench_an_exported_file_rebuilds_its_dense_model(fanin_run, tmp_path, capsys):
    out = tmp_path / "fanin.pt"
    assert cli.main(["export", str(fanin_run), "--format", "fanin", "--repeats", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["bench", str(out), "--batch-size", "4", "--repeats", "2", "--formats", "sparse"]) == 0
    text = capsys.readouterr().out
    assert "regrow sparse" in text and (tmp_path / "bench.md").exists()
    assert cli.main(["bench", str(tmp_path / "missing.pt")]) == 2
