"""GMP, gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"):
start dense and every ΔT steps between t_0 and T_end prune the smallest-|w| active
weights so the density follows the cubic schedule
s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(T_end − t_0))³ (Eq. 1); no regrowth."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch

from ..criteria import CRITERIA
from ..schedules import cubic_density
from .base import METHODS, SparseMethod, SparsityConfig, warn_user


@dataclass
class GMPConfig(SparsityConfig):
    """update_interval: ΔT; start_fraction / end_fraction: t_0 and T_end as fractions of total_steps."""

    update_interval: int = 100
    start_fraction: float = 0.0
    end_fraction: float = 0.75


@METHODS.register("gmp")
class GMP(SparseMethod):
    Config = GMPConfig
    structures = ("unstructured",)
    needs_total_steps = True
    dynamic = True

    def validate_config(self) -> None:
        super().validate_config()
        cfg = self.config
        if not 0 <= cfg.start_fraction < cfg.end_fraction <= 1:
            raise ValueError(
                "start_fraction and end_fraction must satisfy 0 <= start_fraction < end_fraction <= 1, "
                f"got {cfg.start_fraction}, {cfg.end_fraction}"
            )

    def prune_steps(self) -> int:
        """How many pruning events the schedule holds: every multiple of ΔT in
        [t_0, T_end) after step 0, plus T_end itself."""
        dt = self.config.update_interval
        first = max(dt, -(-self.t_start // dt) * dt)   # the first multiple of ΔT at or after t_0
        return len(range(first, self.t_end, dt)) + 1

    def warn_if_idle(self) -> None:
        if self.prune_steps() <= 1:
            cfg = self.config
            warn_user(
                f"gmp: the cubic schedule collapses to one-shot pruning at step T_end = {self.t_end}: "
                f"no multiple of update_interval (ΔT = {cfg.update_interval}) falls between t_0 = "
                f"{self.t_start} and T_end (total_steps {cfg.total_steps}); lower update_interval to "
                f"prune gradually")

    def initial_masks(self, targets):
        self.final_targets = dict(targets)
        for n, p in self.params.items():
            targets[n] = p.numel()
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}

    def updatable_names(self):
        """Every layer that ends sparse (GMP starts dense, so not the current targets)."""
        return [n for n in self.names if self.final_targets[n] < self.params[n].numel()]

    @property
    def t_start(self) -> int:
        return int(self.config.start_fraction * self.config.total_steps)

    @property
    def t_end(self) -> int:
        return int(self.config.end_fraction * self.config.total_steps)

    def scheduled_counts(self, step: int) -> Dict[str, int]:
        out = {}
        for n, p in self.params.items():
            final = self.final_targets[n] / p.numel()
            d = cubic_density(step, final, self.t_start, self.t_end)
            out[n] = max(self.final_targets[n], min(p.numel(), int(math.ceil(d * p.numel() - 1e-9))))
        return out

    def after_step(self, step: int) -> None:
        cfg = self.config
        at_end = step == self.t_end
        if step < self.t_start or step > self.t_end or (step % cfg.update_interval and not at_end):
            return
        counts = self.scheduled_counts(step)
        mag = CRITERIA.get("magnitude")
        scores = {n: mag(self.params[n]) for n in self.names}
        if self.is_global:
            drop = {"*": sum(self.state.targets.values()) - sum(counts.values())}
        else:
            drop = {n: self.state.targets[n] - counts[n] for n in self.names}
        new = self.prune(scores, drop)
        if not self.is_global:
            self.state.targets.update(counts)
        record = self.commit(new, after_prune=new)
        self.log({"step": step, "event": "update", **record, "density": self.state.density()})

    def extra_state(self):
        return {"final_targets": dict(self.final_targets)}

    def load_extra_state(self, extra):
        self.final_targets = dict(extra["final_targets"])
