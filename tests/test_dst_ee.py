"""DST-EE (regrow.methods.dst_ee): Eq. 1 growth, the counters N, exploration metrics."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import regrow
from regrow.methods.dst_ee import COUNT, DSTEE, acquisition_scores
from regrow.metrics import EVER
from conftest import TinyMLP


def _batch(step: int, d_in: int = 16, classes: int = 4, batch: int = 16):
    g = torch.Generator().manual_seed(step)
    return torch.randn(batch, d_in, generator=g), torch.randint(0, classes, (batch,), generator=g)


def _train(method, model, opt, steps, start=1):
    for step in range(start, start + steps):
        opt.zero_grad()
        x, y = _batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        method.step()


def _make(name="dst_ee", seed=0, **cfg):
    torch.manual_seed(seed)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    base = dict(density=0.2, update_interval=3, total_steps=60, alpha=0.5)
    base.update(cfg)
    return model, opt, regrow.create(name, model, opt, **base)


def test_acquisition_scores_golden():
    g = torch.tensor([0.5, -0.25, 0.0])
    n = torch.tensor([0, 1, 3], dtype=torch.int32)
    s = acquisition_scores(g, n, t=100, c=2.0, eps=1.0)
    ln = math.log(100)
    assert torch.allclose(s, torch.tensor([0.5 + 2 * ln, 0.25 + ln, 2 * ln / 4]))
    assert torch.equal(acquisition_scores(g, n, t=100, c=0.0, eps=1.0), g.abs())


def test_c_zero_grows_exactly_like_rigl():
    ma, oa, rigl = _make("rigl")
    mb, ob, dst = _make("dst_ee", c=0.0)
    assert all(torch.equal(rigl.state.masks[n], dst.state.masks[n]) for n in rigl.names)
    updates = 0
    for step in range(1, 46):
        _train(rigl, ma, oa, 1, start=step)
        _train(dst, mb, ob, 1, start=step)
        for n in rigl.names:
            assert torch.equal(rigl.state.masks[n], dst.state.masks[n]), (step, n)
            assert torch.equal(rigl.params[n], dst.params[n]), (step, n)
        updates += bool(rigl.pop_metrics())
        for r in dst.pop_metrics():
            assert r["n_grown_explore"] == 0 and r["n_grown_exploit"] == r["n_grown"]
    assert updates == 14  # steps 3, 6, …, 42 (< T_end = 45)


def _hand_made(c):
    """Linear 4→2 (8 weights), density 1/2: a crafted state right before the update at t = 100.

    flat index:      0    1    2    3    4    5    6    7
    mask:            1    1    1    1    0    0    0    0
    |w|:            .1   .2    3    4    -    -    -    -     → drop 0, 1 (α_t·4 = 2.1)
    N:               2    2    2    2    1    1    0    0
    |∂L/∂w|:         0    0    0    0   .9   .8   .1   .2
    """
    model = nn.Linear(4, 2, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m = DSTEE(model, opt, density=0.5, distribution="uniform", update_interval=100, total_steps=400,
              alpha=0.7, c=c, eps=1.0)
    name = "weight"
    mask = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool).view(2, 4)
    m.state.masks[name] = mask
    m.state.buffers[COUNT][name] = torch.tensor([2, 2, 2, 2, 1, 1, 0, 0], dtype=torch.int32).view(2, 4)
    m.state.buffers[EVER][name] = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool).view(2, 4)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([0.1, 0.2, 3, 4, 0, 0, 0, 0]).view(2, 4))
    model.weight.grad = torch.tensor([0, 0, 0, 0, 0.9, -0.8, 0.1, -0.2]).view(2, 4)
    m.state.step = 99
    m.step()
    (record,) = m.pop_metrics()
    return m.state.masks[name].view(-1).tolist(), m.counts[name].view(-1).tolist(), record


def test_hand_made_update_c_zero_is_greedy():
    mask, counts, rec = _hand_made(0.0)
    assert mask == [False, False, True, True, True, True, False, False]
    assert counts == [2, 2, 3, 3, 2, 2, 0, 0]
    assert (rec["n_grown_exploit"], rec["n_grown_explore"]) == (2, 0)
    assert rec["exploration_degree"] == 6 / 8


def test_hand_made_update_balanced_c_splits_exploit_and_explore():
    # c·ln(100) = 0.3 · 4.605 = 1.382, bonus = 1.382 / (N + 1):
    # S4 = .9 + .691 = 1.591, S5 = .8 + .691 = 1.491, S6 = .1 + 1.382 = 1.482,
    # S7 = .2 + 1.382 = 1.582, S0 = S1 = 0 + .461  → grow 4 (greedy too) and 7 (bonus only)
    mask, counts, rec = _hand_made(0.3)
    assert mask == [False, False, True, True, True, False, False, True]
    assert counts == [2, 2, 3, 3, 2, 1, 0, 1]
    assert (rec["n_grown_exploit"], rec["n_grown_explore"]) == (1, 1)
    assert rec["exploration_degree"] == 7 / 8


def test_hand_made_update_large_c_grows_never_active_first():
    mask, counts, rec = _hand_made(1e3)
    assert mask == [False, False, True, True, False, False, True, True]
    assert counts == [2, 2, 3, 3, 1, 1, 1, 1]
    assert (rec["n_grown_exploit"], rec["n_grown_explore"]) == (0, 2)
    assert rec["exploration_degree"] == 1.0


def test_large_c_grows_only_never_active_weights_while_any_remain():
    model, opt, m = _make(c=1e6, density=0.1)
    checked = 0
    for step in range(1, 40):
        before = {n: m.counts[n].clone() for n in m.names}
        old = {n: m.state.masks[n].clone() for n in m.names}
        _train(m, model, opt, 1, start=step)
        for n in m.names:
            grown = m.state.masks[n] & ~old[n]
            never = int((before[n] == 0).sum())
            if int(grown.sum()) <= never:
                assert torch.all(before[n][grown] == 0), (step, n)
                checked += int(grown.sum())
    assert checked > 0


class _Scripted(DSTEE):
    """Installs a hand-made mask at each update, to test the counting alone."""

    script: list = []

    def grow(self, scores, counts, masks):
        super().grow(scores, counts, masks)
        return {"weight": self.script.pop(0)}


def test_counts_follow_a_hand_made_mask_sequence():
    t = lambda *v: torch.tensor(v, dtype=torch.bool).view(2, 3)  # noqa: E731
    model = nn.Linear(3, 2, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    m = _Scripted(model, opt, density=0.5, distribution="uniform", update_interval=2, total_steps=100)
    m.state.masks["weight"] = t(1, 1, 1, 0, 0, 0)
    m.state.buffers[COUNT]["weight"] = t(1, 1, 1, 0, 0, 0).int()
    m.script = [t(1, 1, 0, 1, 0, 0), t(0, 1, 0, 1, 1, 0), t(0, 1, 1, 0, 1, 0)]
    for step in range(1, 7):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        m.step()
    assert m.counts["weight"].view(-1).tolist() == [2, 4, 2, 2, 2, 0]
    assert m.counts["weight"].dtype == torch.int32


@pytest.mark.parametrize("c", [0.0, 1e-3, 1e-1])
def test_exploration_degree_monotone_and_matches_counts(c):
    model, opt, m = _make(c=c, seed=1)
    degrees = []
    for step in range(1, 46):
        _train(m, model, opt, 1, start=step)
        for r in m.pop_metrics():
            degrees.append(r["exploration_degree"])
            ever = sum(int((m.counts[n] > 0).sum()) for n in m.names)
            assert r["exploration_degree"] == ever / sum(p.numel() for p in m.params.values())
            assert r["n_grown_exploit"] + r["n_grown_explore"] == r["n_grown"]
    assert len(degrees) == 14
    assert all(b >= a for a, b in zip(degrees, degrees[1:]))
    assert degrees[-1] > m.config.density


def test_higher_c_explores_more():
    final = {}
    for c in (0.0, 1.0):
        model, opt, m = _make(c=c, seed=2)
        _train(m, model, opt, 45)
        final[c] = [r["exploration_degree"] for r in m.pop_metrics()][-1]
    assert final[1.0] > final[0.0]


def test_counts_resume_bit_exactly():
    model_a, opt_a, a = _make(c=0.05)
    fresh = copy.deepcopy(model_a)
    _train(a, model_a, opt_a, 10)
    sd = copy.deepcopy(a.state_dict())
    opt_b = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    b = regrow.create("dst_ee", fresh, opt_b, density=0.2, update_interval=3, total_steps=60, alpha=0.5,
                      c=0.05, seed=9)
    fresh.load_state_dict(model_a.state_dict())
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # else the momentum buffers are shared
    b.load_state_dict(sd)
    _train(a, model_a, opt_a, 20, start=11)
    _train(b, fresh, opt_b, 20, start=11)
    for n in a.names:
        assert torch.equal(a.counts[n], b.counts[n])
        assert torch.equal(a.state.masks[n], b.state.masks[n])
        assert torch.equal(a.params[n], b.params[n])


def test_step_flops_dense_gradient_at_updates_only():
    model, opt, m = _make()
    costs = []
    for step in range(1, 7):
        _train(m, model, opt, 1, start=step)
        costs.append(m.step_flops(1.0, 10.0))
    assert costs == [3.0, 3.0, 12.0, 3.0, 3.0, 12.0]


@pytest.mark.parametrize("field,value", [("c", -1.0), ("eps", 0.0), ("eps", -2.0), ("c", "big")])
def test_bad_config_names_the_field(field, value):
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=field):
        regrow.create("dst_ee", model, opt, total_steps=10, **{field: value})


def test_defaults_are_erk_and_registered():
    model = TinyMLP()
    m = regrow.create("dst_ee", model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10)
    assert isinstance(m, regrow.DSTEE)
    assert m.config.distribution == "erk" and m.config.c == 1e-3 and m.config.eps == 1.0
    for n in m.names:
        assert torch.equal(m.counts[n], m.state.masks[n].int())
