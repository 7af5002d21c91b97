"""The `regrow` command end to end on tiny settings: train, resume, compare, report."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import types

import pytest
import torch

from regrow import cli

TINY = ["--model", "mlp", "--model-opt", "hidden=[16]", "--data", "synthetic",
        "--synthetic", "shape=[1,16]", "--synthetic", "num_classes=4", "--synthetic", "train_size=64",
        "--synthetic", "test_size=32", "--epochs", "2", "--batch-size", "16", "--log-every", "2",
        "--device", "cpu", "--quiet"]


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("command,flags", [
    ("train", ["--method", "--density", "--distribution", "--epochs", "--batch-size", "--lr", "--seed",
               "--out", "--config", "--opt", "--update-interval", "--alpha", "--grad-accum", "--amp",
               "--deterministic", "--pretrained", "--quiet", "--structure", "--latency-target", "--latency-ms",
               "--cost", "--latency-table", "--slim-after-updates", "--data-seed", "--pretrained-epochs"]),
    ("compare", ["--methods", "--densities", "--seeds", "--out", "--config", "--epochs"]),
    ("resume", ["run_dir", "--quiet"]),
    ("report", ["path"]),
])
def test_help_of_every_subcommand(command, flags, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in flags:
        assert f in text, f


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "regrow", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for name in ("train", "compare", "resume", "report"):
        assert name in proc.stdout


def test_flags_override_the_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 5\nlr: 0.05\nmethod: set\nmethod_options: {alpha: 0.2}\n")
    out = tmp_path / "run"
    rc, stdout, err = run(["train", "--config", str(recipe), *TINY, "--update-interval", "3",
                           "--opt", "end_fraction=0.5", "--out", str(out)], capsys)
    assert rc == 0, err
    cfg = cli.C.load_yaml(str(out / "config.yaml"))
    assert cfg["epochs"] == 2 and cfg["lr"] == 0.05 and cfg["method"] == "set"
    assert cfg["method_options"] == {"alpha": 0.2, "update_interval": 3, "end_fraction": 0.5}
    assert "| set | 0.1 density |" in stdout and f"run directory: {out}" in stdout
    rc, stdout, _ = run(["report", str(out)], capsys)
    assert rc == 0 and "| set | 0.1 density |" in stdout


@pytest.mark.parametrize("extra,message", [
    (["--method", "magic"], "unknown method 'magic'; allowed:"),
    (["--density", "0"], r"density must be in \(0, 1\]"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--opt", "speed=3"], "unknown option 'speed' for method 'rigl'"),
    (["--opt", "noequals"], "--opt expects key=value"),
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--data", "imagenet"], "unknown dataset 'imagenet'"),
    (["--alpha", "2"], r"alpha must be in \[0, 1\]"),
    (["--config", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
    (["--stop-after-steps", "0"], "--stop-after-steps must be a positive integer"),
])
def test_bad_inputs_fail_before_training_with_status_2(extra, message, tmp_path, capsys):
    out = tmp_path / "bad"
    rc, _, err = run(["train", *TINY, "--out", str(out), *extra], capsys)
    assert rc == 2
    assert err.startswith("regrow train: error: ")
    assert re.search(message, err), err
    assert not (out / "metrics.jsonl").exists()


def test_argparse_rejects_wrong_types(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--epochs", "three"])
    assert e.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def test_stop_and_resume_through_the_cli(tmp_path, capsys):
    common = ["train", *TINY, "--deterministic", "--update-interval", "2"]
    assert run([*common, "--out", str(tmp_path / "a")], capsys)[0] == 0
    rc, stdout, _ = run([*common, "--out", str(tmp_path / "b"), "--stop-after-steps", "5", "--no-quiet"], capsys)
    assert rc == 0 and f"regrow resume {tmp_path / 'b'}" in stdout
    assert not (tmp_path / "b" / "summary.json").exists()
    assert run(["resume", str(tmp_path / "b")], capsys)[0] == 0
    a, b = ((tmp_path / d / "metrics.jsonl").read_text() for d in "ab")
    assert a == b


def test_resume_of_a_truncated_checkpoint_names_it_and_leaves_it(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(["train", *TINY, "--out", str(out), "--stop-after-steps", "2"], capsys)[0] == 0
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:200])
    before = path.read_bytes()
    rc, _, err = run(["resume", str(out)], capsys)
    assert rc == 2 and f"checkpoint {path} is unreadable" in err
    assert path.read_bytes() == before
    rc, _, err = run(["resume", str(tmp_path / "nothing")], capsys)
    assert rc == 2 and "checkpoint.pt does not exist" in err


def test_compare_runs_the_grid_and_aggregates_two_seeds(tmp_path, capsys):
    recipe = tmp_path / "grid.yaml"
    recipe.write_text("compare:\n  methods: [dense, static, rigl]\n  options: {rigl: {alpha: 0.2}}\n"
                      "method_options: {update_interval: 2}\n")
    out = tmp_path / "cmp"
    rc, stdout, err = run(["compare", "--config", str(recipe), *TINY, "--densities", "0.2",
                           "--seeds", "0,1", "--out", str(out)], capsys)
    assert rc == 0, err
    cells = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "plots")
    assert cells == ["dense-d1-s0", "dense-d1-s1", "rigl-d0.2-s0", "rigl-d0.2-s1",
                     "static-d0.2-s0", "static-d0.2-s1"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["density"], r["seeds"]) for r in rows] == [
        ("dense", "1.0", "2"), ("static", "0.2", "2"), ("rigl", "0.2", "2")]
    tops = [json.loads((out / f"rigl-d0.2-s{s}" / "summary.json").read_text())["test_top1"] for s in (0, 1)]
    assert float(rows[2]["test_top1_mean"]) == pytest.approx(sum(tops) / 2)
    rigl_cfg = cli.C.load_yaml(str(out / "rigl-d0.2-s0" / "config.yaml"))
    assert rigl_cfg["method_options"] == {"update_interval": 2, "alpha": 0.2}
    assert cli.C.load_yaml(str(out / "static-d0.2-s0" / "config.yaml"))["method_options"] == {}
    assert (out / "results.md").exists() and (out / "plots" / "accuracy_vs_density.png").exists()
    assert "| rigl | 0.2 | 2 |" in stdout


@pytest.mark.parametrize("args,message", [
    (["--methods", "rigl,nosuch"], "unknown method 'nosuch'"),
    (["--methods", "dense,static", "--update-interval", "5"], "'update_interval' is accepted by none of"),
    (["--methods", "rigl", "--densities", "0.1,x"], "--densities must be a comma-separated list of floats"),
    (["--methods", "rigl", "--densities", "2"], r"density must be in \(0, 1\]"),
    ([], "--methods must not be empty"),
])
def test_compare_checks_every_cell_first(args, message, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc, _, err = run(["compare", *TINY, "--out", str(out), *args], capsys)
    assert rc == 2 and re.search(message, err), err
    assert not out.exists()


def test_other_modules_add_subcommands_with_one_entry(monkeypatch, capsys):
    mod = types.ModuleType("regrow_test_ext")

    def add(p):
        p.add_argument("--n", type=int, default=1)

    mod.COMMANDS = [cli.Command("hello", "say hello", add, lambda a: print("hello" * a.n) or 0)]
    monkeypatch.setitem(sys.modules, "regrow_test_ext", mod)
    monkeypatch.setattr(cli, "EXTERNAL", ("regrow_test_ext:COMMANDS",))
    assert cli.main(["hello", "--n", "2"]) == 0
    assert capsys.readouterr().out.strip() == "hellohello"


CHANNEL = ["--method", "iee", "--structure", "channel", "--latency-target", "0.5", "--cost", "flops",
           "--slim-after-updates", "--model", "resnet20", "--data", "synthetic",
           "--synthetic", "shape=[3,8,8]", "--synthetic", "num_classes=4", "--synthetic", "train_size=96",
           "--synthetic", "test_size=32", "--epochs", "4", "--batch-size", "16", "--opt", "H=2",
           "--opt", "J=1", "--opt", "Q=1", "--end-fraction", "0.5", "--log-every", "5", "--device", "cpu",
           "--quiet", "--deterministic", "--threads", "1"]


def test_channel_flags_map_onto_the_method_options():
    args = cli.build_parser().parse_args(["train", "--latency-ms", "2.5", "--cost", "latency",
                                          "--latency-table", "t.json", "--slim-after-updates"])
    assert cli.flag_layer(args)["method_options"] == {
        "latency_ms": 2.5, "cost": "latency", "latency_table": "t.json", "slim_after": True}
    assert "method_options" not in cli.flag_layer(cli.build_parser().parse_args(["train"]))


def test_channel_iee_slims_in_training_and_resumes_bit_identically(tmp_path, capsys):
    """iee + --structure channel runs channel IEE; 3 IEE steps of ΔT = 4 end at step 12, the
    model is slimmed right after the last grow; a run stopped after the slimming resumes."""
    assert run(["train", *CHANNEL, "--out", str(tmp_path / "a")], capsys)[0] == 0
    assert run(["train", *CHANNEL, "--out", str(tmp_path / "b"), "--stop-after-steps", "16"], capsys)[0] == 0
    assert run(["resume", str(tmp_path / "b")], capsys)[0] == 0
    a, b = ((tmp_path / d / "metrics.jsonl").read_text() for d in "ab")
    assert a == b
    events = [json.loads(x) for x in a.splitlines()]
    assert [e["step"] for e in events if e.get("event") == "slim"] == [11]
    from regrow.train import checkpoint as ckpt

    ca, cb = (ckpt.load(tmp_path / d / "checkpoint.pt") for d in "ab")
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (s["method"], s["method_class"], s["structure"]) == ("iee", "iee_channel", "channel")
    st = s["structured"]
    assert st["params"] < st["params_dense"] and st["macs"] < st["macs_dense"]
    assert st["predicted"] <= st["budget"] * (1 + 1e-9) and st["budget"] == 0.5 * st["predicted_dense"]
    for k in ("latency_ms", "latency_ms_dense", "throughput", "throughput_dense", "speedup"):
        assert st[k] > 0, k
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())["structured"]
    for k in ("macs", "macs_dense", "params", "params_dense", "predicted", "predicted_dense", "budget"):
        assert sb[k] == st[k], k  # the resumed run reports the same structure
    from regrow.train.models import build_model

    dense = build_model("resnet20", (3, 8, 8), 4).state_dict()
    assert sum(v.numel() for v in ca["model"].values()) < sum(v.numel() for v in dense.values())
