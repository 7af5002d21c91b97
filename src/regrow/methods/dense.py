"""Dense training: the reference every sparse method is measured against."""
from __future__ import annotations

from typing import Dict

import torch

from .base import METHODS, SparseMethod


@METHODS.register("dense")
class Dense(SparseMethod):
    """No sparsity: masks are all ones and the step is the plain optimizer step."""

    structures = ("unstructured",)

    def validate_config(self) -> None:
        self.config.density = 1.0
        self.config.structure = "unstructured"
        super().validate_config()

    def initial_targets(self) -> Dict[str, int]:
        return {n: p.numel() for n, p in self.params.items()}

    def initial_masks(self, targets):
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}

    def mask_step_gradients(self) -> None:
        return None   # every mask is all ones: nothing to zero

    def restore_after_update(self) -> None:
        return None
