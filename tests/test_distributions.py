"""Layer-wise densities: uniform, ERK (RigL §3) and global, checked by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import regrow
from regrow.distributions import (
    check_density, erk_counts, erk_densities, global_counts, layer_counts, uniform_counts,
)

# conv [4, 2, 3, 3]: 72 weights, ERK raw (4+2+3+3)/72 = 1/6
# fc1  [8, 64]:     512 weights, raw (8+64)/512 = 0.140625
# fc2  [2, 8]:       16 weights, raw (2+8)/16 = 0.625          total 600
SHAPES = {"conv.weight": (4, 2, 3, 3), "fc1.weight": (8, 64), "fc2.weight": (2, 8)}


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc1 = nn.Linear(64, 8)
        self.fc2 = nn.Linear(8, 2)


def test_erk_by_hand_no_dense_layer():
    # density 0.2: budget 120, Σ raw·numel = 12 + 72 + 10 = 94, ε = 120/94
    eps = 120 / 94
    d = erk_densities(SHAPES, 0.2)
    assert d == pytest.approx({"conv.weight": eps / 6, "fc1.weight": eps * 0.140625, "fc2.weight": eps * 0.625})
    # ideal counts 15.319, 91.915, 12.766 (Σ 120): floors 15, 91, 12, the 2 left go to the
    # largest remainders (fc1 .915, fc2 .766)
    assert erk_counts(SHAPES, 0.2) == {"conv.weight": 15, "fc1.weight": 92, "fc2.weight": 13}


def test_erk_by_hand_layer_forced_dense_and_rescaled():
    # density 0.3: budget 180, ε = 180/94 makes fc2 1.197 > 1 -> dense (16 weights);
    # the rest re-solved: ε' = (180 − 16)/(12 + 72) = 164/84
    eps = 164 / 84
    d = erk_densities(SHAPES, 0.3)
    assert d == pytest.approx({"conv.weight": eps / 6, "fc1.weight": eps * 0.140625, "fc2.weight": 1.0})
    # ideal 23.429 + 140.571 + 16 = 180: floors 23, 140, the last one to fc1 (.571 > .429)
    counts = erk_counts(SHAPES, 0.3)
    assert counts == {"conv.weight": 23, "fc1.weight": 141, "fc2.weight": 16}
    assert sum(counts.values()) == 180
    # the same numbers come out of a method built on a model with these shapes
    m = regrow.create("static", Toy(), None, density=0.3, distribution="erk")
    assert m.state.targets == counts
    assert [int(x.sum()) for x in m.state.masks.values()] == [23, 141, 16]


def test_erk_total_exact_for_many_densities():
    shapes = {"a": (64, 3, 3, 3), "b": (128, 64, 3, 3), "c": (10, 128), "d": (7, 5)}
    total = sum(int(torch.tensor(s).prod()) for s in shapes.values())
    for density in (0.01, 0.05, 0.1, 0.2, 0.5, 0.9, 1.0):
        c = erk_counts(shapes, density)
        assert sum(c.values()) == round(density * total)
        assert all(1 <= c[k] <= int(torch.tensor(s).prod()) for k, s in shapes.items())


def test_uniform_with_dense_first_last():
    c = uniform_counts(SHAPES, 0.2, dense=("conv.weight", "fc2.weight"))
    assert c == {"conv.weight": 72, "fc1.weight": round(0.2 * 512), "fc2.weight": 16}
    assert uniform_counts(SHAPES, 0.2) == {"conv.weight": 14, "fc1.weight": 102, "fc2.weight": 3}
    m = regrow.create("static", Toy(), None, density=0.2, distribution="uniform", dense_first_last=True)
    assert m.state.targets == c


def test_global_total_exact():
    for density in (0.013, 0.1, 0.37, 1.0):
        c = global_counts(SHAPES, density)
        assert sum(c.values()) == round(density * 600)
    torch.manual_seed(0)
    m = regrow.create("static", Toy(), None, density=0.1, distribution="global")
    assert sum(int(x.sum()) for x in m.state.masks.values()) == 60
    assert sum(m.state.targets.values()) == 60


def test_distribution_errors():
    for bad in (0, 0.0, -0.5, 1.01, True, "0.5", None):
        with pytest.raises(ValueError, match=r"density must be a number in \(0, 1\]"):
            check_density(bad)
    with pytest.raises(ValueError, match="unknown distribution 'normal'; allowed: erk, global, uniform"):
        layer_counts("normal", SHAPES, 0.5)
    assert layer_counts("uniform", SHAPES, 1.0) == {"conv.weight": 72, "fc1.weight": 512, "fc2.weight": 16}


def test_global_keeps_dense_layers_whole_with_an_exact_total():
    shapes = {"a": (10, 10), "b": (100, 10), "c": (10, 4)}
    counts = global_counts(shapes, 0.2, dense=["a", "c"])
    assert counts["a"] == 100 and counts["c"] == 40
    assert sum(counts.values()) == round(0.2 * 1140)
    with pytest.raises(ValueError, match="too low to keep .* dense under the global distribution"):
        global_counts(shapes, 0.1, dense=["a", "c"])
