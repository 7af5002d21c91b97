"""2:4 kernels layer by layer on an NVIDIA GPU: where the time of a semi-structured
``F.linear`` goes, and which backend wins at which shape. For a GPU owner to run.

For each weight shape [out, in] and batch: dense ``F.linear`` against the same 2:4 weight
as a semi-structured tensor through cuSPARSELt and through CUTLASS (torch's two
backends), raw and inside regrow's exported layer (``SparseLinear`` kind ``nm``, which
pads to the kernels' multiples), and dense vs cuSPARSELt replayed from CUDA graphs. Wall
time per call with the GPU synchronised after it (what a caller waits for), interleaved,
medians; then a profiler breakdown of cuSPARSELt calls, to tell per-call setup on the CPU
from kernel time.

    PYTHONPATH=src python benchmarks/bench_nm_kernels.py
    PYTHONPATH=src python benchmarks/bench_nm_kernels.py --dtype bfloat16 --shapes 4096x4096 --batches 1,4096
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from regrow.deploy.kernels import SparseLinear
from regrow.deploy.select import time_alternating
from regrow.structures import NM


def two_four(w: torch.Tensor) -> torch.Tensor:
    """The 2 largest |w| of every 4 consecutive inputs (ASP's mask), by regrow's N:M structure."""
    nm = NM(2, 4)
    return nm.topk(w.abs(), nm.count(w.shape, 0.5))


def semi(w: torch.Tensor, cutlass: bool):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    old = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
    try:
        return to_sparse_semi_structured(w)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = old


def synced(fn):
    return lambda: (fn(), torch.cuda.synchronize())


def graphed(fn, x):
    """``fn(x)`` captured once in a CUDA graph: a replay re-runs the recorded kernels with
    none of the CPU work (argument checks, cuSPARSELt's plan setup) behind them."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        fn(x)
    return graph.replay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--shapes", default="1024x768,1024x1024,2048x512,512x2048,4096x4096,8192x8192")
    ap.add_argument("--batches", default="1,128,2048,8192")
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    dt = getattr(torch, args.dtype)
    print(torch.cuda.get_device_name(), "torch", torch.__version__, args.dtype)
    print("\n| out×in | batch | dense ms | cuSPARSELt ×dense | CUTLASS ×dense | regrow nm ×dense "
          "| graphed dense ms | graphed cuSPARSELt ×graphed dense |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    probe, said = None, set()
    for shape in args.shapes.split(","):
        out_f, in_f = (int(s) for s in shape.split("x"))
        g = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn(out_f, in_f, device="cuda", generator=g).to(dt)
        mask = two_four(w)
        w = w * mask
        kernels = {"dense": lambda x: F.linear(x, w)}
        for name, cutlass in (("cusparselt", False), ("cutlass", True)):
            try:
                ws = semi(w, cutlass)
                kernels[name] = lambda x, ws=ws: F.linear(x, ws)
            except (RuntimeError, ValueError) as e:
                print(f"<!-- {shape} {name}: {type(e).__name__}: {str(e)[:160]} -->")
        layer = SparseLinear.from_dense(w, None, "nm", [(1, "mm")], mask=mask)
        kernels["regrow"] = layer
        for b in (int(s) for s in args.batches.split(",")):
            x = torch.randn(b, in_f, device="cuda", dtype=dt)
            ref = F.linear(x, w)
            fns = {}
            for name, k in kernels.items():
                try:
                    with torch.no_grad():
                        y = k(x)
                    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)
                    fns[name] = synced(lambda k=k: k(x))
                except (RuntimeError, ValueError, AssertionError) as e:
                    if (name, str(e)[:80]) not in said:   # once per kernel and message
                        said.add((name, str(e)[:80]))
                        print(f"<!-- {shape} b{b} {name}: {type(e).__name__}: {str(e)[:160]} -->")
            for name in ("dense", "cusparselt"):
                if name in fns:
                    try:
                        fns[f"graphed {name}"] = synced(graphed(kernels[name], x))
                    except RuntimeError as e:
                        print(f"<!-- {shape} b{b} graphed {name}: {type(e).__name__}: {str(e)[:160]} -->")
            with torch.no_grad():
                t = time_alternating(fns, repeats=args.repeats, warmup=3, target_ms=5.0)
            ratio = {n: (f"{t['dense'] / t[n]:.2f}" if n in t else "—") for n in ("cusparselt", "cutlass", "regrow")}
            gd = t.get("graphed dense")
            gs = f"{gd / t['graphed cusparselt']:.2f}" if gd and "graphed cusparselt" in t else "—"
            print(f"| {shape} | {b} | {t['dense']:.4f} | {ratio['cusparselt']} | {ratio['cutlass']} | {ratio['regrow']} "
                  f"| {gd if gd is None else f'{gd:.4f}'} | {gs} |", flush=True)
            if probe is None and "cusparselt" in kernels and b == 128:
                probe = (shape, kernels["cusparselt"], x)
    if probe is not None:
        shape, k, x = probe
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.no_grad(), torch.profiler.profile(activities=acts) as prof:
            for _ in range(20):
                k(x)
            torch.cuda.synchronize()
        print(f"\nprofile: 20 cuSPARSELt calls, {shape}, batch 128\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


if __name__ == "__main__":
    main()
