"""2:4 semi-structured export on an NVIDIA GPU (Ampere or newer): for a GPU owner to run.

Builds the MLP 784-1024-1024-10 and the transformer MLP block 512->2048->512 with 2:4
magnitude masks (ASP, Mishra et al. 2021), exports them with ``regrow.export(format="nm")``
(``torch.sparse.to_sparse_semi_structured``, shapes zero-padded to the kernels' multiples),
checks the outputs against the masked dense model and times dense vs 2:4 at several batch
sizes (interleaved rounds, CUDA-synchronised, medians), in fp16 and bf16 (and fp32 where
this torch build has an fp32 2:4 kernel).

    PYTHONPATH=src python benchmarks/bench_nm_gpu.py
    PYTHONPATH=src python benchmarks/bench_nm_gpu.py --dtypes float16 --batches 1,128,4096
Without CUDA it stops with the export's own error message.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import regrow
from bench_nm_kernels import two_four as two_four_mask
from regrow.deploy.bench import bench, table


def models():
    mlp = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    block = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))
    return {"mlp": (mlp, (784,)), "block": (block, (512,))}


def two_four(model: nn.Module) -> None:
    """Keep the 2 largest |w| of every 4 consecutive inputs (what `asp` does)."""
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            with torch.no_grad():
                mod.weight.mul_(two_four_mask(mod.weight.detach()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="float16,bfloat16,float32")
    ap.add_argument("--batches", default="1,128,2048")
    ap.add_argument("--repeats", type=int, default=31)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        regrow.export(nn.Linear(4, 4), format="nm", input_shape=(4,))   # raises the clear error
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    batches = [int(b) for b in args.batches.split(",")]
    for dtype in args.dtypes.split(","):
        dt = getattr(torch, dtype)
        for name, (model, shape) in models().items():
            torch.manual_seed(0)
            two_four(model)
            model = model.to("cuda", dt).eval()
            tol = 1e-5 if dt == torch.float32 else 2e-2
            try:
                res = bench(model, shape, formats=("nm",), batch_sizes=batches, repeats=args.repeats,
                            threads=None, hand=False, rtol=tol, atol=tol)
            except (RuntimeError, ValueError) as e:   # e.g. no fp32 2:4 kernel in this build
                print(f"\n{name} {dtype}: {type(e).__name__}: {e}")
                continue
            print(f"\n### {name}, {dtype}\n")
            print(table(res))


if __name__ == "__main__":
    main()
