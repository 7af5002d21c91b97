"""Sparsity structures: which masks are legal and how to pick the best one.

* ``unstructured``: any set of weights; ``topk`` keeps exactly ``k``.
* ``nm`` (N:M, Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"):
  every block of M consecutive weights along the *input* dimension of a Linear
  (``[out, in]``) or Conv (``[out, in, *kernel]``) weight keeps exactly N.
* ``fanin`` (constant fan-in, Lasby et al. ICLR 2024, "Dynamic Sparse Training with
  Structured Sparsity", SRigL): every output neuron (row ``w[o]`` of ``[out, in, *kernel]``)
  keeps exactly the same number k of inputs, so the layer condenses to values and
  indices of shape ``[out, k]`` (y_o = Σ_j v[o, j] · x[idx[o, j]]). With SRigL's neuron
  ablation (``FanIn(ablation=True)``) a neuron may instead hold none, the others q or q + 1.

Ties are broken deterministically: among equal scores the lower flat index wins
(is kept by ``topk``/``grow``, and is removed first by ``prune``). NaN scores rank
as -inf: below every real score, so a NaN is never preferred to a number.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .registry import Registry
from .state import count_true

NEG_INF = float("-inf")

# Above this many candidates the exact selection first narrows them with a threshold
# read off a strided sample (one comparison pass), then ranks only the survivors.
_PREFILTER_MIN = 1 << 15
_SAMPLE = 1 << 12


def _clean(scores: torch.Tensor) -> torch.Tensor:
    scores = scores.detach()
    if not scores.is_floating_point():
        scores = scores.float()
    # NaN ranks as -inf (lowest); infinities stay infinite
    return torch.nan_to_num(scores, nan=NEG_INF, posinf=float("inf"), neginf=NEG_INF)


def _flatnonzero(b: torch.Tensor) -> torch.Tensor:
    """Ascending flat indices of the True entries of a 1-D bool tensor."""
    if b.device.type == "cpu":
        # numpy's flatnonzero is several times faster than torch.nonzero on CPU
        return torch.from_numpy(np.flatnonzero(b.numpy()))
    return torch.nonzero(b).squeeze(1)


def _take(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``v[idx]`` for a 1-D ``v`` and int64 positions (index_select: 8x faster on CPU)."""
    return v.index_select(0, idx)


def _count(b: torch.Tensor) -> int:
    return count_true(b)


_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


def kth_smallest(v: torch.Tensor, k: int) -> float:
    """The ``k``-th smallest value (1-based, as ``torch.kthvalue``) of the 1-D NaN-free ``v``.

    On CPU numpy's introselect is used: ``torch.kthvalue`` there costs 8x at 27k entries
    and 17x at 100k (it dominates a structure update), the value is the same."""
    if v.device.type == "cpu" and v.dtype in _NUMPY_FLOATS:
        return float(np.partition(v.detach().numpy(), k - 1)[k - 1])
    return float(torch.kthvalue(v, k).values)


