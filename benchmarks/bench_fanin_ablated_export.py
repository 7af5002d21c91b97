"""Cost of storing a fan-in layer with ablated neurons (issue 13), and which layout runs it
fastest. Side by side, on one layer with a fraction of its neurons ablated (the budget
spread over the alive ones at q or q + 1 inputs) and the same budget at exact k:

* ``dense`` — ``F.linear``;
* ``all at k`` — every neuron at k (no ablation): regrow's condensed ``SparseLinear``;
* ``regrow`` — the ablated layer as regrow exports it now: alive rows at q + 1 (the ones at
  q padded with one zero weight), run as the ``[out, in]`` CSR whose ablated rows are empty
  (``mv``; ``ebag`` with those row pointers as offsets; ``spmm``): outputs land in place;
* ``scatter`` — the previous export: the same arrays run as an ``[alive, in]`` CSR / 2-D
  ``ebag``, outputs scattered into a zeroed ``[out, rows]`` (``index_copy_``);
* ``2 groups`` — exact storage: the q + 1 and the q neurons as two condensed groups, each
  run with the same kernel, both scattered;
* ``exact CSR`` — no padding at all: the ``[out, in]`` CSR of the exact rows.

Random masks, one thread; all are timed interleaved (chunks of ``--calls`` calls, the order
rotating every round), ``--rounds`` rounds; the fastest chunk (other processes only ever add
time on a shared CPU) and the median are printed per call. Every variant's output is checked
against the masked layer (1e-5) first.

    PYTHONPATH=src python benchmarks/bench_fanin_ablated_export.py
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from regrow.deploy.kernels import SparseLinear

warnings.filterwarnings("ignore", message=".*Sparse (CSR tensor support|invariant checks).*")


def masked_weight(out: int, inn: int, k: int, alive: int, g: torch.Generator) -> torch.Tensor:
    """A weight holding k·out active entries over ``alive`` neurons (q or q + 1 each)."""
    q, r = divmod(k * out, alive)
    mask = torch.zeros(out, inn, dtype=torch.bool)
    for i in range(alive):
        mask[i, torch.randperm(inn, generator=g)[: q + (1 if i < r else 0)]] = True
    return torch.randn(out, inn, generator=g) * mask


def csr(col: torch.Tensor, values: torch.Tensor, per_row: torch.Tensor, inn: int):
    crow = F.pad(torch.cumsum(per_row, 0, dtype=torch.int32), (1, 0))
    return torch.sparse_csr_tensor(crow, col.reshape(-1).int(), values.reshape(-1), (per_row.numel(), inn)), crow


class Scattered:
    """Condensed groups ``(rows, col [n, k], values [n, k])`` each run as its own CSR / 2-D
    ebag, outputs scattered into the zeroed ``[out, rows]`` (the previous export: one group)."""

    def __init__(self, groups, out: int, inn: int, bias: torch.Tensor):
        self.groups = [(rows, col, val, csr(col, val, torch.full((col.shape[0],), col.shape[1]), inn)[0])
                       for rows, col, val in groups]
        self.out, self.bias = out, bias

    def __call__(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        yt = x.new_zeros(self.out, x.shape[0])
        table = x.t().contiguous() if kernel == "ebag" else None
        for rows, col, val, sp in self.groups:
            if kernel == "mv":
                part = torch.mv(sp, x[0]).unsqueeze(1)
            elif kernel == "ebag":
                part = F.embedding_bag(col, table, per_sample_weights=val, mode="sum")
            else:
                part = torch.sparse.mm(sp, x.t())
            yt.index_copy_(0, rows, part)
        return yt.t() + self.bias


def exact_csr_fn(w: torch.Tensor, bias: torch.Tensor):
    active = w != 0
    r, c = active.nonzero(as_tuple=True)
    sp, crow = csr(c, w[r, c], active.sum(1), w.shape[1])
    col, val = c.int(), w[r, c]

    def fn(x: torch.Tensor, kernel: str) -> torch.Tensor:
        if kernel == "mv":
            return (torch.mv(sp, x[0]) + bias).unsqueeze(0)
        if kernel == "ebag":
            return F.embedding_bag(col, x.t().contiguous(), crow, per_sample_weights=val, mode="sum",
                                   include_last_offset=True).t() + bias
        return torch.sparse.mm(sp, x.t()).t() + bias
    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=int, default=1024)
    ap.add_argument("--in-features", type=int, default=1024)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--ablated", type=float, default=0.3, help="fraction of neurons ablated")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    out, inn = args.out, args.in_features
    k = max(1, round(args.density * inn))
    alive = out - int(args.ablated * out)
    bias = torch.randn(out, generator=g)
    w_k, w_a = masked_weight(out, inn, k, out, g), masked_weight(out, inn, k, alive, g)
    all_k = SparseLinear.from_dense(w_k, bias, "fanin", [(1, "mv")])
    regrow_a = SparseLinear.from_dense(w_a, bias, "fanin", [(1, "mv")])
    previous = Scattered([(regrow_a.rows, regrow_a.col, regrow_a.values)], out, inn, bias)
    per_row = (w_a != 0).sum(1)
    groups = []
    for n in (int(per_row.max()), int(per_row.max()) - 1):
        rows = torch.nonzero(per_row == n).squeeze(1)
        if rows.numel():
            col = torch.sort(torch.topk((w_a[rows] != 0).to(torch.int8), n, dim=1).indices, dim=1).values
            groups.append((rows, col.int(), w_a[rows].gather(1, col)))
    two = Scattered(groups, out, inn, bias)
    exact = exact_csr_fn(w_a, bias)
    dense = torch.randn(out, inn, generator=g)
    print(f"{out}x{inn}, k = {k} ({k * out} weights); ablated layer: {alive} alive neurons, stored at "
          f"{regrow_a.col.shape[1]} inputs ({', '.join(f'{len(r)} at {c.shape[1]}' for r, c, _ in groups)}); "
          "ms per call, fastest / median")
    names = ["dense", "all at k", "regrow", "scatter", "2 groups", "exact CSR"]
    print("| batch | kernel | " + " | ".join(names) + " |")
    print("|---:|---|" + "---:|" * len(names))
    for rows, kernel in ((1, "mv"), (args.batch, "ebag"), (args.batch, "spmm")):
        x = torch.randn(rows, inn, generator=g)
        fns = {"dense": lambda: F.linear(x, dense, bias), "all at k": lambda: all_k.matmul(x, kernel),
               "regrow": lambda: regrow_a.matmul(x, kernel), "scatter": lambda: previous(x, kernel),
               "2 groups": lambda: two(x, kernel), "exact CSR": lambda: exact(x, kernel)}
        want = F.linear(x, w_a, bias)
        for name in names[2:]:
            torch.testing.assert_close(fns[name](), want, rtol=1e-5, atol=1e-5)
        times = {name: [] for name in fns}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                for _ in range(args.calls):
                    fns[name]()
                times[name].append((time.perf_counter() - start) / args.calls * 1e3)
        cells = [f"{min(times[n]):.4f} / {statistics.median(times[n]):.4f}" for n in names]
        print(f"| {rows} | {kernel} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
