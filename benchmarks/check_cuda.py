"""regrow on a CUDA GPU, end to end: what a GPU owner runs (CI has no GPU).

Every registered method (and IEE in 2:4) trains LeNet-5 (ResNet-20 for the channel
methods) on synthetic data through regrow's Trainer on CUDA, in fp32 and with bfloat16
autocast (``amp``), deterministic. After every optimizer
step a callback checks the method's invariants on the GPU tensors: each mask holds its
exact count and every inactive weight is exactly zero. Each run is then repeated with an
interruption mid-run and ``resume``: final weights and masks must be bit-identical.
Prints one line per (method, structure, precision) and exits 1 on any failure;
``--device cpu`` runs the same checks on CPU in fp32 (a dry run). On an H200: 26 of 26 pass.

    PYTHONPATH=src python benchmarks/check_cuda.py
    REGROW_TEST_DEVICE=cuda python -m pytest tests/test_methods_invariants.py
    PYTHONPATH=src python benchmarks/bench_nm_gpu.py          # 2:4 export, speed
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # before cuBLAS starts: deterministic GEMMs

import torch  # noqa: E402

import regrow  # noqa: E402
from regrow.integrations.protocol import Callback  # noqa: E402
from regrow.train import checkpoint as ckpt  # noqa: E402
from regrow.train.config import build  # noqa: E402
from regrow.train.loop import train  # noqa: E402

# short runs that still update: 8 steps an epoch, 3 epochs
BASE = {"model": "lenet5", "data": "synthetic", "epochs": 3, "batch_size": 32, "log_every": 4,
        "synthetic": {"shape": [1, 28, 28], "num_classes": 10, "train_size": 256, "test_size": 64},
        "quiet": True, "deterministic": True, "density": 0.1}
OPTIONS = {"update_interval": 3, "H": 2, "J": 2, "Q": 2, "calibration_batches": 2, "epoch_steps": 8,
           "prune_steps": 3, "prune_interval": 3, "cost": "flops", "end_fraction": 0.75}
# (method, structure): every method in its first structure, and IEE in 2:4 too
RUNS = [(n, regrow.METHODS.get(n).structures[0]) for n in regrow.METHODS.names()] + [("iee", "nm")]
# channel methods prune BatchNorm'd channel groups: ResNet-20 on 3-channel inputs
CHANNEL_RUN = {"model": "resnet20", "synthetic": {**BASE["synthetic"], "shape": [3, 16, 16]}}


class Invariants(Callback):
    """After every optimizer step: exact counts, inactive weights exactly zero, on the GPU."""

    def on_fit_start(self, trainer):
        self.steps = 0

    def on_train_batch_end(self, trainer):
        method = trainer.sparsity.method
        counts, live = method.expected_counts(), method.live_masks()
        for n, p in method.params.items():
            mask = method.state.masks[n]
            assert p.device.type == mask.device.type == trainer.ctx.device.type, f"{n} left the run's device"
            assert int(mask.sum()) == counts[n], f"step {trainer.step}: {n} holds {int(mask.sum())}, expects {counts[n]}"
            assert bool((p.detach()[~live[n]] == 0).all()), f"step {trainer.step}: {n} has non-zero inactive weights"
        self.steps += 1


def config(name: str, structure: str, device: str, amp: bool, out: str):
    fields = {f.name for f in dataclasses.fields(regrow.METHODS.get(name).Config)}
    return build({**BASE, **(CHANNEL_RUN if structure == "channel" else {}), "method": name, "device": device,
                  "amp": amp, "out": out, "structure": structure,
                  # LeNet-5's 1-channel stem has no 2:4 blocks
                  "method_options": {k: v for k, v in {**OPTIONS, "dense_first_last": structure == "nm"}.items()
                                     if k in fields}})


def check(name: str, structure: str, device: str, amp: bool, root: str) -> str:
    probe = Invariants()
    whole = train(config(name, structure, device, amp, f"{root}/whole"), report=False, callbacks=[probe])
    assert probe.steps == whole["steps"], (probe.steps, whole["steps"])
    train(config(name, structure, device, amp, f"{root}/cut"), report=False, stop_after_steps=11)
    cut = train(config(name, structure, device, amp, f"{root}/cut"), resume=True, report=False)
    a, b = (ckpt.load(f"{root}/{d}/checkpoint.pt") for d in ("whole", "cut"))
    for k, t in a["model"].items():
        assert torch.equal(t, b["model"][k]), f"resume differs in weight {k}"
    for k, m in a["method"]["state"]["masks"].items():
        assert torch.equal(m, b["method"]["state"]["masks"][k]), f"resume differs in mask {k}"
    assert cut["test_top1"] == whole["test_top1"]
    return f"density {whole['final_density']:.4f}  top1 {whole['test_top1']:.3f}  steps {whole['steps']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="", help="comma-separated method names (default: every one)")
    ap.add_argument("--device", default="cuda", help="cuda (fp32 and bf16 autocast) or cpu (fp32: a dry run)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (--device cpu for a dry run)", file=sys.stderr)
        return 2
    print(torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch", torch.__version__)
    failed = 0
    wanted = set(args.methods.split(",")) if args.methods else set(regrow.METHODS.names())
    for name, structure in (r for r in RUNS if r[0] in wanted):
        for amp in ((False, True) if args.device == "cuda" else (False,)):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as root:
                try:
                    line = "ok    " + check(name, structure, args.device, amp, root)
                except Exception as e:   # report every method, then fail
                    failed += 1
                    line = f"FAIL  {type(e).__name__}: {e}"
                    traceback.print_exc()
            print(f"{name:12s} {structure:12s} {'bf16-amp' if amp else 'fp32':8s} {line}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
