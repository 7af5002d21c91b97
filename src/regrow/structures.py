"""Sparsity structures: which masks are legal and how to pick the best one.

* ``unstructured``: any set of weights; ``topk`` keeps exactly ``k``.
* ``nm`` (N:M, Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"):
  every block of M consecutive weights along the *input* dimension of a Linear
  (``[out, in]``) or Conv (``[out, in, *kernel]``) weight keeps exactly N.

Ties are broken deterministically: among equal scores the lower flat index wins
(is kept by ``topk``/``grow``, and is removed first by ``prune``). NaN scores rank
below everything.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch

NEG_INF = float("-inf")


def _clean(scores: torch.Tensor) -> torch.Tensor:
    scores = scores.detach()
    if not scores.is_floating_point():
        scores = scores.float()
    return torch.nan_to_num(scores, nan=NEG_INF)


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (same shape) marking the ``k`` largest scores; exact, deterministic.

    A k-th-value threshold does the heavy lifting in one linear pass; only the
    entries tied with the threshold are resolved by index, lowest first.
    """
    flat = _clean(scores).reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    thr = torch.kthvalue(flat, n - k + 1).values
    keep = flat > thr
    need = k - int(keep.sum())
    if need > 0:
        ties = torch.nonzero(flat == thr).squeeze(1)[:need]
        keep[ties] = True
    return keep.view(scores.shape)


def bottomk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` smallest scores (ties: lower index first)."""
    return topk_mask(-_clean(scores), k)


def prune_lowest(scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` minus its ``n`` lowest-scored active entries."""
    if n <= 0:
        return mask.clone()
    candidate = torch.where(mask, _clean(scores), torch.tensor(float("inf"), device=mask.device))
    return mask & ~bottomk_mask(candidate, n)


def grow_highest(scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` plus the ``n`` highest-scored inactive entries."""
    if n <= 0:
        return mask.clone()
    candidate = torch.where(mask, torch.tensor(NEG_INF, device=mask.device), _clean(scores))
    return mask | topk_mask(candidate, n)


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
                f"divisible by m={self.m}, but it is {shape[1]} (shape {tuple(shape)}); "
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
        cand = torch.where(mb, torch.tensor(NEG_INF, device=s.device), s)
        order = torch.sort(cand, dim=1, descending=True, stable=True).indices
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
        assert int(new.sum()) - int(mask.sum()) == n, "N:M grow must refill exactly the pruned count"
        return new


def make_structure(name: str, n: int = 2, m: int = 4):
    if name == "unstructured":
        return Unstructured()
    if name == "nm":
        return NM(n, m)
    raise ValueError(f"unknown structure '{name}'; allowed: unstructured, nm (channel: see regrow.structured)")


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
