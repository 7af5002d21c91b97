"""SNIP (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity"): keep the weights with the largest connection sensitivity
s_j = |g_j · w_j| (Eq. 6, normalisation does not change the ranking), summed over
a few batches at initialisation; then train the mask as a static one.

Departure from Lee et al.: SNIP ranks all weights globally; here the ranking is per
layer at the distribution's counts (ERK by default, as the IEE and RigL baselines
compare at equal per-layer densities). ``distribution="global"`` gives SNIP's own
global ranking."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable

import torch

from ..criteria import CRITERIA
from .base import METHODS, SparseMethod, SparsityConfig


@dataclass
class SNIPConfig(SparsityConfig):
    """calibration_batches: how many batches of ``calibrate`` to sum the scores over."""

    calibration_batches: int = 4


@METHODS.register("snip")
class SNIP(SparseMethod):
    Config = SNIPConfig
    needs_data = True

    def initial_masks(self, targets):
        self._calibrated = False
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}

    def calibrate(self, batches: Iterable, loss_fn: Callable[[torch.nn.Module, object], torch.Tensor]) -> None:
        """Score with ``loss_fn(model, batch)`` over up to ``calibration_batches`` batches."""
        if self.config.calibration_batches <= 0:
            raise ValueError(f"calibration_batches must be positive, got {self.config.calibration_batches}")
        scores: Dict[str, torch.Tensor] = {n: torch.zeros_like(p) for n, p in self.params.items()}
        # scoring must not leave gradients behind on any parameter (biases and BN too)
        every = dict(self.model.named_parameters())
        saved = {n: None if p.grad is None else p.grad.clone() for n, p in every.items()}
        seen = 0
        for batch in batches:
            if seen >= self.config.calibration_batches:
                break
            for p in every.values():
                p.grad = None
            loss_fn(self.model, batch).backward()
            for n, p in self.params.items():
                if p.grad is not None:
                    scores[n] += CRITERIA.get("taylor")(p, p.grad)
            seen += 1
        if seen == 0:
            raise ValueError("SNIP calibration got no batches; pass an iterable of training batches")
        for n, p in every.items():
            p.grad = saved[n]
        self.state.masks = self.select(scores, self.state.targets)
        self.apply_masks()
        self._calibrated = True

    def mask_step_gradients(self) -> None:
        if not self._calibrated:
            raise ValueError("SNIP chooses its mask from data: call calibrate(batches, loss_fn) before "
                             "the first optimizer step")
        super().mask_step_gradients()

    def extra_state(self):
        return {"calibrated": self._calibrated}

    def load_extra_state(self, extra):
        self._calibrated = bool(extra.get("calibrated", False))
