"""Reliability of run directories under a careful (and hostile) user (issue 11).

Five checks, one table:

1. **Bad inputs.** ``--sets`` random sets of 1-3 bad options (late ones included: a batch
   larger than the data, N:M divisibility, model options, typed method options, ...), each
   given in-process to ``regrow train`` or ``regrow compare`` over a finished run, half of
   them with ``--overwrite``. Counted: exit status 2 with a message naming an offending
   option and no traceback.
2. **kill -9.** ``--kills`` deterministic tiny trainings as subprocesses, each killed with
   SIGKILL at a uniform random moment of its training (from a little before config.yaml
   is written to the moment summary.json is: kills land while data and model are built,
   before the first checkpoint, mid-epoch and mid-write), then continued the way the messages say (``regrow resume``,
   or ``train`` again when nothing was written). Counted: final checkpoint tensors and
   ``metrics.jsonl`` bit-identical to an uninterrupted run.
3. **Malicious files.** A ``batches.meta`` pickling ``os.system`` or ``exec`` (each would
   create a marker file) at every entry point that reads CIFAR: ``resume`` (stored root
   inside the run, and outside it), ``resume --data-root``, ``export``, ``export --slim``,
   ``train --data-root``, ``latency-table --data-root``. Counted: markers created.
4. **Concurrent writers.** A writer (``train``/``resume``/``compare``) runs as a
   subprocess; once it holds the lock, a second ``train --overwrite``, ``resume``,
   ``export`` or ``compare`` cell starts on the same directory. Counted: second writers
   refused naming the holder; the first writer's results compared with an undisturbed run.
5. **Files lost.** Every file of every finished run touched above, hashed before and after.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_reliability.py --sets 60 --kills 5
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from regrow import cli
from regrow.train import checkpoint as ckpt

# the same bad options, entry points and planted files as the tests
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import evil_pickle, write_fake_cifar10  # noqa: E402
from test_cli import BAD, ENTRY_POINTS  # noqa: E402

TINY = ["--model", "mlp", "--model-opt", "hidden=[16]", "--data", "synthetic", "--synthetic", "shape=[1,16]",
        "--synthetic", "num_classes=4", "--synthetic", "train_size=64", "--synthetic", "test_size=32",
        "--epochs", "2", "--batch-size", "16", "--log-every", "2", "--device", "cpu", "--quiet",
        "--update-interval", "2"]
# a longer deterministic run for kills and concurrent writers (a few seconds of training)
LONG = ["--model", "mlp", "--model-opt", "hidden=[256,256]", "--data", "synthetic", "--synthetic", "shape=[1,64]",
        "--synthetic", "num_classes=4", "--synthetic", "train_size=4096", "--synthetic", "test_size=256",
        "--epochs", "6", "--batch-size", "16", "--log-every", "16", "--device", "cpu", "--quiet",
        "--method", "rigl", "--update-interval", "40", "--deterministic", "--threads", "1", "--checkpoint-every", "3"]



def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def lost(before: dict, after: dict) -> int:
    """Files of ``before`` missing or changed in ``after``."""
    return sum(1 for k, h in before.items() if after.get(k) != h)


def main_quiet(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


def regrow_proc(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "regrow", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for(path: Path, proc, timeout: float = 120.0) -> float:
    t0 = time.perf_counter()
    while not path.exists():
        if proc.poll() is not None or time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{path} never appeared (rc {proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.005)
    return time.perf_counter()


# ---- 1. bad inputs ----------------------------------------------------------------------
def bad_inputs(tmp: Path, sets: int, rng: random.Random) -> dict:
    run, cmp_dir = tmp / "finished", tmp / "cmp"
    assert main_quiet(["train", *TINY, "--out", str(run)])[0] == 0
    assert main_quiet(["compare", *TINY, "--methods", "rigl", "--out", str(cmp_dir)])[0] == 0
    before = {d: snapshot(d) for d in (run, cmp_dir)}
    named = status2 = traces = 0
    for i in range(sets):
        picks = rng.sample(range(len(BAD)), rng.randint(1, 3))
        command = "train" if i % 3 else "compare"
        overwrite = i % 2 == 0
        argv, patterns = [], [] if overwrite else ["--overwrite"]
        for j in picks:
            flags, pattern = BAD[j]
            argv += ["--methods" if f == "--method" and command == "compare" else f for f in flags]
            patterns.append(pattern)
        base = (["train", *TINY, "--out", str(run)] if command == "train"
                else ["compare", *TINY, "--methods", "rigl", "--out", str(cmp_dir)])
        rc, err = main_quiet(base + argv + (["--overwrite"] if overwrite else []))
        status2 += rc == 2
        traces += "Traceback" in err
        named += rc == 2 and any(re.search(p, err) for p in patterns)
    files = sum(len(b) for b in before.values())
    return {"tried": sets, "status2": status2, "named": named, "tracebacks": traces,
            "lost": sum(lost(before[d], snapshot(d)) for d in before), "files": files}


# ---- 2. kill -9 ---------------------------------------------------------------------------
def final_state(run: Path) -> tuple:
    sd = ckpt.load(run / "checkpoint.pt")
    tensors = {f"model.{k}": v for k, v in sd["model"].items()}

    def flat(prefix, obj):
        if torch.is_tensor(obj):
            tensors[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                flat(f"{prefix}.{k}", v)

    flat("method", sd["method"])
    return tensors, sd["loop"]["step"], (run / "metrics.jsonl").read_text()


def same_state(a: tuple, b: tuple) -> bool:
    ta, sa, ma = a
    tb, sb, mb = b
    return (sa == sb and ma == mb and ta.keys() == tb.keys()
            and all(torch.equal(ta[k], tb[k]) for k in ta))


def kill_trials(tmp: Path, kills: int, rng: random.Random) -> dict:
    ref = tmp / "ref"
    p = regrow_proc(["train", *LONG, "--out", str(ref)])
    t_lock = wait_for(ref / ".regrow.lock", p)
    d_config = wait_for(ref / "config.yaml", p) - t_lock
    d_summary = wait_for(ref / "summary.json", p) - t_lock
    p.wait()
    # kill moments: uniform over training (config.yaml written .. summary.json written),
    # widened before it by a quarter of its length (building data/model/method)
    lo, hi = max(0.0, d_config - 0.25 * (d_summary - d_config)), d_summary
    assert p.returncode == 0, p.stderr.read()
    reference = final_state(ref)
    identical, phases = 0, []
    for k in range(kills):
        run = tmp / f"kill{k}"
        p = regrow_proc(["train", *LONG, "--out", str(run)])
        wait_for(run / ".regrow.lock", p)
        time.sleep(rng.uniform(lo, hi))
        p.send_signal(signal.SIGKILL)
        p.wait()
        has = [n for n in ("config.yaml", "checkpoint.pt", "summary.json") if (run / n).exists()]
        phase = ("finished" if "summary.json" in has else "after a checkpoint" if "checkpoint.pt" in has
                 else "before the first checkpoint" if has else "before config.yaml")
        step = ckpt.load(run / "checkpoint.pt")["loop"]["step"] if "checkpoint.pt" in has else 0
        phases.append(f"{phase} (step {step})")
        again = ["resume", str(run)] if has else ["train", *LONG, "--out", str(run)]
        r = subprocess.run([sys.executable, "-m", "regrow", *again], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"  kill {k}: {' '.join(again[:1])} failed: {r.stderr[-400:]}")
            continue
        identical += same_state(final_state(run), reference)
    return {"trials": kills, "identical": identical, "phases": phases, "window": (lo, hi)}


# ---- 3. malicious files -----------------------------------------------------------------
def malicious(tmp: Path) -> dict:
    base = tmp / "cifar-run"
    write_fake_cifar10(base / "data")
    rc, err = main_quiet(["train", "--model", "mlp", "--model-opt", "hidden=[8]", "--data", "cifar10",
                          "--data-root", str(base / "data"), "--epochs", "1", "--batch-size", "4",
                          "--device", "cpu", "--quiet", "--out", str(base)])
    assert rc == 0, err
    rows, lost_files = {}, 0
    for name, (build, outside) in ENTRY_POINTS.items():
        executed = refused = 0
        for kind in ("system", "exec"):
            work = tmp / f"m-{len(rows)}-{kind}"
            run = work / "run"
            shutil.copytree(base, run)
            marker = work / "pwned"
            (run / "data" / "cifar-10-batches-py" / "batches.meta").write_bytes(evil_pickle(marker, kind))
            evil = work / "evil"
            shutil.copytree(run / "data", evil)
            state = ckpt.load(run / "checkpoint.pt")
            state["config"]["data_root"] = str(evil if outside else run / "data")
            ckpt.save(run / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
            before = snapshot(run)
            rc, err = main_quiet(build(run, evil, work))
            executed += marker.exists()
            refused += rc == 2
            lost_files += lost(before, snapshot(run))
        rows[name] = {"tried": 2, "executed": executed, "refused": refused}
    return {"rows": rows, "lost": lost_files}


# ---- 4. concurrent writers ----------------------------------------------------------------
def concurrent(tmp: Path) -> dict:
    ref = tmp / "c-ref"
    assert subprocess.run([sys.executable, "-m", "regrow", "train", *LONG, "--out", str(ref)],
                          capture_output=True).returncode == 0
    reference = final_state(ref)
    stopped = tmp / "c-stopped"  # a run to resume
    assert subprocess.run([sys.executable, "-m", "regrow", "train", *LONG, "--out", str(stopped),
                           "--stop-after-steps", "40"], capture_output=True).returncode == 0
    scenarios = [  # (first writer's args, lock dir, second writer's args (in-process)) built per dir
        ("train + train --overwrite", lambda d: ["train", *LONG, "--out", str(d)], lambda d: d,
         lambda d: ["train", *LONG, "--out", str(d), "--overwrite"]),
        ("train + train (same --out)", lambda d: ["train", *LONG, "--out", str(d)], lambda d: d,
         lambda d: ["train", *LONG, "--out", str(d)]),
        ("resume + resume", lambda d: ["resume", str(d)], lambda d: d, lambda d: ["resume", str(d)]),
        ("train + export", lambda d: ["train", *LONG, "--out", str(d)], lambda d: d,
         lambda d: ["export", str(d), "--format", "sparse", "--out", str(d.parent / (d.name + ".pt"))]),
        ("compare + compare (same cell)", lambda d: ["compare", *LONG, "--methods", "rigl", "--out", str(d)],
         lambda d: d / "rigl-d0.1-s0", lambda d: ["compare", *LONG, "--methods", "rigl", "--out", str(d)]),
    ]
    rows, lost_files = {}, 0
    for name, first, lock_dir, second in scenarios:
        d = tmp / f"c-{len(rows)}"
        if name.startswith("resume"):
            shutil.copytree(stopped, d)
        p = regrow_proc(first(d))
        wait_for(lock_dir(d) / ".regrow.lock", p)
        rc, err = main_quiet(second(d))
        p.wait()
        refused = rc == 2 and "is in use by PID" in err
        cell = lock_dir(d)
        intact = p.returncode == 0 and same_state(final_state(cell), reference)
        lost_files += 0 if intact else 1
        rows[name] = {"refused": refused, "first_intact": intact, "message": err.strip().splitlines()[-1][:160]}
    return {"rows": rows, "lost": lost_files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", type=int, default=60, help="random bad option sets")
    ap.add_argument("--kills", type=int, default=5, help="kill -9 trials")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regrow-reliability-") as tmp:
        tmp = Path(tmp)
        bad = bad_inputs(tmp, args.sets, rng)
        print(f"bad inputs done ({time.perf_counter() - t0:.0f} s)", flush=True)
        mal = malicious(tmp)
        print(f"malicious files done ({time.perf_counter() - t0:.0f} s)", flush=True)
        con = concurrent(tmp)
        print(f"concurrent writers done ({time.perf_counter() - t0:.0f} s)", flush=True)
        kil = kill_trials(tmp, args.kills, rng)
        print(f"kill -9 trials done ({time.perf_counter() - t0:.0f} s)", flush=True)

    print("\n| check | tried | outcome |\n|---|---|---|")
    print(f"| bad option sets (train/compare over a finished run, half with --overwrite) | {bad['tried']} | "
          f"{bad['status2']} exit 2, {bad['named']} name an offending option, {bad['tracebacks']} tracebacks |")
    print(f"| kill -9 at a random moment, then resume | {kil['trials']} | {kil['identical']} resumed "
          f"bit-identically (checkpoint tensors and metrics.jsonl) |")
    for name, r in mal["rows"].items():
        print(f"| malicious batches.meta (os.system, exec): {name} | {r['tried']} | "
              f"{r['executed']} executed, {r['refused']} refused (exit 2) |")
    for name, r in con["rows"].items():
        print(f"| concurrent writers: {name} | 1 | {'refused naming the holder' if r['refused'] else 'NOT refused'}; "
              f"first writer's result {'identical to an undisturbed run' if r['first_intact'] else 'DAMAGED'} |")
    total_lost = bad["lost"] + mal["lost"] + con["lost"]
    print(f"| files lost or changed (finished runs above: {bad['files']} + the malicious-file runs "
          f"+ the concurrent runs) | | {total_lost} |")
    print(f"\nkill moments (uniform over {kil['window'][0]:.1f}-{kil['window'][1]:.1f} s after taking the lock; "
          "training runs from config.yaml to summary.json): "
          + "; ".join(kil["phases"]))
    print("refusal messages: " + " / ".join(r["message"] for r in con["rows"].values()))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
