"""RigL (Evci et al. 2020, "Rigging the Lottery"): every ΔT steps until T_end drop the
⌊α_t·|Θ_K|⌋ smallest-|w| active weights, α_t = α/2·(1 + cos(π t / T_end)) (Eq. 1), and
grow the inactive weights with the largest dense gradient |∂L/∂w| (Eq. 2), new
weights 0. The gradient is the unmasked one of the update step (synchronised by DDP).

Departures from Evci et al.: at an update iteration RigL's reference code only changes
the mask; here that step's optimizer update is taken too, with the old mask (the update
then runs after it), so every iteration trains. RigL's own ``uniform`` keeps only the
first layer dense; ``dense_first_last`` here keeps the first and the last."""
from __future__ import annotations

from typing import Dict

import torch

from .base import METHODS, DropGrowMethod


@METHODS.register("rigl")
class RigL(DropGrowMethod):
    needs_dense_grad = True

    def grow_scores(self, step: int) -> Dict[str, torch.Tensor]:
        return self.dense_gradient_scores()
