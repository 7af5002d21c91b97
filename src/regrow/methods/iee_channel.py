"""Structured, latency-constrained IEE (Sun et al. 2025, §3.1 with appendix §4): IEE's
prune / explore / grow cycle on channel groups under a latency budget Ψ.

The cycle is IEE's template (:class:`regrow.methods.iee.IEECycle`: the event
schedule of Algorithm 1, Θ_K frozen bit-exactly during Reactivate & Explore, the
snapshot in ``SparseState``); only the unit and the selection change:

* units are channel groups; importance is Taylor on BatchNorm accumulated over the
  stage, I_j = Σ_BN |g_γj·γ_j + g_βj·β_j| (appendix Eq. 2);
* Prune = Knapsack(I(Θ_K), R, Ψ − Ω_t) (appendix §4.2): keep the most important active
  channels whose latency fits Ψ − Ω_t, R_j = T(p^{l−1}, j) − T(p^{l−1}, j − 1);
* Reactivate & Explore: every pruned channel comes back at its dormant values and
  trains for Q iterations with Θ_K frozen;
* Grow = Knapsack(I(Θ_P), R, Ω_t) (appendix §4.3): add the most important explored
  channels whose latency fits back into Ψ; Ω_t = α_t·Ψ is a latency amount.

From scratch (``init='random'``) the start is a random channel structure meeting Ψ (a
knapsack over random importances). From the model it is given (``init='criterion'``,
e.g. pretrained) it follows HALP's exponential scheduler (appendix §3, Shen et al. 2022
§4) by default: it starts with every channel and IEE step k of T prunes and grows within
Ψ_k = D·(Ψ/D)^(k/T), D the dense cost, so the model descends gradually and step T lands
on Ψ; ``budget_schedule='constant'`` keeps the channels of largest Σ|γ| within Ψ from the
start instead.

Structure updates end early by default, as in the paper (appendix §3: "the update with
IEE for latency-constrained structured sparsity will instead end at the 5th epoch" of
130): ``end_fraction`` = 5/130. Ω_t = α_t·Ψ_k with α_t from ``fraction_schedule``
(cosine by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch

from ..schedules import exponential_ratio
from .channel import ChannelConfig, ChannelMethod
from .base import METHODS
from .iee import CYCLES_DONE, PHASE, IEECycle, IEEConfig


BUDGET_SCHEDULES = ("exponential", "constant")
PSI = "iee.psi"   # Ψ_k of the IEE step between its prune and its grow


@dataclass
class ChannelIEEConfig(ChannelConfig, IEEConfig):
    """IEE's fields (H, J, Q, alpha, end_fraction, freeze, grow_init, init) plus the channel
    fields (input_shape, cost, latency_table, latency_target | latency_ms, ...). The
    criterion is Taylor on BatchNorm. slim_after: once the last IEE step is done (the
    structure stops changing) slim the model in place, so the remaining iterations run on
    the physically smaller network (``--slim-after-updates``). end_fraction: updates end at
    5/130 of the run (the paper's 5th of 130 epochs). budget_schedule: ``exponential``
    (from a given model, ``init='criterion'``: descend from the dense cost to Ψ over the
    IEE steps, HALP's scheduler) or ``constant`` (Ψ from the start)."""

    criterion: str = "taylor"
    slim_after: bool = False
    end_fraction: float = 5 / 130
    budget_schedule: str = "exponential"


@METHODS.register("iee_channel")
class ChannelIEE(ChannelMethod, IEECycle):
    """IEE over channel groups under a latency budget Ψ (Sun et al. 2025, appendix §4):
    the cycle of :class:`~regrow.methods.iee.IEECycle` with channel selection hooks,
    Prune = Knapsack(I(Θ_K), R, Ψ_k − Ω_t), Grow = Knapsack(I(Θ_P), R, Ω_t)."""

    Config = ChannelIEEConfig
    structures = ("channel",)
    low_exploration_hint = "train longer, or use HALP, which prunes without regrowing"
    no_cycle_hint = ("the paper's structured protocol ends updates at 5/130 of the run; lower H, J, Q, "
                     "raise end_fraction or train longer")

    def validate_config(self) -> None:
        super().validate_config()
        cfg = self.config
        if cfg.criterion != "taylor":
            raise ValueError(f"criterion must be 'taylor' (Taylor on BatchNorm) for channel IEE, got {cfg.criterion!r}")
        if cfg.stages != "given":
            raise ValueError("stages must be 'given' for channel IEE (the budget stages were measured for "
                             "unstructured IEE only): set H, J, Q")
        if cfg.grow_by != "criterion":
            raise ValueError("grow_by must be 'criterion' for channel IEE (the knapsack grows by importance)")
        if not isinstance(cfg.slim_after, bool):
            raise ValueError(f"slim_after must be true or false, got {cfg.slim_after!r}")
        if cfg.budget_schedule not in BUDGET_SCHEDULES:
            raise ValueError(f"budget_schedule must be one of {', '.join(BUDGET_SCHEDULES)}; "
                             f"got {cfg.budget_schedule!r}")

    def after_step(self, step: int) -> None:
        super().after_step(step)
        cfg = self.config
        if (cfg.slim_after and not self.slimmed and self.state.counters[CYCLES_DONE] >= self.cycles
                and self.phase == "exploit"):
            self.slim_now()   # the structure is final: train the rest on the smaller network

    def _rebuild_after_slim(self, kept, record) -> None:
        super()._rebuild_after_slim(kept, record)
        self._others = self._dense_parameters()   # slimming replaced the Parameters

    def _explored(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        # reactivated channels also track BN statistics during Reactivate & Explore
        return super()._explored() + [(self.stats[n], m) for n, m in self._stat_masks.items()]

    # ---- the budget ------------------------------------------------------------------
    @property
    def descends(self) -> bool:
        """Whether the budget descends from the dense cost (a given model, HALP's scheduler)."""
        return self.config.init == "criterion" and self.config.budget_schedule == "exponential"

    def step_budget(self, k: int) -> float:
        """Ψ_k, the latency budget of IEE step k (1-based): D·(Ψ/D)^(k/T) when descending,
        else Ψ."""
        if not self.descends:
            return self.budget
        return self.dense_cost * exponential_ratio(k, self.cycles, self.budget / self.dense_cost)

    # ---- start -----------------------------------------------------------------------
    def initial_channels(self) -> Dict[str, torch.Tensor]:
        """Every channel when descending from a given model; otherwise a structure meeting
        Ψ: knapsack over random importances (``init='random'``) or Σ|γ| of the group's BNs
        (``init='criterion'``, ``budget_schedule='constant'``)."""
        full = {g.name: torch.ones(g.size, dtype=torch.bool, device=self.example.device) for g in self.groups}
        if self.descends:
            return full
        none = {k: ~v for k, v in full.items()}
        if self.config.init == "random":
            imp = {g.name: torch.rand(g.size, generator=self.generator) for g in self.groups}
        else:
            imp = {}
            for g in self.groups:
                s = torch.zeros(g.size)
                for m in g.members:
                    if m.kind == "bn":
                        w = self.modules[m.module].weight.detach().abs().cpu()
                        s.index_add_(0, torch.tensor(m.root), w[list(m.idxs)])
                imp[g.name] = s
        lo = {g.name: self.config.min_channels for g in self.groups}
        return self.knapsack(imp, full, none, self.budget, lo, counts={g.name: g.size for g in self.groups})

    # ---- stages ----------------------------------------------------------------------
    def accumulate_scores(self) -> None:
        self.accumulate_importance()   # Taylor on BatchNorm, appendix Eq. 2

    def mask_stats(self) -> None:
        if self.state.counters.get(PHASE) != "explore":  # reactivated channels track their statistics
            super().mask_stats()

    def _reactivate(self, i: int) -> None:
        super()._reactivate(i)  # the cycle's: Θ_P back at dormant values, Θ_K snapshot for the freeze
        # reactivated channels track BN statistics afresh from BatchNorm's initial (0, 1): a
        # zero variance would blow up their eval-mode output until the average caught up
        with torch.no_grad():
            for n, m in self._stat_masks.items():
                self.stats[n].masked_fill_(~m, 1.0 if n.endswith("running_var") else 0.0)

    def _take_importance(self) -> Dict[str, torch.Tensor]:
        imp = {k: v.clone() for k, v in self.state.buffers["importance"].items()}
        self.reset_importance()
        return imp

    # ---- selection: latency knapsacks over channel groups -----------------------------
    def select_prune(self, fraction: float) -> float:
        psi = self.step_budget(self.state.counters[CYCLES_DONE] + 1)
        omega = fraction * psi
        imp = self._take_importance()
        active = self.channels
        none = {k: torch.zeros_like(v) for k, v in active.items()}
        lo = {g.name: self.config.min_channels for g in self.groups}
        new = self.knapsack(imp, active, none, psi - omega, lo)
        self.commit_channels(new, record=False)   # pruned values -> dormant, zero state
        self.state.counters[PSI] = psi
        self._choice = {"omega": omega, "step_budget": psi}
        return omega

    def grow_scores(self) -> Dict[str, torch.Tensor]:
        return self._take_importance()

    def select_grow(self, scores, omega, kept) -> Dict[str, torch.Tensor]:
        psi = self.state.counters.pop(PSI)
        self._choice = {"step_budget": psi}
        active = self.channels
        return self.knapsack(scores, {k: ~v for k, v in active.items()}, active, psi)

    def install_grown(self, selection: Dict[str, torch.Tensor]) -> None:
        self.commit_channels(selection, grow_init=self.config.grow_init, record=False)

    def update_record(self) -> Dict[str, Any]:
        return self.structure_record()
