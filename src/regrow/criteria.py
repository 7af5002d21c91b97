"""Importance criteria: stateless ``(weight, grad, generator) -> scores``.

Higher score = more important. Any state a method needs across steps (e.g. an
accumulated Taylor score) lives in ``SparseState``, never here.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .registry import Registry

Criterion = Callable[[torch.Tensor, Optional[torch.Tensor], Optional[torch.Generator]], torch.Tensor]
CRITERIA: "Registry[Criterion]" = Registry("criterion")


def _need_grad(name: str, grad: Optional[torch.Tensor]) -> torch.Tensor:
    if grad is None:
        raise ValueError(f"criterion '{name}' needs a gradient, but none is available")
    return grad


@CRITERIA.register("magnitude")
def magnitude(weight: torch.Tensor, grad=None, generator=None) -> torch.Tensor:
    """|w| (Han et al. 2015; IEE's default for unstructured and N:M sparsity)."""
    return weight.detach().abs()


@CRITERIA.register("gradient")
def gradient(weight: torch.Tensor, grad=None, generator=None) -> torch.Tensor:
    """|∂L/∂w| (RigL's growth score, Evci et al. 2020, Eq. 2)."""
    return _need_grad("gradient", grad).detach().abs()


@CRITERIA.register("taylor")
def taylor(weight: torch.Tensor, grad=None, generator=None) -> torch.Tensor:
    """First-order Taylor |g ⊙ w| (Molchanov et al. 2019; SNIP's connection sensitivity)."""
    return (_need_grad("taylor", grad).detach() * weight.detach()).abs()


@CRITERIA.register("random")
def random(weight: torch.Tensor, grad=None, generator=None) -> torch.Tensor:
    """U(0, 1) per weight from the given generator (SET's growth; a control criterion).

    Drawn on the generator's device (CPU by default) and moved, so every rank and
    every device draws the same numbers from the same seed.
    """
    if generator is None:
        raise ValueError("criterion 'random' needs a torch.Generator (pass generator=...)")
    return torch.rand(weight.shape, generator=generator, device=generator.device).to(weight.device)
