"""DST-EE (Huang et al. 2023, "Dynamic Sparse Training via More Exploration" /
"... Balancing the Exploration-Exploitation Trade-off"), Eq. 1 and Algorithm 1.

Every ΔT steps until T_end each layer drops its ⌊α_t·|Θ_K|⌋ smallest-|w| active
weights (as RigL) and grows as many inactive weights with the largest acquisition
score (Eq. 1)

    S = |∂L/∂W| + c · ln(t) / (N + ε),        t = q·ΔT,

a UCB-style bonus: ``t`` is the training iteration of the q-th mask update (the
optimizer step, 1-based) and ``N`` counts, per weight, the mask updates at which it
was active, initialised from the initial mask (Algorithm 1: N ← M, then N ← N + M
after every update). Grown weights start at 0; the initial distribution is ERK
(paper §"Overview"). ``c = 0`` reduces exactly to RigL.

Defaults ``c = 1e-3``, ``ε = 1``: the paper's text fixes neither number (Figure 3
sweeps c), so they are ours. ε = 1 keeps the bonus of never-active weights finite
(c·ln t instead of c·ln t / ε → ∞ as ε → 0), so c alone sets the balance; c = 1e-3
puts the bonus, c·ln t ≈ 7·10⁻³ at t ≈ 10³, on the scale of the dense gradients of
the small benchmark models, where both terms matter. ``benchmarks/bench_dst_ee_optg.py``
sweeps c.

Logged at every update: the exploration degree R (fraction of weights ever active,
Eq. in §"Weights Coverage Exploration", tracked by ``regrow.metrics``) and the split
of grown weights into ``n_grown_exploit`` (also in the top-k by |∂L/∂W| alone) and
``n_grown_explore`` (grown only because of the bonus term).

Departure: as RigL here, the optimizer step of an update iteration is taken as well.

Distributed: the gradient in S is the parameter's ``.grad`` at the update step,
which DistributedDataParallel has already all-reduced before the optimizer step, and
N changes only with the masks, so every rank computes the same scores and masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from .base import METHODS, DropGrowMethod, DynamicConfig

COUNT = "dst_ee.active_count"
# int32: a weight can be active at 2³¹ − 1 updates before overflow (int16 would wrap
# after 32767, reachable with ΔT = 100 on a 4M-step run).
COUNT_DTYPE = torch.int32


@dataclass
class DSTEEConfig(DynamicConfig):
    """c: weight of the exploration bonus c·ln(t)/(N + ε) (0 = RigL); eps: ε > 0."""

    c: float = 1e-3
    eps: float = 1.0


def acquisition_scores(grad: torch.Tensor, count: torch.Tensor, t: int, c: float, eps: float) -> torch.Tensor:
    """DST-EE Eq. 1: S = |grad| + c·ln(t)/(N + ε) for one layer (pure function)."""
    exploit = grad.detach().abs()
    if c == 0:
        return exploit
    bonus = (c * math.log(t)) / (count.to(exploit.dtype) + eps)
    return exploit + bonus


@METHODS.register("dst_ee")
class DSTEE(DropGrowMethod):
    """RigL's drop, growth by S = |∂L/∂W| + c·ln(t)/(N + ε) (Huang et al. 2023, Eq. 1):
    gradient plus an exploration bonus for rarely active weights."""

    needs_dense_grad = True   # the exploitation term is the dense |∂L/∂W| (as RigL)
    Config = DSTEEConfig

    def __init__(self, *args: Any, **kwargs: Any):
        self._exploit_scores: Optional[Dict[str, torch.Tensor]] = None
        self._split: Optional[Dict[str, int]] = None
        super().__init__(*args, **kwargs)
        # Algorithm 1: N ← M (initial mask)
        self.state.buffers[COUNT] = {n: m.to(COUNT_DTYPE) for n, m in self.state.masks.items()}

    def validate_config(self) -> None:
        super().validate_config()
        cfg = self.config
        if isinstance(cfg.c, bool) or not isinstance(cfg.c, (int, float)) or not cfg.c >= 0:
            raise ValueError(f"c (DST-EE exploration weight) must be a number >= 0, got {cfg.c!r}")
        if isinstance(cfg.eps, bool) or not isinstance(cfg.eps, (int, float)) or not cfg.eps > 0:
            raise ValueError(f"eps (DST-EE ε) must be a number > 0, got {cfg.eps!r}")

    @property
    def counts(self) -> Dict[str, torch.Tensor]:
        """N: per weight, the number of mask updates (initial mask included) it was active at."""
        return self.state.buffers[COUNT]

    def grow_scores(self, step: int) -> Dict[str, torch.Tensor]:
        cfg = self.config
        exploit = self.dense_gradient_scores()
        self._exploit_scores = exploit
        return {n: acquisition_scores(exploit[n], self.counts[n], step, cfg.c, cfg.eps) for n in self.names}

    def grow(self, scores: Dict[str, torch.Tensor], counts: Dict[str, int],
             masks: Dict[str, torch.Tensor],
             keep_scores: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        new = super().grow(scores, counts, masks, keep_scores)
        exploit, self._exploit_scores = self._exploit_scores, None
        if exploit is not None:
            # what RigL would have grown from the same candidates: the difference is
            # what the bonus term chose
            greedy = super().grow(exploit, counts, masks, keep_scores)
            grown = sum(int(torch.count_nonzero(new[n] & ~masks[n])) for n in self.names)
            explore = sum(int(torch.count_nonzero(new[n] & ~masks[n] & ~greedy[n])) for n in self.names)
            self._split = {"n_grown_exploit": grown - explore, "n_grown_explore": explore}
        return new

    def after_step(self, step: int) -> None:
        due = self._grow_scores is not None
        super().after_step(step)
        if due:
            # Algorithm 1: N ← N + M after the update
            for n in self.names:
                self.counts[n].add_(self.state.masks[n].to(COUNT_DTYPE))

    def log(self, record: Dict[str, Any]) -> None:
        if self._split is not None and record.get("event") == "update":
            record = {**record, **self._split}
            self._split = None
        super().log(record)
