"""HALP, hardware-aware latency pruning (Shen et al. 2022, "Structural Pruning via
Latency-Saliency Knapsack", NeurIPS).

Starting from the (pretrained) model it is given, every ``prune_interval`` steps for
``prune_steps`` steps HALP accumulates Taylor importance on BatchNorm,
I_j = |g_γj·γ_j + g_βj·β_j| (Eq. 2 of the IEE appendix), then keeps the channels that
maximise Σ I subject to the latency budget of that step,

    max Σ_l Σ_{j≤p^l} I_j^l   s.t.   Σ_l Σ_{j≤p^l} R_j^l ≤ Ψ_k,
    R_j^l = T^l(p^{l−1}, j) − T^l(p^{l−1}, j − 1)                    (appendix Eq. 1)

(channels of a layer taken in importance order; solved exactly by
:mod:`regrow.knapsack`), with the exponential schedule Ψ_k = L_dense · r^{k/n}
(:func:`regrow.schedules.exponential_ratio`), r being the final latency ratio. Pruned
channels never come back; training in between and after the last step fine-tunes.
With ``slim_after`` the network is physically slimmed in place after the last step.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schedules import exponential_ratio
from .channel import ChannelConfig, ChannelMethod
from .base import METHODS


@dataclass
class HALPConfig(ChannelConfig):
    """prune_steps: number of pruning steps n; prune_interval: optimizer steps between
    them (importance is accumulated over each interval); slim_after: slim the model in
    place after the last pruning step (the rest of training runs on the smaller net)."""

    prune_steps: int = 10
    prune_interval: int = 100
    slim_after: bool = False


@METHODS.register("halp")
class HALP(ChannelMethod):
    Config = HALPConfig

    def validate_config(self) -> None:
        super().validate_config()
        cfg = self.config
        for f in ("prune_steps", "prune_interval"):
            v = getattr(cfg, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f} must be a positive integer, got {v!r}")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.config
        # checked here, not in validate_config: a harness may validate with a placeholder total_steps
        if cfg.total_steps is not None and cfg.prune_steps * cfg.prune_interval > cfg.total_steps:
            raise ValueError(
                f"prune_steps × prune_interval = {cfg.prune_steps * cfg.prune_interval} exceeds "
                f"total_steps {cfg.total_steps}: pruning would not finish"
            )

    @property
    def last_prune_step(self) -> int:
        return self.config.prune_steps * self.config.prune_interval

    def target(self, k: int) -> float:
        """Ψ_k: the budget after pruning step k of n (exponential schedule)."""
        return self.dense_cost * exponential_ratio(k, self.config.prune_steps, self.budget / self.dense_cost)

    def before_step(self, step: int) -> None:
        if step <= self.last_prune_step and not self.slimmed:
            self.accumulate_importance()

    def after_step(self, step: int) -> None:
        cfg = self.config
        if self.slimmed or step > self.last_prune_step or step % cfg.prune_interval:
            return
        k = step // cfg.prune_interval
        psi = self.target(k)
        active = self.channels
        none = {g: c & False for g, c in active.items()}
        lo = {g.name: cfg.min_channels for g in self.groups}
        new = self.knapsack(self.state.buffers["importance"], active, none, psi, lo)
        record = self.commit_channels(new, after_prune=new)
        self.reset_importance()
        self.log({"step": step, "event": "prune", "prune_step": k, "target": psi, **record,
                  **self.structure_record()})
        if k == cfg.prune_steps and cfg.slim_after:
            self.slim_now()
