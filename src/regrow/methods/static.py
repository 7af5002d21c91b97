"""Static sparse training: a random mask from the distribution, never changed
(the "Static" baseline of RigL, Evci et al. 2020, §4, and of IEE Table 2)."""
from __future__ import annotations

from .base import METHODS, SparseMethod


@METHODS.register("static")
class Static(SparseMethod):
    """Random mask at the per-layer targets (uniform U(0,1) scores, top-k), fixed for the run."""

