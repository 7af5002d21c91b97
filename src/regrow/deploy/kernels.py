"""Inference modules holding compressed weights, and the CPU/CUDA kernels that run them.

One module, :class:`SparseLinear`, stands in for a ``nn.Linear``, an HF ``Conv1D``
(``transformers.pytorch_utils.Conv1D``, weight stored ``[in, out]``: transposed at export)
or a 1×1 convolution (groups 1, padding 0: a Linear over channels at every position). It
computes ``y = x Wᵀ + b`` on the 2-D view ``x2 [rows, in]`` of its input with one of:

* ``csr`` — CSR with int32 indices (int32 is 1.3–1.6× faster than int64 here):
  ``mv`` (``torch.mv``, one row), ``spmm`` (``torch.sparse.mm(W, x2ᵀ)ᵀ``) or ``ebag``
  (``F.embedding_bag`` with the CSR row pointers as offsets, the column indices as input,
  the values as per-sample weights and ``x2ᵀ`` as the table: a fused gather-multiply-sum
  vectorised along the rows of ``x2``, 2.5–3× faster than ``spmm`` at 128 rows on one
  thread);
* ``bsr`` — block CSR (``torch.sparse.mm``), which pays only when the mask is blocky;
* ``fanin`` — constant fan-in (SRigL, Lasby et al. 2024) condensed: values and indices of
  shape ``[out, k]``; ``mv`` on the equal-length CSR they define, or ``ebag`` with no
  offsets at all (every bag holds k). Neurons removed by SRigL's neuron ablation (rows
  with no weight: their output is the bias) are not stored: ``rows`` lists the ``alive``
  stored ones, and the kernels run the ``[out, in]`` CSR whose ablated rows are empty
  (``ebag`` with those row pointers as offsets: an empty bag sums to 0), so the outputs
  land in place with no scatter (which cost 7–20% per layer:
  ``benchmarks/bench_fanin_ablated_export.py``);
* ``nm`` — 2:4 semi-structured on CUDA (``torch.sparse.to_sparse_semi_structured``),
  stored portably as the N kept values and their positions in each block of M.

Which kernel runs is decided per number of input rows by measurement at export
(:mod:`regrow.export.select`): ``kernels`` lists ``(rows, kernel)`` pairs and a call uses
the pair whose ``rows`` is nearest (in log scale) to its own. Every tensor is a buffer, so
``state_dict()`` holds plain tensors and ``torch.load(weights_only=True)`` reads the file.
"""
from __future__ import annotations

import math
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("csr", "bsr", "fanin", "nm")
KERNELS = {"csr": ("mv", "spmm", "ebag"), "bsr": ("spmm",), "fanin": ("mv", "ebag", "spmm"), "nm": ("mm",)}
# "dense": W expanded once (lazily) for row counts where no sparse kernel beat dense
ALLOWED = {k: v + ("dense",) for k, v in KERNELS.items()}


