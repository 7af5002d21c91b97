"""RigL (Evci et al. 2020, "Rigging the Lottery"): every ΔT steps until T_end drop the
⌊α_t·|Θ_K|⌋ smallest-|w| active weights, α_t = α/2·(1 + cos(π t / T_end)) (Eq. 1), and
grow the inactive weights with the largest dense gradient |∂L/∂w| (Eq. 2), new
weights 0. The gradient is the unmasked one of the update step (synchronised by DDP)."""
from __future__ import annotations

from typing import Dict

import torch

from .base import METHODS, DropGrowMethod


@METHODS.register("rigl")
class RigL(DropGrowMethod):
    needs_dense_grad = True

    def grow_scores(self, step: int) -> Dict[str, torch.Tensor]:
        return self.dense_gradient_scores()
