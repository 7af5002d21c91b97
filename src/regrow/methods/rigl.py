"""RigL (Evci et al. 2020, "Rigging the Lottery"): every ΔT steps until T_end drop the
⌊α_t·|Θ_K|⌋ smallest-|w| active weights, α_t = α/2·(1 + cos(π t / T_end)) (Eq. 1), and
grow the inactive weights with the largest dense gradient |∂L/∂w| (Eq. 2), new
weights 0. The gradient is the unmasked one of the update step (synchronised by DDP)."""
from __future__ import annotations

from typing import Dict

import torch

from ..criteria import CRITERIA
from .base import METHODS, DropGrowMethod


@METHODS.register("rigl")
class RigL(DropGrowMethod):
    """Every ΔT steps drop the α_t smallest-|w| active weights and grow the inactive ones
    with the largest dense |∂L/∂w|, new weights 0 (Evci et al. 2020)."""

    name = "rigl"

    def grow_scores(self, step: int) -> Dict[str, torch.Tensor]:
        grad = CRITERIA.get("gradient")
        out = {}
        for n in self.names:
            p = self.params[n]
            # no gradient (layer unused this step): every candidate scores 0, ties by index
            out[n] = grad(p, p.grad) if p.grad is not None else torch.zeros_like(p)
        return out

    def step_flops(self, zeta_sparse: float, zeta_dense: float) -> float:
        """RigL §4.4 / IEE appendix §3: 3·ζ_P, and 2·ζ_P + ζ_D at an update step (the dense
        gradient of every weight). Averaged over ΔT' plain steps and one update step this is
        (3·ζ_P·ΔT' + 2·ζ_P + ζ_D)/(ΔT' + 1), with ΔT' = update_interval − 1."""
        if self.update_due(self.state.step):
            return 2.0 * zeta_sparse + zeta_dense
        return 3.0 * zeta_sparse
