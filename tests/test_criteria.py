"""Criteria are stateless functions of (weight, grad, generator)."""
from __future__ import annotations

import pytest
import torch

from regrow.criteria import CRITERIA

W = torch.tensor([[-2.0, 0.5], [0.0, 3.0]])
G = torch.tensor([[0.5, -4.0], [1.0, -0.25]])


def test_magnitude_gradient_taylor_by_hand():
    assert torch.equal(CRITERIA.get("magnitude")(W), torch.tensor([[2.0, 0.5], [0.0, 3.0]]))
    assert torch.equal(CRITERIA.get("gradient")(W, G), torch.tensor([[0.5, 4.0], [1.0, 0.25]]))
    assert torch.equal(CRITERIA.get("taylor")(W, G), torch.tensor([[1.0, 2.0], [0.0, 0.75]]))


def test_criteria_do_not_touch_inputs_or_autograd():
    w = W.clone().requires_grad_(True)
    s = CRITERIA.get("taylor")(w, G)
    assert not s.requires_grad and torch.equal(w.detach(), W)


def test_random_is_seeded_by_the_generator_passed_in():
    r = CRITERIA.get("random")
    a = r(W, None, torch.Generator().manual_seed(5))
    b = r(W, None, torch.Generator().manual_seed(5))
    c = r(W, None, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == W.shape and bool(((a >= 0) & (a < 1)).all())
    g = torch.Generator().manual_seed(5)
    assert torch.equal(a, torch.rand(W.shape, generator=g))


def test_criterion_errors():
    with pytest.raises(ValueError, match="criterion 'gradient' needs a gradient"):
        CRITERIA.get("gradient")(W, None)
    with pytest.raises(ValueError, match="criterion 'taylor' needs a gradient"):
        CRITERIA.get("taylor")(W)
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        CRITERIA.get("random")(W)
    with pytest.raises(ValueError, match="unknown criterion 'fisher'; allowed: .*gradient.*magnitude.*random.*taylor"):
        CRITERIA.get("fisher")
