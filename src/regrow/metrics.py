"""Structure-update measurements (IEE §4.4, DST-EE §3): mask IoU, survival rate,
exploration degree.

* IoU(A, B) = |A ∩ B| / |A ∪ B| over all sparse weights.
* survival rate at update u+1 = |G_u ∩ K'_{u+1}| / |G_u|, G_u the weights grown at
  update u and K'_{u+1} the active set right after the prune of update u+1.
* exploration degree R = |weights ever active| / |sparse weights| (DST-EE, Eq. 3).
* new-growth fraction of update u = |G_u ∖ K_u| / |G_u|, K_u the active set before the
  update's prune: the share of the grown weights that were not active before it. For
  IEE it is what Reactivate & Explore returns: near 0, Grow brought back the weights
  Prune removed (issue 15).

The tracker keeps its memory (bool masks only) inside ``SparseState.buffers`` so it
resumes with everything else.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .state import SparseState, count_true_sum

Masks = Dict[str, torch.Tensor]

EVER = "tracker.ever_active"
PREV_PRUNE = "tracker.prev_after_prune"
LAST_GROWN = "tracker.last_grown"


def mask_iou(a: Masks, b: Masks) -> float:
    inter = count_true_sum(a[k] & b[k] for k in a)
    # |A ∪ B| = |A| + |B| − |A ∩ B|: counting needs no second elementwise pass
    union = count_true_sum([*(a[k] for k in a), *(b[k] for k in a)]) - inter
    return inter / union if union else 1.0


def minus(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A ∖ B of bool masks in one pass (on bools ``a > b`` is ``a & ~b``)."""
    return torch.gt(a, b)


def exploration_degree(state: SparseState) -> float:
    ever = state.buffers.get(EVER)
    if not ever:
        return state.density()
    return count_true_sum(ever.values()) / sum(m.numel() for m in ever.values())


def start_tracking(state: SparseState) -> None:
    state.buffers[EVER] = {k: m.clone() for k, m in state.masks.items()}


def record_update(
    state: SparseState, before: Masks, after_prune: Optional[Masks], after_grow: Masks
) -> Dict[str, float]:
    """Update the tracker with one structure update (prune and grow at the same step,
    or only a new mask when ``after_prune`` is None) and return its metrics."""
    if after_prune is None:
        return _record_new_mask(state, before, after_grow)
    out = record_prune(state, before, after_prune)
    out.update(record_grow(state, before, after_prune, after_grow))
    return out


def _record_new_mask(state: SparseState, before: Masks, after_grow: Masks) -> Dict[str, float]:
    """Exploration degree and IoU with ``before`` of a newly installed mask."""
    if EVER not in state.buffers:
        start_tracking(state)
    ever = state.buffers[EVER]
    for k, m in after_grow.items():
        ever[k] |= m
    return {"exploration_degree": exploration_degree(state), "iou_grow": mask_iou(after_grow, before)}


# ---- prune and grow recorded separately (IEE prunes and grows ΔT − H steps apart) ----
# Same definitions as ``record_update``: calling ``record_prune`` then ``record_grow`` on one
# update gives exactly its numbers (tests/test_iee.py checks this).
def record_prune(state: SparseState, before: Masks, after_prune: Masks) -> Dict[str, float]:
    """The prune half of an update: IoU with the previous update's after-prune mask,
    survival of the weights grown at the previous update, pruned count."""
    out: Dict[str, float] = {}
    if EVER not in state.buffers:
        start_tracking(state)
    prev = state.buffers.get(PREV_PRUNE)
    if prev:
        out["iou_prune"] = mask_iou(after_prune, prev)
    last = state.buffers.get(LAST_GROWN)
    if last:
        n_grown = count_true_sum(last.values())
        if n_grown:
            alive = count_true_sum(last[k] & after_prune[k] for k in last)
            out["survival_rate"] = alive / n_grown
    state.buffers[PREV_PRUNE] = {k: m.clone() for k, m in after_prune.items()}
    out["n_pruned"] = count_true_sum(minus(before[k], after_prune[k]) for k in before)
    return out


def record_grow(
    state: SparseState, before: Masks, after_prune: Masks, after_grow: Masks
) -> Dict[str, float]:
    """The grow half of an update: IoU of the after-grow mask with ``before`` (the mask
    before this update's prune), exploration degree, grown count and the share of the
    grown weights that were not in ``before``."""
    out = _record_new_mask(state, before, after_grow)
    grown = state.buffers[LAST_GROWN] = {k: minus(after_grow[k], after_prune[k]) for k in after_grow}
    out["n_grown"] = n_grown = count_true_sum(grown.values())
    if n_grown:
        out["new_grown_fraction"] = count_true_sum(minus(grown[k], before[k]) for k in grown) / n_grown
    return out
