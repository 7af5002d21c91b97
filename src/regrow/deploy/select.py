"""Per-layer kernel choice by measurement (as TensorRT picks kernels), and the timer.

:func:`choose` is a pure function of the timings, so tests inject them. The timer runs
the candidates interleaved (one chunk of each per round, the order rotating every round)
and keeps the median per candidate, so a burst of load from another process hits every
candidate alike instead of one of them."""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

Timings = Mapping[str, Mapping[int, float]]   # candidate ("dense" | "kind:kernel") -> batch -> ms


def choose(timings: Timings, margin: float = 1.0, dense_kernel: bool = True) -> Dict[str, object]:
    """The layer's format and per-batch kernels from measured times.

    Each sparse format (``csr``, ``bsr8``, ``fanin``...) runs, at every batch size, its
    fastest kernel; with ``dense_kernel`` that includes ``dense`` (the weight expanded once
    at load, for the batch sizes where no sparse kernel wins: the file stays compressed,
    memory holds both). A format's score is the mean over batch sizes of ``t / t_dense``;
    the best-scoring format wins if its score is below ``margin`` (ties keep the plain dense
    layer), so at no measured batch size is the chosen layer slower than dense.
    Returns ``{"format", "kernels": [(batch, kernel)], "score", "dense_ms", "sparse_ms",
    "best_sparse"}`` (``sparse_ms``: the best format's times with its own kernels only)."""
    if "dense" not in timings:
        raise ValueError("timings need a 'dense' entry (batch -> ms)")
    dense = {int(b): float(t) for b, t in timings["dense"].items()}
    if not dense:
        raise ValueError("timings for 'dense' are empty: measure at least one batch size")
    formats: Dict[str, Dict[int, Tuple[float, str]]] = {}
    for cand, per_batch in timings.items():
        if cand == "dense":
            continue
        fmt, _, kernel = cand.partition(":")
        best = formats.setdefault(fmt, {})
        for b, t in per_batch.items():
            b, t = int(b), float(t)
            if b not in dense:
                raise ValueError(f"candidate {cand!r} was timed at batch {b}, dense was not")
            if b not in best or t < best[b][0]:
                best[b] = (t, kernel or fmt)
    scored = []
    for fmt, best in formats.items():
        if set(best) != set(dense):
            raise ValueError(f"format {fmt!r} lacks timings at batch sizes {sorted(set(dense) - set(best))}")
        run = {b: (dense[b], "dense") if dense_kernel and dense[b] <= best[b][0] else best[b] for b in dense}
        score = statistics.fmean(run[b][0] / dense[b] for b in dense)
        scored.append((score, fmt, run))
    if not scored:
        return {"format": "dense", "kernels": [], "score": 1.0, "dense_ms": dense, "sparse_ms": {},
                "best_sparse": None}
    score, fmt, run = min(scored, key=lambda s: (s[0], s[1]))
    chosen = score < margin
    return {"format": fmt if chosen else "dense", "score": score, "dense_ms": dense,
            "sparse_ms": {b: formats[fmt][b][0] for b in sorted(dense)}, "best_sparse": fmt,
            "kernels": [(b, run[b][1]) for b in sorted(run)] if chosen else []}


def time_alternating(fns: Mapping[str, Callable[[], object]], repeats: int = 15, warmup: int = 2,
                     target_ms: float = 2.0, stat: str = "median") -> Dict[str, float]:
    """Milliseconds per call of each function (the median, or the ``min``, of its chunks),
    measured interleaved.

    Each timed chunk runs a function ``number`` times (set once so that a chunk lasts about
    ``target_ms``: timer resolution and call overhead stay negligible); every round times
    one chunk of each function, the order rotating by one each round. ``min`` is what the
    kernel choice uses: on a shared CPU other processes only ever add time, and when they
    preempt more than half of the chunks the median says more about them than the kernel."""
    if repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats}")
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be median or min, got {stat!r}")
    names = list(fns)
    number: Dict[str, int] = {}
    for n in names:
        for _ in range(warmup):
            fns[n]()
        t0 = time.perf_counter()
        fns[n]()
        one = max(time.perf_counter() - t0, 1e-7)
        number[n] = max(1, min(1000, int(target_ms / 1e3 / one)))
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            f, k = fns[n], number[n]
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            samples[n].append((time.perf_counter() - t0) / k * 1e3)
    agg = statistics.median if stat == "median" else min
    return {n: agg(s) for n, s in samples.items()}


def rows_for(batch: int, rows_per_sample: float) -> int:
    return max(1, int(round(batch * rows_per_sample)))


def geo_mean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))
