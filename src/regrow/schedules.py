"""Schedules: pure functions of an explicit step.

Nothing here keeps state; callers pass the step (or epoch) they are at.
"""
from __future__ import annotations

import math
from typing import Callable

from .registry import Registry

FRACTION_SCHEDULES: "Registry[Callable[[int, float, int], float]]" = Registry("fraction_schedule")


@FRACTION_SCHEDULES.register("constant")
def constant_fraction(step: int, alpha: float, t_end: int) -> float:
    """α while ``step < t_end``, then 0 (SET, Mocanu et al. 2018)."""
    return alpha if step < t_end else 0.0


@FRACTION_SCHEDULES.register("cosine")
def cosine_fraction(step: int, alpha: float, t_end: int) -> float:
    """α_t = α/2 · (1 + cos(π·t / T_end)) for t < T_end, else 0 (RigL, Evci et al. 2020, Eq. 1)."""
    if step >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


def update_fraction(kind: str, step: int, alpha: float, t_end: int) -> float:
    """α_t of the registered fraction schedule ``kind`` (ValueError naming the allowed ones)."""
    return FRACTION_SCHEDULES.get(kind)(step, alpha, t_end)


def cubic_density(step: int, final_density: float, t_start: int, t_end: int,
                  initial_density: float = 1.0) -> float:
    """GMP (Zhu & Gupta 2017, Eq. 1) written for density d = 1 − s:

    s_t = s_f + (s_i − s_f)·(1 − (t − t_0)/(t_end − t_0))³, clamped to [t_0, t_end].
    """
    if t_end <= t_start:
        return final_density
    progress = min(1.0, max(0.0, (step - t_start) / (t_end - t_start)))
    s_i, s_f = 1.0 - initial_density, 1.0 - final_density
    s = s_f + (s_i - s_f) * (1.0 - progress) ** 3
    return 1.0 - s


def sigmoid_ramp(k: float, tau: float, a: float = 0.5) -> float:
    """1 / (1 + e^(−a(k − τ/2))) — OptG's shared ramp (Zhang et al. 2022, Eq. 16–17)."""
    return 1.0 / (1.0 + math.exp(-a * (k - tau / 2.0)))


def sigmoid_sparsity(k: float, final_sparsity: float, tau: float, a: float = 0.5) -> float:
    """OptG's P_k = P / (1 + e^(−a(k − τ/2))) at epoch k of τ (Eq. 16)."""
    return final_sparsity * sigmoid_ramp(k, tau, a)


def sigmoid_mask_lr(k: float, weight_lr: float, tau: float, a: float = 0.5) -> float:
    """OptG's mask learning rate η_m,k = η_w,k / (1 + e^(−a(k − τ/2))) (Eq. 17)."""
    return weight_lr * sigmoid_ramp(k, tau, a)


def exponential_ratio(step: int, n_steps: int, final_ratio: float) -> float:
    """HALP's exponential schedule (Shen et al. 2022, §4): the kept-resource ratio after
    pruning step ``step`` of ``n_steps`` is r_k = final_ratio^(k / n_steps), so each step
    removes the same fraction of what is left and step n lands exactly on the target.
    """
    if n_steps <= 0:
        return final_ratio
    k = min(max(step, 0), n_steps)
    return final_ratio ** (k / n_steps)
