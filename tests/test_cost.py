"""cost.py: per-layer forward FLOPs by hand, inference FLOPs of sparse models, and the
training-FLOPs ledger against the closed forms of IEE appendix §3 and RigL §4.4."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import regrow
from regrow.cost import FlopsLedger, inference_flops, layer_flops


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)      # 8x8 -> 4x4
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=2)        # 4x4 -> 4x4
        self.fc = nn.Linear(64, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.dw(x))
        return self.out(torch.relu(self.fc(x.flatten(1))))


# by hand: 2 · (k·k·c_in/groups) · c_out · H_out·W_out, 2 · in · out
CONV = 2 * (3 * 3 * 2) * 4 * 16
DW = 2 * (3 * 3 * 2) * 4 * 16
FC = 2 * 64 * 8
OUT = 2 * 8 * 4
ZD = CONV + DW + FC + OUT


def test_layer_flops_by_hand_and_no_side_effects():
    torch.manual_seed(0)
    net = Net().train()
    stats = net.bn.running_mean.clone()
    assert layer_flops(net, (2, 8, 8)) == {"conv.weight": CONV, "dw.weight": DW, "fc.weight": FC, "out.weight": OUT}
    assert torch.equal(net.bn.running_mean, stats) and net.training and net.bn.training


def test_linear_on_tokens_and_conv1d():
    seq = nn.Sequential(nn.Linear(6, 5))
    assert layer_flops(seq, (7, 6)) == {"0.weight": 2 * 6 * 5 * 7}          # 7 tokens
    c1 = nn.Sequential(nn.Conv1d(3, 4, 5))
    assert layer_flops(c1, (3, 20)) == {"0.weight": 2 * 3 * 5 * 4 * 16}
    with pytest.raises(ValueError, match="input_shape"):
        layer_flops(c1, (0, 20))


def _method(name, net=None, **cfg):
    torch.manual_seed(0)
    net = net or Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    return net, opt, regrow.create(name, net, opt, **cfg)


def test_inference_flops_scale_sparse_layers_by_density():
    net, _, m = _method("static", density=0.25, distribution="uniform", exclude=("out.weight",))
    dens = {n: int(k.sum()) / k.numel() for n, k in m.state.masks.items()}
    expect = CONV * dens["conv.weight"] + DW * dens["dw.weight"] + FC * dens["fc.weight"] + OUT
    assert math.isclose(inference_flops(net, m, (2, 8, 8)), expect)
    assert inference_flops(net, None, (2, 8, 8)) == ZD


def _run(net, opt, m, steps, bs=4, ledger_kw=None):
    ledger = FlopsLedger(net, m, (2, 8, 8), **(ledger_kw or {}))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(bs, 2, 8, 8, generator=g), torch.randint(0, 4, (bs,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        m.step()
        ledger.record_step(bs)
    return ledger


def test_dense_and_static_closed_forms():
    led = _run(*_method("dense"), steps=3)
    assert led.total == 3 * ZD * 12 and led.relative == 1.0
    net, opt, m = _method("static", density=0.2)
    led = _run(net, opt, m, steps=3)
    zp = led.inference_flops()
    assert math.isclose(led.total, 3 * zp * 12) and math.isclose(led.relative, zp / ZD)
    assert led.dense_inference_flops() == ZD


def test_rigl_closed_form():
    # ΔT = 4 -> 3 plain steps + 1 update step per period: (3ζ_P·3 + 2ζ_P + ζ_D)/4 over the
    # first 28 steps (updates at 4, 8, ..., 28 < T_end = 30), then 3ζ_P for the last 12
    net, opt, m = _method("rigl", density=0.2, update_interval=4, total_steps=40)
    led = _run(net, opt, m, steps=40, bs=1)
    zp = led.inference_flops()
    dt = 3
    closed = 28 * (3 * zp * dt + 2 * zp + ZD) / (dt + 1) + 12 * 3 * zp
    assert math.isclose(led.total, closed, rel_tol=1e-12)


def test_iee_closed_form_h_j_q_equal_ending_at_three_quarters():
    # α = 0 keeps ζ_P fixed so the appendix formula (11·ζ_P + ζ_D)/4 holds exactly
    net, opt, m = _method("iee", density=0.2, H=2, J=2, Q=2, total_steps=24, alpha=0.0)
    led = _run(net, opt, m, steps=24, bs=2)
    zp = led.inference_flops()
    assert math.isclose(led.total / 48, (11 * zp + ZD) / 4, rel_tol=1e-12)
    assert math.isclose(led.relative, (11 * zp + ZD) / 4 / (3 * ZD), rel_tol=1e-12)
    # masked dense kernels compute 3·ζ_D per sample whatever the stage
    assert math.isclose(led.executed_relative, 1.0, rel_tol=1e-12)
    # physically, Reactivate & Explore runs 3·ζ_D − ζ_P: (6·ζ_P + 3·ζ_D − ζ_P)/3 per cycle
    # step over 3/4 of the run, 3·ζ_P after it -> (8·ζ_P + 3·ζ_D)/4
    assert math.isclose(led.physical / 48, (8 * zp + 3 * ZD) / 4, rel_tol=1e-12)
    assert math.isclose(led.physical_relative, (8 * zp + 3 * ZD) / 4 / (3 * ZD), rel_tol=1e-12)
    assert led.physical_relative > led.relative


def test_physical_accounting_equals_the_papers_for_methods_without_live_inactive_weights():
    for name, cfg in (("rigl", dict(update_interval=4, total_steps=40)), ("static", {}),
                      ("gmp", dict(update_interval=4, total_steps=40))):
        net, opt, m = _method(name, density=0.2, **cfg)
        led = _run(net, opt, m, steps=40, bs=1)
        assert led.physical == led.total, name


def test_ledger_counts_what_each_step_ran():
    # α > 0: IEE's reduced Θ_K during J and Q, GMP's shrinking density
    for name, cfg in (("iee", dict(density=0.2, H=2, J=2, Q=2, total_steps=24)),
                      ("gmp", dict(density=0.2, update_interval=2, total_steps=24))):
        net, opt, m = _method(name, **cfg)
        layers = layer_flops(net, (2, 8, 8))
        numel = {n: p.numel() for n, p in m.params.items()}
        ledger = FlopsLedger(net, m, (2, 8, 8))
        expect = 0.0
        g = torch.Generator().manual_seed(0)
        zetas = set()
        for _ in range(24):
            counts = m.expected_counts()
            zp = sum(f * counts[n] / numel[n] for n, f in layers.items())
            zetas.add(round(zp, 6))
            x, y = torch.randn(3, 2, 8, 8, generator=g), torch.randint(0, 4, (3,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            m.step()
            explore = name == "iee" and m.stage(m.state.step) == "explore"
            expect += 3 * (2 * zp + ZD if explore else 3 * zp)
            ledger.record_step(3)
        assert math.isclose(ledger.total, expect, rel_tol=1e-12)
        assert len(zetas) > 2, name


def test_pretraining_and_state_dict():
    net, opt, m = _method("asp", exclude=("conv.weight", "dw.weight"))
    led = _run(net, opt, m, steps=2, bs=5, ledger_kw={"pretrain_samples": 10})
    zp = led.inference_flops()
    assert math.isclose(led.total, 3 * ZD * 10 + 3 * zp * 10)
    assert math.isclose(led.relative, 1 + zp / ZD)
    other = FlopsLedger(net, m, (2, 8, 8))
    other.load_state_dict(led.state_dict())
    assert other.total == led.total and other.relative == led.relative
    small = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="dense FLOPs"):
        FlopsLedger(small, regrow.create("static", small, None, density=0.5), (8,)).load_state_dict(led.state_dict())


def test_ledger_follows_in_training_slimming_even_to_one_channel():
    """After slim_now() every layer runs at its new size, including layers whose group
    was cut to one channel (such groups leave the method's masks): ζ_P and the executed
    FLOPs are those of the slimmed model, measured afresh."""
    from test_groups import TinyRes

    torch.manual_seed(0)
    net = TinyRes()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    m = regrow.create("halp", net, opt, input_shape=(3, 8, 8), cost="flops", latency_target=0.5,
                      prune_steps=1, prune_interval=1, total_steps=10)
    ledger = FlopsLedger(net, m, (3, 8, 8))
    one = {g: torch.arange(c.numel()) < (1 if i == 0 else c.numel() // 2)
           for i, (g, c) in enumerate(m.channels.items())}
    m.commit_channels(one, record=False)
    assert ledger.zeta_sparse() < ledger.zeta_dense
    x = torch.randn(4, 3, 8, 8)
    expected_before = ledger.zeta_physical
    m.slim_now()
    assert len(m.groups) < len(one)  # the one-channel group left the masks
    slimmed = sum(layer_flops(net, (3, 8, 8)).values())
    assert math.isclose(ledger.zeta_sparse(), slimmed, rel_tol=1e-12)
    assert math.isclose(ledger.inference_flops(), slimmed, rel_tol=1e-12)
    assert ledger.zeta_physical == pytest.approx(slimmed) and expected_before == ledger.zeta_dense
    net(x).sum().backward()
    opt.step()
    before = ledger.executed
    ledger.record_step(4)
    assert math.isclose(ledger.executed - before, 4 * 3 * slimmed, rel_tol=1e-12)
    # a resumed ledger (built on the dense model, state loaded after the slimming) agrees
    torch.manual_seed(0)
    net2 = TinyRes()
    m2 = regrow.create("halp", net2, torch.optim.SGD(net2.parameters(), lr=0.01), input_shape=(3, 8, 8),
                       cost="flops", latency_target=0.5, prune_steps=1, prune_interval=1, total_steps=10)
    ledger2 = FlopsLedger(net2, m2, (3, 8, 8))
    m2.load_state_dict(m.state_dict())
    ledger2.load_state_dict(ledger.state_dict())
    assert math.isclose(ledger2.zeta_sparse(), slimmed, rel_tol=1e-12)
    assert ledger2.zeta_physical == ledger.zeta_physical