def _exact(v: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Positions of the k best entries of the 1-D NaN-free ``v``; ties: lowest index."""
    n = v.numel()
    thr = kth_smallest(v, n - k + 1 if largest else k)
    inclusive = v >= thr if largest else v <= thr
    if _count(inclusive) == k:  # no tie straddles the cut (the usual case): one pass
        return _flatnonzero(inclusive)
    strict = v > thr if largest else v < thr
    need = k - _count(strict)
    ties = _flatnonzero(v == thr)[:need]
    return torch.cat([_flatnonzero(strict), ties])


def _survivors(v: torch.Tensor, sample: torch.Tensor, p: float, largest: bool) -> torch.Tensor:
    """Positions of ``v`` on the winning side of a threshold read off ``sample`` (cleaned
    candidate values), placed so that with high probability more than a fraction ``p`` of
    the candidates survive (a margin of 10% plus four binomial standard deviations)."""
    s = sample.numel()
    r = min(s, int(math.ceil(p * s * 1.1 + 4.0 * math.sqrt(p * s) + 8)))
    t = kth_smallest(sample, s - r + 1 if largest else r)
    if largest:
        keep = v >= t
        if t == NEG_INF:  # NaN ties with -inf then
            keep |= torch.isnan(v)
    else:
        keep = (v > t).logical_not_()  # v <= t, and NaN (ranked as -inf) too
    return _flatnonzero(keep)


def _select(v: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Positions of the k largest (or smallest) entries of the 1-D ``v``, NaN ranked as
    -inf, ties by lowest index.

    Exact: a threshold t from a strided sample keeps S = {v >= t} (``<=`` for smallest);
    when |S| >= k the k-th best value is itself >= t, so every winner (and every tie
    competing with it) lies in S and ranking S alone gives the same answer in the same
    index order. Otherwise (an unlucky sample) it ranks everything.
    """
    n = v.numel()
    if 0 < k <= n // 2 and n >= _PREFILTER_MIN:
        stride = max(1, n // _SAMPLE)
        idx = _survivors(v, _clean(v[::stride]), k / n, largest)
        if idx.numel() >= k:
            return _take(idx, _exact(_clean(_take(v, idx)), k, largest))
    return _exact(_clean(v), k, largest)


def _flat_mask(n: int, positions: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.bool, device=like.device)
    out[positions] = True
    return out


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (same shape) marking the ``k`` largest scores; exact, deterministic."""
    flat = scores.detach().reshape(-1)
    if not flat.is_floating_point():
        flat = flat.float()
    n = flat.numel()
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    return _flat_mask(n, _select(flat, k, True), flat).view(scores.shape)


def bottomk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` smallest scores (NaN counts as smallest; ties: lower index first)."""
    flat = scores.detach().reshape(-1)
    if not flat.is_floating_point():
        flat = flat.float()
    n = flat.numel()
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    return _flat_mask(n, _select(flat, k, False), flat).view(scores.shape)


def _among(scores: torch.Tensor, mask: torch.Tensor, k: int, largest: bool, inactive: bool) -> torch.Tensor:
    """Flat positions of the ``k`` best scores among the candidates: the entries where
    ``mask`` is True, or where it is False when ``inactive`` (no ``~mask`` materialised)."""
    flat = scores.detach().reshape(-1)
    if not flat.is_floating_point():
        flat = flat.float()
    m = mask.reshape(-1)
    n = m.numel()
    n_cand = n - _count(m) if inactive else _count(m)
    # few candidates (prune among the active): gather them, then select among them
    if k >= n_cand or 2 * n_cand < n or n < _PREFILTER_MIN or k > n_cand // 2:
        idx = _flatnonzero(~m if inactive else m)
        return idx if k >= n_cand else _take(idx, _select(_take(flat, idx), k, largest))
    stride = max(1, n // _SAMPLE)
    sub, sub_m = flat[::stride], m[::stride]
    sample = _clean(_take(sub, _flatnonzero(~sub_m if inactive else sub_m)))
    if sample.numel() > 0:
        # Threshold from the sampled candidates, applied to the whole tensor; the few
        # survivors that are not candidates are dropped afterwards (no gather of all of them).
        idx = _survivors(flat, sample, k / n_cand, largest)
        on = _take(m, idx)
        idx = _take(idx, _flatnonzero(on.logical_not_() if inactive else on))
        if idx.numel() >= k:
            return _take(idx, _exact(_clean(_take(flat, idx)), k, largest))
    idx = _flatnonzero(~m if inactive else m)
    return _take(idx, _select(_take(flat, idx), k, largest))


def prune_lowest(scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` minus its ``n`` lowest-scored active entries (NaN lowest; ties: lower index)."""
    out = mask.clone(memory_format=torch.contiguous_format)
    if n <= 0:
        return out
    out.view(-1)[_among(scores, mask, n, False, inactive=False)] = False
    return out


def grow_highest(scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` plus the ``n`` highest-scored inactive entries (NaN lowest; ties: lower index)."""
    out = mask.clone(memory_format=torch.contiguous_format)
    if n <= 0:
        return out
    out.view(-1)[_among(scores, mask, n, True, inactive=True)] = True
    return out


class Unstructured:
    """Any subset of weights may be active."""

    name = "unstructured"

    def check(self, name: str, shape: Sequence[int]) -> None:
        return None

    def count(self, shape: Sequence[int], density: float) -> int:
        numel = 1
        for s in shape:
            numel *= int(s)
        return max(1, min(numel, int(round(density * numel))))

    def topk(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        return topk_mask(scores, k)

    def prune(self, scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        return prune_lowest(scores, mask, n)

    def grow(self, scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        return grow_highest(scores, mask, n)


class NM:
    """N:M sparsity along the input dimension (dim 1 of Conv/Linear weights)."""

    name = "nm"

    def __init__(self, n: int = 2, m: int = 4):
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
            raise ValueError(f"N:M structure needs integers 0 < n <= m, got n={n}, m={m}")
        self.n, self.m = n, m

    def check(self, name: str, shape: Sequence[int]) -> None:
        if len(shape) < 2:
            raise ValueError(
                f"N:M sparsity needs a Linear or Conv weight, but '{name}' has shape {tuple(shape)}"
            )
        if shape[1] % self.m:
            raise ValueError(
                f"N:M sparsity ({self.n}:{self.m}) needs the input dimension of '{name}' to be "
                f"divisible by m={self.m}, but it is {shape[1]} (shape {tuple(shape)} as [out, in, ...]); "
                f"keep it dense with exclude=['{name}']"
            )

    def count(self, shape: Sequence[int], density: float) -> int:
        numel = 1
        for s in shape:
            numel *= int(s)
        return numel // self.m * self.n

    # [out, in, *k] -> [blocks, m] with each row m consecutive input channels
    def _blocks(self, t: torch.Tensor) -> torch.Tensor:
        return t.movedim(1, -1).reshape(-1, self.m)

    def _unblocks(self, b: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        moved = list(shape)
        moved.append(moved.pop(1))
        return b.reshape(moved).movedim(-1, 1)

    def _fill(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Add the best inactive entries of every block until it holds exactly N."""
        s = self._blocks(_clean(scores))
        mb = self._blocks(mask)
        deficit = self.n - mb.sum(1, keepdim=True)
        # best score first (ties: lower index), then every inactive entry before every
        # active one, so even -inf/NaN candidates fill the block before nothing does
        order = torch.sort(s, dim=1, descending=True, stable=True).indices
        active_first = torch.sort(mb.gather(1, order).to(torch.uint8), dim=1, stable=True).indices
        order = order.gather(1, active_first)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(self.m, device=s.device).expand_as(order))
        new = mb | (ranks < deficit)
        return self._unblocks(new, scores.shape)

    def topk(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        expected = self.count(scores.shape, self.n / self.m)
        assert k == expected, f"N:M topk wants k={expected}, got {k}"
        return self._fill(scores, torch.zeros(scores.shape, dtype=torch.bool, device=scores.device))

    def prune(self, scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        return prune_lowest(scores, mask, n)

    def grow(self, scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        new = self._fill(scores, mask)
        assert count_true(new) - count_true(mask) == n, "N:M grow must refill exactly the pruned count"
        return new


def _row_ranks(scores: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Rank (0-based) of every entry of ``scores`` ([rows, cols], cleaned) within its row:
    the entries where ``first`` is True come first, each group best score first (ties:
    lower index)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    front = torch.sort((~first).gather(1, order).to(torch.uint8), dim=1, stable=True).indices
    order = order.gather(1, front)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def fill_rows(scores: torch.Tensor, mask: torch.Tensor, per_row) -> torch.Tensor:
    """``mask`` ([rows, cols]) plus, in every row, its best inactive entries until the row
    holds ``per_row`` (an int, or a ``[rows]`` tensor of per-row targets; NaN lowest; ties:
    lower index). Rows already at or above their target are unchanged."""
    if torch.is_tensor(per_row):
        per_row = per_row.reshape(-1, 1)
    deficit = per_row - mask.sum(1, keepdim=True)
    # best score first (ties: lower index), then every inactive entry before every active
    # one, so even -inf/NaN candidates fill a row before nothing does (as NM._fill)
    return mask | (_row_ranks(_clean(scores), ~mask) < deficit)


def trim_rows(scores: torch.Tensor, mask: torch.Tensor, per_row: torch.Tensor) -> torch.Tensor:
    """``mask`` ([rows, cols]) keeping, in every row, only its ``per_row[r]`` best-scored
    active entries (NaN lowest; ties: lower index). Rows at or below their target are unchanged."""
    return mask & (_row_ranks(_clean(scores), mask) < per_row.reshape(-1, 1))


class FanIn:
    """Constant fan-in (SRigL, Lasby et al. 2024): every output neuron keeps exactly k inputs.

    A layer's count is always ``k · out``; ``round_count`` turns a distribution's count
    into that (k = round(count / out), clipped to [1, fan-in]). Drop-and-grow methods prune
    the Ω lowest-scored active weights of the layer anywhere, then grow refills every
    neuron to k from its own best inactive entries (SRigL §3: "regrow as many weights in
    each neuron as were pruned from it"), so the total regrown is exactly Ω.

    **Neuron ablation** (``ablation=True``, SRigL §3.3): at every grow, with B = k · out the
    layer's budget and Ω the weights just pruned, a weight is *salient* if the layer's
    unconstrained selection would hold it: it survived the prune (the top B − Ω of the keep
    scores) or it is among the Ω best-scored inactive weights (what unstructured growth
    would pick). Neuron o with s_o salient weights is ablated (every weight removed) when

        s_o < max(1, ⌊γ_sal · k⌋)

    (SRigL's rule, with ``gamma_sal`` γ_sal = 0.3 by default, k the layer's constant fan-in
    without ablation), except that at least ⌈B / fan-in⌉ neurons stay alive (so that the
    budget fits; the least salient candidates are ablated first, ties: lower index) and
    a layer the caller marks ``ablate=False`` (its outputs are the model's) keeps every
    neuron. The budget moves to the A alive neurons, keeping the layer's count exactly B:
    with q, r = divmod(B, A) every alive neuron gets q inputs and the r most salient of
    them (ties: lower index) q + 1, so fan-in is constant up to one (export pads those rows
    by one zero). An alive neuron keeps its best kept weights (by the keep scores) up to
    its target and grows its best inactive ones beyond them. Ablation is decided afresh at
    every update from the mask alone, so an ablated neuron revives when enough of the
    unconstrained growth falls in it; no state beyond the mask is kept."""

    name = "fanin"

    def __init__(self, ablation: bool = False, gamma_sal: float = 0.3):
        if not isinstance(ablation, bool):
            raise ValueError(f"neuron_ablation must be true or false, got {ablation!r}")
        if isinstance(gamma_sal, bool) or not isinstance(gamma_sal, (int, float)) or not 0 < gamma_sal <= 1:
            raise ValueError(f"gamma_sal (SRigL's γ_sal, the fraction of k salient weights a neuron "
                             f"needs to stay alive) must be a number in (0, 1], got {gamma_sal!r}")
        self.ablation, self.gamma_sal = ablation, float(gamma_sal)

    def check(self, name: str, shape: Sequence[int]) -> None:
        if len(shape) < 2:
            raise ValueError(
                f"fan-in sparsity needs a Linear or Conv weight, but '{name}' has shape {tuple(shape)}"
            )

    @staticmethod
    def _rows(shape: Sequence[int]) -> Tuple[int, int]:
        rows = int(shape[0])
        return rows, math.prod(int(s) for s in shape) // rows

    def round_count(self, shape: Sequence[int], count: int) -> int:
        rows, fan_in = self._rows(shape)
        return rows * max(1, min(fan_in, int(round(count / rows))))

    def count(self, shape: Sequence[int], density: float) -> int:
        rows, fan_in = self._rows(shape)
        return self.round_count(shape, int(round(density * rows * fan_in)))

    def per_row(self, shape: Sequence[int], k: int) -> int:
        rows, _ = self._rows(shape)
        assert k % rows == 0, f"fan-in count {k} is not a multiple of the {rows} output neurons"
        return k // rows

    def topk(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        rows = scores.shape[0]
        empty = torch.zeros((rows, scores[0].numel()), dtype=torch.bool, device=scores.device)
        return fill_rows(scores.reshape(rows, -1), empty, self.per_row(scores.shape, k)).view(scores.shape)

    def prune(self, scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        return prune_lowest(scores, mask, n)

    def grow(self, scores: torch.Tensor, mask: torch.Tensor, n: int,
             keep_scores: Optional[torch.Tensor] = None, ablate: bool = True) -> torch.Tensor:
        """``mask`` (after a prune of ``n``) back at the layer's budget: every neuron refilled
        to k, or with ``ablation`` (and ``ablate``) the neuron ablation of the class
        docstring. ``keep_scores`` rank the kept weights of a neuron whose new target is
        below what it holds (default: ``scores``)."""
        rows = mask.shape[0]
        if self.ablation and ablate:
            ks = scores if keep_scores is None else keep_scores
            new = self._grow_ablating(scores.reshape(rows, -1), ks.reshape(rows, -1),
                                      mask.reshape(rows, -1), n).view(mask.shape)
            assert count_true(new) == count_true(mask) + n, "fan-in grow must end at the layer's budget"
            return new
        per = (count_true(mask) + n) // rows
        new = fill_rows(scores.reshape(rows, -1), mask.reshape(rows, -1), per).view(mask.shape)
        assert count_true(new) - count_true(mask) == n, "fan-in grow must refill exactly the pruned count"
        return new

    def ablated(self, salient: torch.Tensor, budget: int) -> torch.Tensor:
        """Which neurons (rows of the ``[rows, cols]`` bool ``salient``) to ablate, for a
        layer holding ``budget`` weights: s_o < max(1, ⌊γ_sal·k⌋), at least ⌈budget / cols⌉
        neurons alive (the least salient candidates go first, ties: lower index)."""
        rows, cols = salient.shape
        k = budget // rows
        s = salient.sum(1)
        cand = s < max(1, int(math.floor(self.gamma_sal * k)))
        room = rows - max(1, -(-budget // cols))   # most neurons that may go
        if int(cand.sum()) <= room:
            return cand
        # least salient first; a stable sort keeps the lower index first among equals
        order = torch.sort(s, stable=True).indices[:room]
        out = torch.zeros(rows, dtype=torch.bool, device=salient.device)
        out[order] = True
        return out

    @staticmethod
    def row_targets(salient_counts: torch.Tensor, ablated: torch.Tensor, budget: int) -> torch.Tensor:
        """Per-row counts summing exactly to ``budget``: 0 for ablated rows; q or q + 1 for
        the A alive ones (q, r = divmod(budget, A)), the r most salient getting q + 1 (ties:
        lower index)."""
        alive = ~ablated
        q, r = divmod(budget, int(alive.sum()))
        targets = torch.where(alive, q, 0)
        if r:
            key = torch.where(alive, salient_counts, -1)   # ablated rows never get the extra one
            extra = torch.sort(key, descending=True, stable=True).indices[:r]
            targets[extra] += 1
        return targets

    def _grow_ablating(self, scores: torch.Tensor, keep_scores: torch.Tensor, mask: torch.Tensor,
                       n: int) -> torch.Tensor:
        budget = count_true(mask) + n
        assert budget % mask.shape[0] == 0, "a fan-in budget is k per output neuron"
        # the layer's unconstrained keep + grow selection: what survived the prune plus
        # the n best inactive weights by the grow scores
        salient = grow_highest(scores, mask, n)
        ablated = self.ablated(salient, budget)
        targets = self.row_targets(salient.sum(1), ablated, budget)
        kept = trim_rows(keep_scores, mask, targets)
        return fill_rows(scores, kept, targets)


# name -> factory(n, m): the per-layer structures a method's ``structure`` field names
STRUCTURES: "Registry[Callable[[int, int], Any]]" = Registry("structure")
STRUCTURES.add("unstructured", lambda n, m: Unstructured())
STRUCTURES.add("nm", NM)
STRUCTURES.add("fanin", lambda n, m, **kw: FanIn(**kw))


def make_structure(name: str, n: int = 2, m: int = 4, **options: Any):
    """The registered structure ``name`` (``nm`` takes N and M; ``fanin`` takes
    ``ablation`` and ``gamma_sal``)."""
    if options:
        return STRUCTURES.get(name)(n, m, **options)
    return STRUCTURES.get(name)(n, m)


# ---- several tensors ranked together (the "global" distribution) -------------
def _concat(tensors: Dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _split(flat: torch.Tensor, like: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = flat[i : i + t.numel()].view(t.shape)
        i += t.numel()
    return out


def global_topk(scores: Dict[str, torch.Tensor], k: int) -> Dict[str, torch.Tensor]:
    """Top-k across several tensors at once (ties: earlier tensor, lower index)."""
    return _split(topk_mask(_concat({n: _clean(s) for n, s in scores.items()}), k), scores)


def global_prune(scores: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor], n: int):
    flat = prune_lowest(_concat(scores), _concat(masks), n)
    return _split(flat, masks)


def global_grow(scores: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor], n: int):
    flat = grow_highest(_concat(scores), _concat(masks), n)
    return _split(flat, masks)
