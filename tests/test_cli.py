"""The `regrow` command end to end on tiny settings: train, resume, compare, report."""
from __future__ import annotations

import csv
import json
import re
import shlex
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
               "--cost", "--latency-table", "--slim-after-updates", "--data-seed", "--pretrained-epochs",
               "--dist-timeout", "--data-opt"]),
    ("compare", ["--methods", "--densities", "--seeds", "--out", "--config", "--epochs", "--overwrite", "--plan",
                 "--cell"]),
    ("resume", ["run_dir", "--quiet", "--data-root"]),
    ("report", ["path"]),
])
def test_help_of_every_subcommand(command, flags, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in flags:
        assert f in text, f


@pytest.mark.slow
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


@pytest.mark.slow
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
    # export --measure times the slimmed model against the dense architecture, not itself
    from regrow.cli.structured import load_run

    loaded = load_run(str(tmp_path / "a"))
    n_params = [sum(p.numel() for p in loaded[k].parameters()) for k in ("model", "dense")]
    assert n_params[0] < n_params[1] == sum(v.numel() for k, v in dense.items() if "running" not in k
                                             and "num_batches" not in k)


# ---- trust: untrusted files, validation before deletion, one writer, fingerprints -------------
import shutil  # noqa: E402

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import evil_pickle, write_fake_cifar10  # noqa: E402
from regrow.train import checkpoint as ckpt  # noqa: E402


def snapshot(d):
    """Every file under ``d`` with its bytes (what 'nothing was touched' compares)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def quiet_main(argv):
    """cli.main in-process; argparse errors (SystemExit 2) count as a status like any other."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert quiet_main(["train", *TINY, "--out", str(out), "--update-interval", "2"])[0] == 0
    return out


@pytest.fixture
def copy_of(tmp_path):
    def make(src):
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst
    return make


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A run trained on fake CIFAR-10 that keeps the data inside its own directory, as a
    downloaded run directory could."""
    run_dir = tmp_path_factory.mktemp("cifar") / "run"
    write_fake_cifar10(run_dir / "data")
    rc, err = quiet_main(["train", "--model", "mlp", "--model-opt", "hidden=[8]", "--data", "cifar10",
                          "--data-root", str(run_dir / "data"), "--epochs", "1", "--batch-size", "4",
                          "--device", "cpu", "--quiet", "--out", str(run_dir)])
    assert rc == 0, err
    return run_dir


ENTRY_POINTS = {
    # name: (argv builder (run dir, evil data root, scratch dir), whether the stored root is moved outside)
    "resume": (lambda run, evil, tmp: ["resume", str(run)], False),
    "resume, stored root outside": (lambda run, evil, tmp: ["resume", str(run)], True),
    "resume --data-root": (lambda run, evil, tmp: ["resume", str(run), "--data-root", str(evil)], False),
    "export": (lambda run, evil, tmp: ["export", str(run), "--format", "sparse", "--out", str(tmp / "m.pt")], False),
    "export, stored root outside": (lambda run, evil, tmp: ["export", str(run), "--format", "sparse",
                                                            "--out", str(tmp / "m.pt")], True),
    "export --slim": (lambda run, evil, tmp: ["export", str(run), "--slim", "--out", str(tmp / "m.pt")], True),
    "train": (lambda run, evil, tmp: ["train", "--model", "mlp", "--data", "cifar10", "--data-root", str(evil),
                                      "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(tmp / "t")], False),
    "latency-table": (lambda run, evil, tmp: ["latency-table", "--model", "mlp", "--data", "cifar10",
                                              "--data-root", str(evil), "--batch-size", "1",
                                              "--out", str(tmp / "t.json")], False),
}


@pytest.mark.parametrize("kind", ["system", "exec"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_malicious_batches_meta_runs_no_code_at_any_entry_point(entry, kind, cifar_run, copy_of, tmp_path):
    build, outside = ENTRY_POINTS[entry]
    marker = tmp_path / "pwned"
    run = copy_of(cifar_run)
    (run / "data" / "cifar-10-batches-py" / "batches.meta").write_bytes(evil_pickle(marker, kind))
    evil = tmp_path / "evil"
    shutil.copytree(run / "data", evil)
    # the checkpoint names the data inside the run directory, or (outside) a root elsewhere,
    # where only the restricted unpickler stands between the file and the interpreter
    state = ckpt.load(run / "checkpoint.pt")
    state["config"]["data_root"] = str(evil if outside else run / "data")
    ckpt.save(run / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    before = snapshot(run)
    rc, err = quiet_main(build(run, evil, tmp_path))
    assert not marker.exists(), f"{entry} executed the planted pickle"
    assert rc == 2 and "Traceback" not in err, err
    assert re.search(r"refused global '(posix|os|builtins)\.(system|exec)'|lies inside that run directory", err), err
    assert snapshot(run) == before


# Bad options, each with what its error message must name. Late ones need the data, model
# or method built (batch larger than the data, N:M divisibility, model options, ...).
BAD = [
    (["--batch-size", "100000"], "batch_size"),
    (["--structure", "nm", "--opt", "m=5"], "m=5"),
    (["--model-opt", "nosuch=3"], "nosuch"),
    (["--model-opt", "hidden=abc"], "hidden|model_options"),
    (["--opt", "alpha=abc"], "alpha"),
    (["--opt", "end_fraction=abc"], "end_fraction"),
    (["--opt", "include=5"], "include"),
    (["--opt", "alpha=2"], "alpha"),
    (["--density", "2"], "density"),
    (["--epochs", "0"], "epochs"),
    (["--epochs", "three"], "--epochs"),
    (["--lr", "-1"], "lr"),
    (["--schedule", "nosuch"], "schedule"),
    (["--data-root", "/no/such/dir"], "data_root"),
    (["--pretrained", "/no/such.pt"], "pretrained"),
    (["--warmup-epochs", "5"], "warmup_epochs"),
    (["--dist-timeout", "0"], "dist_timeout"),
    (["--stop-after-steps", "0"], "stop-after-steps"),
    (["--method", "iee", "--structure", "channel", "--latency-target", "2"], "latency_target|channel"),
    (["--method", "nosuch"], "method"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, len(BAD) - 1), min_size=1, max_size=3, unique=True),
       overwrite=st.booleans(), command=st.sampled_from(["train", "compare"]))
@pytest.mark.slow
@example(picks=[0], overwrite=True, command="train")  # issue 11: the finished run was deleted first
@example(picks=[1], overwrite=True, command="train")
@example(picks=[2], overwrite=True, command="compare")
def test_bad_options_touch_no_file_of_a_finished_run(picks, overwrite, command, finished, finished_compare):
    """Whatever bad options are given, with or without --overwrite: exit status 2, a message
    naming an offending option, no traceback, and every file of the finished run unchanged."""
    argv, patterns = [], []
    for i in picks:
        flags, pattern = BAD[i]
        if command == "compare":
            flags = ["--methods" if f == "--method" else f for f in flags]
        argv += flags
        patterns.append(pattern)
    target = finished if command == "train" else finished_compare
    before = snapshot(target)
    base = (["train", *TINY, "--update-interval", "2", "--out", str(target)] if command == "train"
            else ["compare", *TINY, "--update-interval", "2", "--methods", "rigl", "--out", str(target)])
    rc, err = quiet_main(base + argv + (["--overwrite"] if overwrite else []))
    assert rc == 2, err
    assert "Traceback" not in err
    if not overwrite:  # "already holds ...: pass --overwrite" names an option as well
        patterns.append("--overwrite")
    assert any(re.search(p, err) for p in patterns), (patterns, err)
    assert snapshot(target) == before


@pytest.fixture(scope="module")
def finished_compare(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    rc, err = quiet_main(["compare", *TINY, "--update-interval", "2", "--methods", "rigl", "--out", str(out)])
    assert rc == 0, err
    return out


def hold_lock(run_dir):
    from test_lock import hold
    return hold(run_dir)


@pytest.mark.parametrize("command", ["train", "resume", "export", "compare"])
def test_a_second_writer_is_refused_naming_the_holder(command, finished, finished_compare, copy_of, tmp_path):
    target = copy_of(finished_compare if command == "compare" else finished)
    locked = target / "rigl-d0.1-s0" if command == "compare" else target
    argv = {"train": ["train", *TINY, "--update-interval", "2", "--out", str(target), "--overwrite"],
            "resume": ["resume", str(target)],
            "export": ["export", str(target), "--format", "sparse", "--out", str(tmp_path / "m.pt")],
            "compare": ["compare", *TINY, "--update-interval", "2", "--methods", "rigl", "--out", str(target),
                        "--overwrite"]}[command]
    proc = hold_lock(locked)
    try:
        before = snapshot(target)
        rc, err = quiet_main(argv)
    finally:
        proc.kill()
        proc.wait()
    assert rc == 2 and f"is in use by PID {proc.pid} on host" in err, err
    assert snapshot(target) == before


def test_resume_refuses_another_runs_checkpoint(finished, copy_of, tmp_path):
    other = tmp_path / "other"
    assert quiet_main(["train", *TINY[4:], "--method", "set", "--model", "cnn1d",
                       "--out", str(other)])[0] == 0
    run = copy_of(finished)
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    before = snapshot(run)
    rc, err = quiet_main(["resume", str(run)])
    assert rc == 2 and "does not belong to run directory" in err, err
    assert "method: 'rigl' in config.yaml, 'set' in the checkpoint" in err
    assert snapshot(run) == before


def test_resume_names_a_checkpoint_whose_tensors_do_not_fit(finished, copy_of):
    run = copy_of(finished)
    state = ckpt.load(run / "checkpoint.pt")
    name = next(k for k in state["model"] if k.endswith("weight"))
    state["model"][name] = torch.zeros(3, 3)
    ckpt.save(run / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    before = snapshot(run)
    rc, err = quiet_main(["resume", str(run), "--stop-after-steps", "100"])
    assert rc == 2 and "checkpoint.pt does not fit the run its config describes" in err and name in err, err
    assert snapshot(run) == before


@pytest.mark.parametrize("opt,message", [
    ("alpha=abc", "method option 'alpha' of 'rigl' must be float, got 'abc'"),
    ("end_fraction=abc", "method option 'end_fraction' of 'rigl' must be float"),
    ("include=5", r"method option 'include' of 'rigl' must be Tuple\[str, \.\.\.\], got 5"),
    ("update_interval=2.5", "method option 'update_interval' of 'rigl' must be"),
    ("dense_first_last=maybe", "method option 'dense_first_last' of 'rigl' must be bool"),
])
def test_typed_method_options(opt, message, tmp_path):
    rc, err = quiet_main(["train", *TINY, "--opt", opt, "--out", str(tmp_path / "r")])
    assert rc == 2 and re.search(message, err) and "Traceback" not in err, err


def test_yaml_strings_are_converted_to_the_option_type(tmp_path):
    assert quiet_main(["train", *TINY, "--opt", "alpha=1e-1", "--out", str(tmp_path / "r")])[0] == 0
    assert cli.C.load_yaml(str(tmp_path / "r" / "config.yaml"))["method_options"]["alpha"] == 0.1


def test_compare_keeps_matching_cells_refuses_others_and_shows_the_asked_grid(tmp_path):
    out = tmp_path / "cmp"
    base = ["compare", *TINY, "--update-interval", "2", "--out", str(out)]
    assert quiet_main(base + ["--methods", "static,rigl"])[0] == 0
    cells = {c: snapshot(out / c) for c in ("static-d0.1-s0", "rigl-d0.1-s0")}
    assert quiet_main(base + ["--methods", "static,rigl"])[0] == 0  # resumable: nothing reruns
    assert {c: snapshot(out / c) for c in cells} == cells
    rc, err = quiet_main(base + ["--methods", "static,rigl", "--epochs", "3"])
    assert rc == 2 and "2 cell(s)" in err and "epochs 2 (asked 3)" in err and "--overwrite" in err, err
    assert {c: snapshot(out / c) for c in cells} == cells
    static = ["compare", *TINY, "--out", str(out), "--methods", "static"]  # ΔT means nothing to static
    assert quiet_main(static)[0] == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["static"]  # rigl's cell is there but was not asked
    assert quiet_main(static + ["--epochs", "3", "--overwrite"])[0] == 0
    assert json.loads((out / "static-d0.1-s0" / "summary.json").read_text())["epochs"] == 3


def test_compare_resumes_an_interrupted_cell(tmp_path):
    out = tmp_path / "cmp"
    base = ["compare", *TINY, "--update-interval", "2", "--out", str(out), "--methods", "rigl", "--deterministic"]
    assert quiet_main(base + ["--stop-after-steps", "3"])[0] == 0
    assert not (out / "rigl-d0.1-s0" / "summary.json").exists()
    assert quiet_main(base)[0] == 0
    ref = tmp_path / "ref"
    assert quiet_main(["train", *TINY, "--update-interval", "2", "--deterministic", "--out", str(ref)])[0] == 0
    assert (out / "rigl-d0.1-s0" / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def test_a_diverged_model_is_never_checkpointed_and_json_has_no_nan(tmp_path):
    out = tmp_path / "n"
    tiny = [a if a != "train_size=64" else "train_size=16" for a in TINY]  # one step per epoch
    rc, err = quiet_main(["train", *tiny, "--method", "static", "--lr", "1e25", "--momentum", "0",
                          "--weight-decay", "0", "--log-every", "1", "--out", str(out)])
    assert rc == 2 and "became non-finite" in err and "not writing it" in err, err
    assert not (out / "checkpoint.pt").exists()

    def no_nan(token):
        raise AssertionError(f"{token} in metrics.jsonl")

    records = [json.loads(x, parse_constant=no_nan) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "epoch" and records[-1]["test_loss"] is None


def test_a_run_that_died_before_its_first_checkpoint_restarts(finished, copy_of, tmp_path):
    run = copy_of(finished)
    for n in ("checkpoint.pt", "summary.json"):
        (run / n).unlink()
    shutil.rmtree(run / "plots")
    with open(run / "metrics.jsonl") as f:  # what was written before the kill
        head = f.readlines()[:2]
    (run / "metrics.jsonl").write_text("".join(head))
    rc, err = quiet_main(["train", *TINY, "--update-interval", "2", "--out", str(run)])
    assert rc == 2 and f"restart it from its config.yaml with 'regrow resume {run}'" in err, err
    assert quiet_main(["resume", str(run)])[0] == 0
    assert (run / "metrics.jsonl").read_text() == (finished / "metrics.jsonl").read_text()
    assert ckpt.load(run / "checkpoint.pt")["loop"]["step"] == ckpt.load(finished / "checkpoint.pt")["loop"]["step"]


def test_structure_updates_log_the_mask_checksum(finished):
    records = [json.loads(x) for x in (finished / "metrics.jsonl").read_text().splitlines()]
    method = [r for r in records if r["event"] not in ("train", "epoch")]
    assert method and all(isinstance(r["mask_checksum"], int) for r in method)
    summary = json.loads((finished / "summary.json").read_text())
    assert method[-1]["mask_checksum"] == summary["mask_checksums"][0]  # no update after the last one
    assert summary["config_fingerprint"] == ckpt.load(finished / "checkpoint.pt")["fingerprint"]


def test_resume_of_a_run_killed_before_writing_anything_says_what_to_run(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / ".regrow.lock").write_text('{"pid": 1}')  # what a kill -9 during data loading leaves
    rc, err = quiet_main(["resume", str(run)])
    assert rc == 2 and "start it again with the same 'regrow train ... --out" in err, err
    assert quiet_main(["train", *TINY, "--out", str(run)])[0] == 0  # and that works: the lock was stale
    assert not (run / ".regrow.lock").exists()


# ---- grids any scheduler can run: compare --plan / --cell, then report -------------------
def _table(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def _no_wall(rows):
    return [r.rsplit("|", 2)[0] for r in rows]  # the last column is wall seconds


def test_plan_then_each_cell_then_report_reproduce_compare(tmp_path, capsys):
    grid = ["compare", *TINY, "--methods", "dense,rigl", "--update-interval", "2", "--seeds", "0,1",
            "--deterministic"]
    rc, serial, err = run(grid + ["--out", str(tmp_path / "serial")], capsys)
    assert rc == 0, err
    dist, plan = tmp_path / "dist", tmp_path / "plan.txt"
    rc, out, err = run(grid + ["--plan", str(plan), "--out", str(dist)], capsys)
    assert rc == 0 and out == "" and "4 cell command(s) written" in err, err
    lines = plan.read_text().splitlines()
    assert len(lines) == 4 and not list(dist.glob("*/summary.json"))  # planning trains nothing
    for i, line in reversed(list(enumerate(lines))):  # any order a scheduler picks
        argv = shlex.split(line)
        assert argv[:2] == ["regrow", "compare"] and argv[-2:] == ["--cell", str(i)] and "--plan" not in argv
        rc, out, err = run(argv[1:], capsys)
        assert rc == 0 and f"[{i + 1}/4]" in out and not _table(out), err
        if i == 2:  # half the grid done: report shows what has finished and names the rest
            rc, out, err = run(["report", str(dist)], capsys)
            assert rc == 0 and [r.split("|")[1].strip() for r in _table(out)[2:]] == ["rigl"]
            assert "2 of 4 cells of the grid have finished; not yet: dense-d1-s0, dense-d1-s1" in err
    rc, reported, err = run(["report", str(dist)], capsys)
    assert rc == 0 and "not yet" not in err
    assert _no_wall(_table(reported)) == _no_wall(_table(serial))  # the same cells, the same figures
    rc, again, _ = run(grid + ["--out", str(dist)], capsys)  # every cell kept: compare's own table
    assert rc == 0 and again.count("kept") == 4
    assert _table(again) == _table(reported)


def test_plan_to_stdout_and_bad_cell_numbers(tmp_path, capsys):
    grid = ["compare", *TINY, "--methods", "static", "--seeds", "0,1,2", "--out", str(tmp_path / "c")]
    rc, out, err = run(grid + ["--plan"], capsys)
    assert rc == 0 and [shlex.split(x)[-1] for x in out.splitlines()] == ["0", "1", "2"], err
    rc, out2, _ = run(grid + ["--plan=-"], capsys)
    assert out2 == out
    rc, _, err = run(grid + ["--cell", "3"], capsys)
    assert rc == 2 and "--cell must be in 0..2 (the grid has 3 cells" in err
    rc, _, err = run(grid + ["--cell", "0", "--plan"], capsys)
    assert rc == 2 and "give one of them" in err
    assert not list((tmp_path / "c").glob("*/summary.json"))


@pytest.mark.parametrize("argv", [
    ["compare", "--methods", "rigl", "--plan", "p.txt", "--seeds", "0"],
    ["compare", "--plan=p.txt", "--methods", "rigl", "--seeds", "0"],
    ["compare", "--methods", "rigl", "--pla", "-", "--seeds", "0"],
    ["compare", "--methods", "rigl", "--seeds", "0", "--plan"],
    ["compare", "--plan", "--methods", "rigl", "--seeds", "0"],
])
def test_plan_lines_drop_the_plan_option_only(argv):
    assert cli.plan_lines(argv, 2) == [
        f"regrow compare --methods rigl --seeds 0 --cell {i}" for i in range(2)]


def test_the_lm_task_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("transformers")
    sample = str(__import__("pathlib").Path(__file__).parent / "data" / "fortunes")
    rc, out, err = run(["train", "--model", "gpt_tiny", "--model-opt", "n_embd=16", "--model-opt", "n_layer=1",
                        "--data", "fortunes", "--data-root", sample, "--data-opt", "block_size=16",
                        "--epochs", "1", "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.01",
                        "--method", "iee", "--opt", "H=1", "--opt", "J=1", "--opt", "Q=1",
                        "--device", "cpu", "--quiet", "--out", str(tmp_path / "lm")], capsys)
    assert rc == 0, err
    head, _, row = _table(out)
    ppl = json.loads((tmp_path / "lm" / "summary.json").read_text())["val_perplexity"]
    assert "val perplexity" in head and f"| {ppl:.3f} |" in row
    assert cli.C.load_yaml(str(tmp_path / "lm" / "config.yaml"))["data_options"] == {"block_size": 16}
