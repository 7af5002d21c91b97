"""Layer-wise density distributions: ``shapes + density -> per-layer active counts``.

* ``uniform``: every layer at the target density (optionally the first and last
  sparse layer dense, RigL's convention).
* ``erk``: Erdős–Rényi-Kernel (Evci et al. 2020, RigL §3; Mocanu et al. 2018):
  density_l ∝ ε · (Σ_i shape_l[i]) / (Π_i shape_l[i]), i.e.
  (n_in + n_out + k_h + k_w) / (n_in · n_out · k_h · k_w) for a conv. Layers whose
  density would exceed 1 are made dense and ε is re-solved over the rest so the
  total number of active weights is exactly round(density · total).
* ``global``: one ranking across all layers (IEE appendix §5.1 "Non-Uniform");
  the per-layer counts emerge from the scores, only the total is fixed. The
  initial split handed out here is the uniform one.

All functions return integer counts; the total is exact for ``erk`` and ``global``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Sequence

from .registry import Registry

DISTRIBUTIONS: "Registry[Callable[..., Dict[str, int]]]" = Registry("distribution")


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(int(s) for s in shape))


def check_density(density: float, field: str = "density") -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not (0 < density <= 1):
        raise ValueError(f"{field} must be a number in (0, 1], got {density!r}")
    return float(density)


def _largest_remainder(ideal: Dict[str, float], total: int, caps: Dict[str, int]) -> Dict[str, int]:
    """Round non-negative reals to integers summing to ``total`` (each within [1, cap])."""
    counts = {k: min(caps[k], max(1, int(math.floor(v)))) for k, v in ideal.items()}
    short = total - sum(counts.values())
    order = sorted(ideal, key=lambda k: (-(ideal[k] - math.floor(ideal[k])), list(ideal).index(k)))
    while short != 0 and order:
        progressed = False
        for k in order:
            if short > 0 and counts[k] < caps[k]:
                counts[k] += 1
                short -= 1
                progressed = True
            elif short < 0 and counts[k] > 1:
                counts[k] -= 1
                short += 1
                progressed = True
            if short == 0:
                break
        if not progressed:
            break
    return counts


@DISTRIBUTIONS.register("uniform")
def uniform_counts(
    shapes: Dict[str, Sequence[int]], density: float, dense: Iterable[str] = ()
) -> Dict[str, int]:
    check_density(density)
    dense = set(dense)
    return {
        k: _numel(s) if k in dense else max(1, int(round(density * _numel(s))))
        for k, s in shapes.items()
    }


def erk_densities(
    shapes: Dict[str, Sequence[int]], density: float, dense: Iterable[str] = (), power: float = 1.0
) -> Dict[str, float]:
    """Real-valued ERK densities (before rounding to counts)."""
    check_density(density)
    numel = {k: _numel(s) for k, s in shapes.items()}
    raw = {k: (sum(int(d) for d in s) / numel[k]) ** power for k, s in shapes.items()}
    budget = density * sum(numel.values())
    dense_set = set(dense)
    eps = 0.0
    while True:
        budget_sparse = budget - sum(numel[k] for k in dense_set)
        denom = sum(raw[k] * numel[k] for k in shapes if k not in dense_set)
        if denom <= 0:
            break
        eps = budget_sparse / denom
        over = [k for k in shapes if k not in dense_set and eps * raw[k] > 1]
        if not over:
            break
        dense_set.update(over)
    out = {}
    for k in shapes:
        out[k] = 1.0 if k in dense_set else eps * raw[k]
    return out


@DISTRIBUTIONS.register("erk")
def erk_counts(
    shapes: Dict[str, Sequence[int]], density: float, dense: Iterable[str] = ()
) -> Dict[str, int]:
    d = erk_densities(shapes, density, dense)
    numel = {k: _numel(s) for k, s in shapes.items()}
    total = int(round(density * sum(numel.values())))
    ideal = {k: d[k] * numel[k] for k in shapes}
    return _largest_remainder(ideal, max(total, len(shapes)), numel)


@DISTRIBUTIONS.register("global")
def global_counts(
    shapes: Dict[str, Sequence[int]], density: float, dense: Iterable[str] = ()
) -> Dict[str, int]:
    """Initial split for the global distribution, rounded so the total is exact: the
    ``dense`` layers whole, the rest of round(density · total) spread uniformly over the
    other layers (as ERK, the total counts the dense layers too)."""
    check_density(density)
    numel = {k: _numel(s) for k, s in shapes.items()}
    dense = set(dense) & set(shapes)
    total = max(int(round(density * sum(numel.values()))), len(shapes))
    rest = total - sum(numel[k] for k in dense)
    sparse = sum(numel[k] for k in shapes if k not in dense)
    if sparse and rest < len(shapes) - len(dense):
        raise ValueError(
            f"density {density} is too low to keep {sorted(dense)} dense under the global "
            f"distribution: they alone hold {total - rest} of the {total} active weights; raise "
            f"density or set dense_first_last=False")
    ideal = {k: float(numel[k]) if k in dense else rest * numel[k] / sparse for k in shapes}
    return _largest_remainder(ideal, total, numel)


def layer_counts(
    kind: str, shapes: Dict[str, Sequence[int]], density: float, dense: Iterable[str] = ()
) -> Dict[str, int]:
    """Per-layer active counts of the registered distribution ``kind``."""
    return DISTRIBUTIONS.get(kind)(shapes, density, dense)