def _nearest(kernels: Sequence[Tuple[int, str]], rows: int) -> str:
    lr = math.log(max(rows, 1))
    return min(kernels, key=lambda rk: (abs(math.log(max(rk[0], 1)) - lr), rk[0]))[1]


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` held compressed (see the module docstring).

    ``layout``: ``linear`` (features last: Linear, HF Conv1D) or ``conv`` (channels at dim
    1, a 1×1 convolution with ``stride``). Build with :meth:`from_dense`, or empty from a
    spec (shapes only) and fill with ``load_state_dict`` (what the loader does)."""

    def __init__(self, kind: str, in_features: int, out_features: int, bias: bool,
                 kernels: Sequence[Tuple[int, str]], layout: str = "linear",
                 stride: Sequence[int] = (), nnz: int = 0, k: int = 0, block: int = 0,
                 n: int = 2, m: int = 4, alive: Optional[int] = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if layout not in ("linear", "conv"):
            raise ValueError(f"layout must be linear or conv; got {layout!r}")
        bad = [kn for _, kn in kernels if kn not in ALLOWED[kind]]
        if not kernels or bad:
            raise ValueError(f"kernels for {kind} must be (rows, name) pairs with names in "
                             f"{ALLOWED[kind]}; got {list(kernels)}")
        self.kind, self.layout = kind, layout
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.kernels: List[Tuple[int, str]] = [(int(r), str(kn)) for r, kn in kernels]
        self.stride = tuple(int(s) for s in stride)
        self.n, self.m = int(n), int(m)
        i32 = dict(dtype=torch.int32)
        if kind == "csr":
            self.register_buffer("crow", torch.zeros(out_features + 1, **i32))
            self.register_buffer("col", torch.zeros(nnz, **i32))
            self.register_buffer("values", torch.zeros(nnz, dtype=dtype))
        elif kind == "bsr":
            nb = nnz  # number of stored blocks
            self.block = int(block)
            self.register_buffer("crow", torch.zeros(out_features // block + 1, **i32))
            self.register_buffer("col", torch.zeros(nb, **i32))
            self.register_buffer("values", torch.zeros(nb, block, block, dtype=dtype))
        elif kind == "fanin":
            stored = out_features if alive is None else int(alive)
            self.register_buffer("col", torch.zeros(stored, k, **i32))
            self.register_buffer("values", torch.zeros(stored, k, dtype=dtype))
            # the stored (alive) output rows when ablated neurons were left out
            self.register_buffer("rows", None if alive is None else torch.zeros(stored, dtype=torch.int64))
        else:  # nm: N kept values of each block of M along the input, and their positions
            blocks = in_features // m
            self.register_buffer("values", torch.zeros(out_features, blocks, n, dtype=dtype))
            self.register_buffer("col", torch.zeros(out_features, blocks, n, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)
        self._cache: Optional[Tuple] = None
        self._dense: Optional[torch.Tensor] = None
        self._picked: dict = {}   # rows -> kernel, memoised (the forward runs per call)

    def set_kernels(self, kernels: Sequence[Tuple[int, str]]) -> None:
        bad = [kn for _, kn in kernels if kn not in ALLOWED[self.kind]]
        if not kernels or bad:
            raise ValueError(f"kernels for {self.kind} must be (rows, name) pairs with names in "
                             f"{ALLOWED[self.kind]}; got {list(kernels)}")
        self.kernels = [(int(r), str(kn)) for r, kn in kernels]
        self._picked = {}

    # ---- construction --------------------------------------------------------------
    def spec(self) -> dict:
        """Everything but the tensors: enough to rebuild an empty module for the loader."""
        out = {"kind": self.kind, "in_features": self.in_features, "out_features": self.out_features,
               "bias": self.bias is not None, "kernels": [list(p) for p in self.kernels],
               "layout": self.layout, "stride": list(self.stride), "dtype": str(self.values.dtype)}
        if self.kind == "csr":
            out["nnz"] = int(self.col.numel())
        elif self.kind == "bsr":
            out.update(nnz=int(self.col.numel()), block=self.block)
        elif self.kind == "fanin":
            out["k"] = int(self.col.shape[1])
            if self.rows is not None:
                out["alive"] = int(self.rows.numel())
        else:
            out.update(n=self.n, m=self.m)
        return out

    def validate(self, name: str = "layer") -> None:
        """Index ranges of a loaded file (sparse kernels index memory with them unchecked)."""
        limit = self.m if self.kind == "nm" else (self.in_features // self.block if self.kind == "bsr"
                                                  else self.in_features)
        col = self.col.long()
        bad = col.numel() and (int(col.min()) < 0 or int(col.max()) >= limit)
        if self.kind in ("csr", "bsr"):
            crow = self.crow.long()
            bad = bad or int(crow[0]) != 0 or int(crow[-1]) != col.numel() or bool((crow.diff() < 0).any())
        if self.kind == "fanin" and self.rows is not None and self.rows.numel():
            r = self.rows
            bad = bad or int(r.min()) < 0 or int(r.max()) >= self.out_features or bool((r.diff() <= 0).any())
        if bad:
            raise ValueError(f"layer '{name}': stored indices are out of range or inconsistent "
                             f"(corrupt or foreign file)")

    _SPEC_KEYS = ("kind", "in_features", "out_features", "bias", "kernels", "layout", "stride", "dtype",
                  "nnz", "k", "block", "n", "m", "alive")

    @classmethod
    def from_spec(cls, spec: dict) -> "SparseLinear":
        if not isinstance(spec, dict) or set(spec) - set(cls._SPEC_KEYS) or "kind" not in spec:
            raise ValueError(f"not a SparseLinear spec: {spec!r:.200}")
        s = dict(spec)
        dtype = getattr(torch, str(s.pop("dtype", "torch.float32")).replace("torch.", ""))
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"layer spec has an unknown dtype {spec.get('dtype')!r}")
        s["kernels"] = [tuple(p) for p in s["kernels"]]
        return cls(dtype=dtype, **s)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor], kind: str,
                   kernels: Sequence[Tuple[int, str]], layout: str = "linear",
                   stride: Sequence[int] = (), block: int = 0, n: int = 2, m: int = 4,
                   name: str = "layer", mask: Optional[torch.Tensor] = None) -> "SparseLinear":
        """From a dense ``[out, in]`` weight whose inactive entries are exactly 0. ``mask``
        (bool, same shape) says which entries are active when some active weight may be
        exactly 0 (just grown); by default the non-zeros are."""
        w = weight.detach()
        out_f, in_f = w.shape
        active = (w != 0) if mask is None else mask.to(torch.bool).reshape(w.shape)
        if mask is not None and bool(torch.any(w[~active] != 0)):
            raise ValueError(f"{name}: the weight is non-zero outside its mask; apply the mask first")
        mod_args = dict(in_features=in_f, out_features=out_f, bias=bias is not None,
                        kernels=kernels, layout=layout, stride=stride, dtype=w.dtype)
        if kind == "csr":
            rows, cols = torch.nonzero(active, as_tuple=True)   # row-major: CSR order
            crow = F.pad(torch.cumsum(active.sum(1), 0), (1, 0))
            mod = cls("csr", nnz=rows.numel(), **mod_args)
            tensors = {"crow": crow.int(), "col": cols.int(), "values": w[rows, cols]}
        elif kind == "bsr":
            if out_f % block or in_f % block:
                raise ValueError(f"{name}: BSR block {block} does not divide shape {tuple(w.shape)}")
            bsr = w.to_sparse_bsr((block, block))
            mod = cls("bsr", nnz=bsr.col_indices().numel(), block=block, **mod_args)
            tensors = {"crow": bsr.crow_indices().int(), "col": bsr.col_indices().int(),
                       "values": bsr.values()}
        elif kind == "fanin":
            k = fanin_k(active, name)
            live = active.any(1)
            rows = None if bool(live.all()) else torch.nonzero(live).squeeze(1)
            a, wa = (active, w) if rows is None else (active[rows], w[rows])
            # the k active entries of each stored row, in column order (a row holding one
            # fewer, after neuron ablation, is padded with an inactive, zero-valued entry)
            col = torch.sort(torch.topk(a.to(torch.int8), k, dim=1, sorted=False).indices, dim=1).values
            mod = cls("fanin", k=k, alive=None if rows is None else rows.numel(), **mod_args)
            tensors = {"col": col.int(), "values": wa.gather(1, col)}
            if rows is not None:
                tensors["rows"] = rows
        elif kind == "nm":
            check_nm(active, n, m, name)
            blocks = w.reshape(out_f, in_f // m, m)
            pos = torch.sort(torch.topk(active.reshape(out_f, -1, m).to(torch.int8), n, dim=2,
                                        sorted=False).indices, dim=2).values
            mod = cls("nm", n=n, m=m, **mod_args)
            tensors = {"col": pos.to(torch.uint8), "values": blocks.gather(2, pos)}
        else:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if bias is not None:
            tensors["bias"] = bias.detach()
        mod = mod.to(w.device)
        with torch.no_grad():
            for key, t in tensors.items():
                getattr(mod, key).copy_(t)
        return mod

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = self._dense = None
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):  # .to()/.cuda(): rebuild the sparse tensors
        self._cache = self._dense = None
        return super()._apply(fn, recurse)

    # ---- the kernels -------------------------------------------------------------
    def dense_weight(self) -> torch.Tensor:
        """``W`` as a dense ``[out, in]`` tensor (for checks, padding and the dense kernel)."""
        if self.kind in ("csr", "bsr"):
            return self._sparse().to_dense()
        if self.kind == "fanin":
            w = torch.zeros(self.col.shape[0], self.in_features, dtype=self.values.dtype,
                            device=self.values.device).scatter_(1, self.col.long(), self.values)
            if self.rows is None:
                return w
            full = torch.zeros(self.out_features, self.in_features, dtype=w.dtype, device=w.device)
            return full.index_copy_(0, self.rows, w)
        w = torch.zeros(self.out_features, self.in_features // self.m, self.m,
                        dtype=self.values.dtype, device=self.values.device)
        return w.scatter_(2, self.col.long(), self.values).reshape(self.out_features, self.in_features)

    def _sparse(self):
        if self._cache is None:
            with warnings.catch_warnings():   # "sparse CSR support is in beta": said once is enough
                warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support.*")
                warnings.filterwarnings("ignore", message=".*Sparse invariant checks.*")
                self._cache = self._build()
        return self._cache[0]

    def _build(self) -> Tuple:
        shape = (self.out_features, self.in_features)
        if self.kind == "csr":
            return (torch.sparse_csr_tensor(self.crow, self.col, self.values, shape),)
        if self.kind == "bsr":
            return (torch.sparse_bsr_tensor(self.crow, self.col, self.values, shape),)
        if self.kind == "fanin":   # the CSR the condensed layout defines, sharing its storage
            stored, k = self.col.shape
            dev = self.col.device
            if self.rows is None:   # equal rows of k
                crow = torch.arange(0, stored * k + 1, k, dtype=torch.int32, device=dev)
            else:   # k per alive row, 0 per ablated one: y comes out [out] with no scatter
                per_row = torch.zeros(self.out_features, dtype=torch.int32, device=dev).index_fill_(0, self.rows, k)
                crow = F.pad(torch.cumsum(per_row, 0, dtype=torch.int32), (1, 0))
            return (torch.sparse_csr_tensor(crow, self.col.reshape(-1), self.values.reshape(-1), shape), crow)
        return (semi_structured(self.dense_weight()),)

    def matmul(self, x2: torch.Tensor, kernel: Optional[str] = None) -> torch.Tensor:
        """``x2 Wᵀ + b`` for a 2-D ``x2 [rows, in]``; ``kernel`` overrides the chosen one."""
        rows = x2.shape[0]
        if kernel is None:
            kernel = self._picked.get(rows)
            if kernel is None:
                kernel = self._picked[rows] = _nearest(self.kernels, rows)
        if self.kind == "nm" and kernel != "dense":
            return self._nm(x2)
        if kernel == "dense":
            if self._dense is None:
                self._dense = self.dense_weight()
            return F.linear(x2, self._dense, self.bias)
        if kernel == "mv" and rows == 1:
            y = torch.mv(self._sparse(), x2[0]).unsqueeze(0)
        elif kernel == "ebag" and rows >= 1:
            # the table must be contiguous (3x slower otherwise); after an ebag layer it
            # already is: that layer returned the transpose of a contiguous [out, rows]
            table = x2.t().contiguous()
            if self.kind == "fanin" and self.rows is None:   # 2-D input: every bag holds k
                y = F.embedding_bag(self.col, table, per_sample_weights=self.values, mode="sum").t()
            elif self.kind == "fanin":   # ablated rows: empty bags (0) between the alive ones
                self._sparse()
                y = F.embedding_bag(self.col.reshape(-1), table, self._cache[1],
                                    per_sample_weights=self.values.reshape(-1), mode="sum",
                                    include_last_offset=True).t()
            else:
                y = F.embedding_bag(self.col, table, self.crow, per_sample_weights=self.values,
                                    mode="sum", include_last_offset=True).t()
        else:  # spmm, and mv asked of several rows
            y = torch.sparse.mm(self._sparse(), x2.t()).t()
        return y if self.bias is None else y + self.bias

    def _nm(self, x2: torch.Tensor) -> torch.Tensor:
        w = self._sparse()     # padded [out_p, in_p] semi-structured
        rows = x2.shape[0]
        rows_p = -(-rows // 64) * 64
        xp = F.pad(x2, (0, w.shape[1] - self.in_features, 0, rows_p - rows))
        # F.linear(x, W_semi) is the product torch documents for semi-structured weights
        y = F.linear(xp, w)[:rows, : self.out_features]
        return y if self.bias is None else y + self.bias

    def forward(self, x: torch.Tensor, kernel: Optional[str] = None) -> torch.Tensor:
        if self.layout == "linear":
            if x.dim() == 2:
                return self.matmul(x, kernel)
            lead = x.shape[:-1]
            y = self.matmul(x.reshape(-1, self.in_features), kernel)
            return y.reshape(*lead, self.out_features)
        if self.stride and any(s != 1 for s in self.stride):
            x = x[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in self.stride)]
        moved = x.movedim(1, -1)
        y = self.matmul(moved.reshape(-1, self.in_features), kernel)
        return y.reshape(*moved.shape[:-1], self.out_features).movedim(-1, 1)

    def extra_repr(self) -> str:
        return (f"{self.kind}, in={self.in_features}, out={self.out_features}, layout={self.layout}, "
                f"kernels={self.kernels}")


# ---- checks and helpers ----------------------------------------------------------------
def fanin_k(active: torch.Tensor, name: str = "layer") -> int:
    """The number k of inputs each output row is stored with: the common count of active
    entries per row, or its largest when fan-in's neuron ablation left some rows empty
    (ablated neurons: outputs are the bias) and the others at q or q + 1 (the budget over
    the alive neurons); rows below k are padded with zero-valued entries. A clear error
    when the counts differ otherwise."""
    per_row = (active.reshape(active.shape[0], -1) != 0).sum(1)
    alive = per_row[per_row > 0]
    if alive.numel() == 0:
        raise ValueError(f"fan-in export: layer '{name}' has no non-zero weight")
    lo, hi = int(alive.min()), int(alive.max())
    if hi - lo > 1:
        raise ValueError(f"fan-in export: layer '{name}' has between {lo} and {hi} inputs per output "
                         f"neuron, not a constant k; train it with structure 'fanin' (or export it "
                         f"with format 'sparse')")
    return hi


def check_nm(active: torch.Tensor, n: int, m: int, name: str = "layer") -> None:
    if active.shape[1] % m:
        raise ValueError(f"nm export: layer '{name}' has {active.shape[1]} inputs, not a multiple of m={m}")
    per = (active.reshape(active.shape[0], -1, m) != 0).sum(2)
    if int(per.max()) > n:
        raise ValueError(f"nm export: layer '{name}' has blocks of {m} with up to {int(per.max())} "
                         f"non-zeros, more than n={n}; train it with structure 'nm' (n={n}, m={m})")


def require_cuda(what: str = "nm export") -> None:
    if not torch.cuda.is_available():
        raise ValueError(f"{what} needs a CUDA GPU (NVIDIA 2:4 sparse tensor cores, Ampere or newer, "
                         f"through torch.sparse.to_sparse_semi_structured); no CUDA device is "
                         f"available here. Use format 'sparse' or 'fanin' on CPU.")


def semi_structured(w: torch.Tensor):
    """``w`` zero-padded to the kernels' multiples (rows to 64, columns to 128: every
    dtype's minimum in torch's CUTLASS and cuSPARSELt tables) as a semi-structured tensor."""
    require_cuda()
    if w.device.type != "cuda":
        raise ValueError("nm layers run on CUDA: move the model there (model.cuda()) first")
    from torch.sparse import to_sparse_semi_structured

    rows_p, cols_p = -(-w.shape[0] // 64) * 64, -(-w.shape[1] // 128) * 128
    return to_sparse_semi_structured(F.pad(w, (0, cols_p - w.shape[1], 0, rows_p - w.shape[0])))
