"""Schedules are pure functions of an explicit step; values checked by hand."""
from __future__ import annotations

import math

import pytest

from regrow.schedules import (
    constant_fraction, cosine_fraction, cubic_density, exponential_ratio, sigmoid_mask_lr,
    sigmoid_ramp, sigmoid_sparsity, update_fraction,
)


def test_cosine_fraction_rigl():
    # α_t = α/2·(1 + cos(π t / T_end)), 0 from T_end on
    assert cosine_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert cosine_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert cosine_fraction(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.sqrt(0.5)))
    assert cosine_fraction(100, 0.3, 100) == 0.0 and cosine_fraction(130, 0.3, 100) == 0.0


def test_constant_fraction_and_dispatch():
    assert constant_fraction(99, 0.3, 100) == 0.3 and constant_fraction(100, 0.3, 100) == 0.0
    assert update_fraction("constant", 10, 0.2, 100) == 0.2
    assert update_fraction("cosine", 50, 0.2, 100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown fraction_schedule 'step'; allowed: constant, cosine"):
        update_fraction("step", 1, 0.3, 100)


def test_cubic_gmp():
    # s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t_end − t0))³ with s_i = 0, s_f = 0.9
    assert cubic_density(0, 0.1, 0, 100) == pytest.approx(1.0)
    assert cubic_density(50, 0.1, 0, 100) == pytest.approx(1 - (0.9 - 0.9 * 0.125))  # 0.2125
    assert cubic_density(60, 0.1, 20, 100) == pytest.approx(0.2125)  # t0 shifts it
    assert cubic_density(100, 0.1, 0, 100) == pytest.approx(0.1)
    assert cubic_density(150, 0.1, 0, 100) == pytest.approx(0.1)  # clamped
    assert cubic_density(-5, 0.1, 0, 100) == pytest.approx(1.0)
    assert cubic_density(50, 0.2, 0, 100, initial_density=0.6) == pytest.approx(1 - (0.8 - 0.4 * 0.125))


def test_sigmoid_optg():
    # P_k = P / (1 + e^(−a(k − τ/2))), a = 0.5
    assert sigmoid_sparsity(5, 0.9, 10) == pytest.approx(0.45)
    assert sigmoid_sparsity(0, 0.9, 10) == pytest.approx(0.9 / (1 + math.exp(2.5)))  # 0.068272
    assert sigmoid_sparsity(0, 0.9, 10) == pytest.approx(0.0682724, abs=1e-7)
    assert sigmoid_ramp(7, 10, a=1.0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert sigmoid_mask_lr(5, 0.1, 10) == pytest.approx(0.05)


def test_exponential_halp():
    # r_k = r^(k/n): each step keeps the same fraction of what is left
    assert exponential_ratio(0, 4, 0.0625) == 1.0
    assert exponential_ratio(1, 4, 0.0625) == pytest.approx(0.5)
    assert exponential_ratio(2, 4, 0.0625) == pytest.approx(0.25)
    assert exponential_ratio(4, 4, 0.0625) == pytest.approx(0.0625)
    assert exponential_ratio(9, 4, 0.0625) == pytest.approx(0.0625)
    assert exponential_ratio(3, 0, 0.3) == 0.3
