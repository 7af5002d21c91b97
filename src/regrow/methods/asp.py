"""ASP, NVIDIA's Automatic SParsity recipe (Mishra et al. 2021, "Accelerating Sparse
Deep Neural Networks", §3): on a pretrained dense model compute one-shot N:M masks
(2:4 for Ampere Sparse Tensor Cores) keeping in every block of M consecutive weights
along the input dimension the N with the largest |w|, then fine-tune with the mask
fixed. The baseline of IEE appendix §2, Table 1.

Build it after the pretrained weights are loaded: the mask is chosen from the weights
at construction. ``criterion`` may name any registered criterion that needs no
gradient (magnitude, the paper's choice; random as a control) or, with gradients in
``.grad`` at construction, a gradient-based one.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..criteria import CRITERIA
from .base import METHODS, SparseMethod, SparsityConfig


@dataclass
class ASPConfig(SparsityConfig):
    """structure is ``nm`` (n:m, 2:4 by default); criterion scores the weights once."""

    structure: str = "nm"
    criterion: str = "magnitude"


@METHODS.register("asp")
class ASP(SparseMethod):
    Config = ASPConfig
    structures = ("nm",)

    def initial_masks(self, targets):
        crit = CRITERIA.get(self.config.criterion)
        scores = {}
        for n, p in self.params.items():
            try:
                scores[n] = crit(p, p.grad, self.generator)
            except ValueError as e:
                raise ValueError(f"asp criterion '{self.config.criterion}' on '{n}': {e}; "
                                 "use criterion='magnitude'") from None
        return self.select(scores, targets)
