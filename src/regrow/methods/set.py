"""SET (Mocanu et al. 2018, "Scalable training of artificial neural networks with
adaptive sparse connectivity"): every ΔT steps drop the ⌊α_t·|Θ_K|⌋ smallest-|w|
active weights of each layer and grow as many inactive ones uniformly at random
(scores U(0,1) from the method's seeded generator), new weights 0.

Departure from Mocanu et al.: SET here runs RigL's protocol, as RigL's and IEE's
baselines do (Evci et al. 2020, §4): the drop fraction follows the cosine schedule α_t
up to T_end and grown weights start at 0. Mocanu's SET removes a constant fraction ζ
every epoch until the end and re-initialises grown weights at random; for that, set
``fraction_schedule="constant"``, ``end_fraction=1`` and ``update_interval`` to an
epoch (grown weights still start at 0)."""
from __future__ import annotations

from typing import Dict

import torch

from ..criteria import CRITERIA
from .base import METHODS, DropGrowMethod


@METHODS.register("set")
class SET(DropGrowMethod):

    def grow_scores(self, step: int) -> Dict[str, torch.Tensor]:
        rnd = CRITERIA.get("random")
        return {n: rnd(self.params[n], None, self.generator) for n in self.names}
