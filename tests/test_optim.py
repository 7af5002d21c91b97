"""Mask maintenance and the optimizer-state policy (DESIGN §3), with the user's own
optimizer, LR scheduler and gradient accumulation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import regrow
from regrow.optim import (byte_view, mask_gradients_, mask_parameters_, param_state_tensors,
                          preserves_zeros, zero_optimizer_state_)

B = torch.bool


def test_mask_gradients_and_parameters():
    p = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    q = nn.Parameter(torch.tensor([4.0, 5.0]))  # no grad: skipped
    p.grad = torch.tensor([0.5, 0.5, 0.5])
    m, mq = torch.tensor([True, False, True]), torch.tensor([False, True])
    mask_gradients_([p, q], [m, mq])
    assert p.grad.tolist() == [0.5, 0.0, 0.5] and q.grad is None
    mask_parameters_([p, q], [m, mq])
    assert p.tolist() == [1.0, 0.0, 3.0] and q.tolist() == [0.0, 5.0]


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: torch.optim.Adam(ps, lr=0.1, amsgrad=True),
    lambda ps: torch.optim.AdamW(ps, lr=0.1),
    lambda ps: torch.optim.RMSprop(ps, lr=0.1, momentum=0.5),
], ids=["sgd", "adam-amsgrad", "adamw", "rmsprop"])
def test_zero_optimizer_state_only_touches_selected_entries(make):
    p = nn.Parameter(torch.ones(2, 3))
    opt = make([p])
    p.grad = torch.full((2, 3), 0.5)
    opt.step()
    tensors = param_state_tensors(opt, p)
    assert tensors, "expected per-element state"
    scalars = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()
               if not (torch.is_tensor(v) and v.shape == p.shape)}
    where = torch.tensor([[True, False, False], [False, False, True]])
    zero_optimizer_state_(opt, p, where)
    for t in tensors:
        assert torch.all(t[where] == 0) and torch.all(t[~where] != 0)
    for k, v in scalars.items():  # e.g. Adam's step count is left alone
        assert torch.equal(opt.state[p][k], v) if torch.is_tensor(v) else opt.state[p][k] == v
    zero_optimizer_state_(None, p, where)  # no optimizer: nothing to do


def _static(model, opt, **cfg):
    return regrow.create("static", model, opt, density=0.5, distribution="uniform", **cfg)


def test_weight_decay_and_momentum_never_revive_inactive_weights():
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1, nesterov=True)
    m = _static(model, opt)
    mask = m.state.masks["weight"]
    for _ in range(5):
        model(torch.randn(3, 8)).sum().backward()
        dense_grad = model.weight.grad.clone()
        m.step()
        assert torch.all(model.weight.detach()[~mask] == 0)
        assert torch.all(model.weight.grad[~mask] == 0) and torch.all(model.weight.grad[mask] == dense_grad[mask])
        assert torch.all(opt.state[model.weight]["momentum_buffer"][~mask] == 0)
        opt.zero_grad()
    assert torch.all(model.bias.detach() != 0)  # the bias stays dense


def test_gradient_accumulation_two_backwards_one_step():
    torch.manual_seed(0)
    model = nn.Linear(8, 4, bias=False)
    w0 = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = _static(model, opt)
    mask = m.state.masks["weight"]
    x1, x2 = torch.randn(3, 8), torch.randn(5, 8)
    model(x1).pow(2).sum().backward()
    model(x2).pow(2).sum().backward()
    m.step()
    # by hand: d/dW Σ (xWᵀ)² = 2 (xWᵀ)ᵀ x, summed over both micro-batches, masked
    wm = w0 * mask
    g = 2 * (x1 @ wm.t()).t() @ x1 + 2 * (x2 @ wm.t()).t() @ x2
    assert torch.allclose(model.weight.detach(), (wm - 0.1 * g) * mask, atol=1e-6)
    assert m.state.step == 1


def test_user_lr_scheduler_drives_the_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 2, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    m = _static(model, opt)
    mask = m.state.masks["weight"]
    for lr in (1.0, 0.5, 0.25):
        before = model.weight.detach().clone()
        model.weight.grad = torch.ones(2, 4)
        m.step()
        sched.step()
        assert torch.equal(model.weight.detach(), (before - lr) * mask)
    assert opt.param_groups[0]["lr"] == 0.125


class _Revive(torch.optim.Optimizer):
    """A deliberately bad optimizer that moves every entry, gradient or not."""

    def __init__(self, params):
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1.0)
                self.state[p]["trace"] = torch.ones_like(p)


def test_inactive_weights_zero_after_any_optimizer_step():
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    opt = _Revive(model.parameters())
    m = _static(model, opt)
    mask = m.state.masks["weight"]
    model(torch.randn(2, 8)).sum().backward()
    m.step()
    assert torch.all(model.weight.detach()[~mask] == 0) and torch.all(model.weight.detach()[mask] != 0)
    assert torch.all(model.bias.detach() != 0)


def test_masks_multiply_through_a_byte_view_with_bool_semantics():
    # by hand: x·False = ±0.0 (sign kept, as with a bool or float mask), x·True = x
    m = torch.tensor([False, True, False, True])
    assert byte_view(m).dtype == torch.uint8 and byte_view(m).data_ptr() == m.data_ptr()
    assert byte_view(byte_view(m)).dtype == torch.uint8 and byte_view(m).tolist() == [0, 1, 0, 1]
    p = nn.Parameter(torch.tensor([-1.5, -2.0, 3.0, 4.0]))
    p.grad = torch.tensor([-0.5, 0.25, 0.5, -1.0])
    mask_gradients_([p], [m])
    mask_parameters_([p], [m])
    assert p.grad.tolist() == [0.0, 0.25, 0.0, -1.0] and p.tolist() == [0.0, -2.0, 0.0, 4.0]
    assert torch.signbit(p.grad).tolist() == [True, False, False, True]
    assert torch.signbit(p.detach()).tolist() == [True, True, False, False]


class _SGDSub(torch.optim.SGD):
    """Same update as SGD, but not the exact type: the base re-masks after its step."""


class _AdamSub(torch.optim.Adam):
    pass


class _AdamWSub(torch.optim.AdamW):
    pass


@pytest.mark.parametrize("cls,sub,kw", [
    (torch.optim.SGD, _SGDSub, dict(lr=0.3, momentum=0.9, weight_decay=0.1, nesterov=True)),
    (torch.optim.SGD, _SGDSub, dict(lr=0.3, momentum=0.5, dampening=0.2, weight_decay=0.1, maximize=True)),
    (torch.optim.SGD, _SGDSub, dict(lr=0.3)),
    (torch.optim.Adam, _AdamSub, dict(lr=0.1, weight_decay=0.1, amsgrad=True)),
    (torch.optim.AdamW, _AdamWSub, dict(lr=0.1, weight_decay=0.5)),
], ids=["sgd-nesterov", "sgd-dampening-maximize", "sgd-plain", "adam-amsgrad", "adamw"])
def test_skipping_the_parameter_mask_for_zero_preserving_optimizers_changes_no_bit(cls, sub, kw):
    assert preserves_zeros(cls([nn.Parameter(torch.ones(1))], **kw))
    assert not preserves_zeros(sub([nn.Parameter(torch.ones(1))], **kw))
    runs = []
    for opt_cls in (cls, sub):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
        opt = opt_cls(model.parameters(), **kw)
        m = regrow.create("set", model, opt, density=0.4, distribution="uniform", total_steps=12,
                          update_interval=3, alpha=0.5)
        gen = torch.Generator().manual_seed(1)
        for _ in range(12):
            model(torch.randn(4, 6, generator=gen)).pow(2).sum().backward()
            m.step()
            opt.zero_grad()
            for n, p in m.params.items():
                assert torch.all(p.detach()[~m.state.masks[n]] == 0)
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):  # bit for bit, signed zeros included
        assert torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))


def test_step_uses_masks_installed_after_earlier_steps():
    torch.manual_seed(0)
    model = nn.Linear(4, 2, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = _static(model, opt)
    model(torch.randn(3, 4)).sum().backward()
    m.step()  # builds the step's cached operands
    opt.zero_grad()
    new = ~m.state.masks["weight"]
    m.commit({"weight": new}, grow_init="keep")
    model.weight.grad = torch.ones(2, 4)
    m.step()
    assert torch.equal(model.weight.grad, new.float())
    assert torch.all(model.weight.detach()[~new] == 0)
