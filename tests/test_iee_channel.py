"""Structured latency-constrained IEE (regrow.methods.iee_channel)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import regrow
from test_groups import TinyRes
from test_halp import X, Y, check_all_or_nothing

OPTS = dict(input_shape=(3, 8, 8), cost="flops", latency_target=0.5, H=2, J=2, Q=2, total_steps=40,
            end_fraction=0.75)   # short runs: updates over 3/4 of the run, not the paper's 5/130


def make(seed=0, **kw):
    torch.manual_seed(seed)
    m = TinyRes()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return m, opt, regrow.create("iee_channel", m, opt, **{**OPTS, **kw})


def train(m, opt, meth, steps):
    m.train()
    for _ in range(steps):
        F.cross_entropy(m(X), Y).backward()
        meth.step()
        opt.zero_grad()


def test_random_start_meets_budget_and_cycles_keep_it():
    m, opt, meth = make()
    assert meth.predicted_cost() <= meth.budget
    check_all_or_nothing(m, meth, opt)
    events = []
    for _ in range(30):
        train(m, opt, meth, 1)
        for r in meth.pop_metrics():
            events.append(r["event"])
            assert r["predicted_cost"] <= meth.budget * (1 + 1e-9)
            if r["event"] == "prune":
                assert r["predicted_cost"] <= meth.budget - r["omega"] + 1e-9
        if meth.phase == "exploit":
            check_all_or_nothing(m, meth, opt)
    assert events[:4] == ["prune", "grow", "prune", "grow"]


def test_theta_k_frozen_during_reactivate_and_explore():
    m, opt, meth = make()
    while meth.phase != "explore":
        train(m, opt, meth, 1)
    masks = {n: mk.clone() for n, mk in meth.state.masks.items()}
    vals = {n: meth.params[n].detach().clone() for n in meth.names}
    moms = {n: opt.state[meth.params[n]]["momentum_buffer"].clone() for n in meth.names}
    others = [p.detach().clone() for p in meth._others]
    reactivated = any((meth.params[n].detach()[~masks[n]] != 0).any() for n in meth.names)
    assert reactivated
    for n, sm in meth._stat_masks.items():  # reactivated channels' BN statistics start at (0, 1)
        assert (meth.stats[n][~sm] == (1.0 if n.endswith("running_var") else 0.0)).all()
    explore_steps = 0
    while meth.phase == "explore":  # the grow at the end of the stage restores Θ_K's optimizer state
        train(m, opt, meth, 1)
        explore_steps += 1
        for n in meth.names:  # Θ_K bit-identical, Θ_P trains
            assert torch.equal(meth.params[n].detach()[masks[n]], vals[n][masks[n]])
        assert all(torch.equal(p, q) for p, q in zip(meth._others, others))
    assert explore_steps == 2 and meth.phase == "exploit"
    for n in meth.names:
        still = masks[n] & meth.state.masks[n]
        assert torch.equal(opt.state[meth.params[n]]["momentum_buffer"][still], moms[n][still])


def test_resume_mid_explore_is_bit_identical():
    m, opt, meth = make()
    while meth.phase != "explore":
        train(m, opt, meth, 1)
    sd_m, sd_o, sd = copy.deepcopy(m.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(meth.state_dict())
    train(m, opt, meth, 9)
    m2, opt2, meth2 = make(seed=4)
    m2.load_state_dict(sd_m)
    opt2.load_state_dict(sd_o)
    meth2.load_state_dict(sd)
    train(m2, opt2, meth2, 9)
    assert meth2.checksum() == meth.checksum()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_init_from_pretrained_keeps_largest_gamma():
    torch.manual_seed(0)
    m = TinyRes()
    with torch.no_grad():
        m.bne.weight.copy_(torch.linspace(0.1, 1.2, 12))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    meth = regrow.create("iee_channel", m, opt, **{**OPTS, "init": "criterion", "budget_schedule": "constant"})
    e = meth.channels["e"]
    k = int(e.sum())
    assert 1 <= k < 12 and e[12 - k:].all()  # the k largest |γ|


def test_from_a_given_model_the_budget_descends_exponentially_to_the_target():
    """HALP's scheduler (IEE appendix §3): every channel at the start, IEE step k of T
    prunes to Ψ_k − Ω_t and grows back within Ψ_k = D·(Ψ/D)^(k/T), ending on Ψ."""
    torch.manual_seed(0)
    m = TinyRes()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    meth = regrow.create("iee_channel", m, opt, **{**OPTS, "init": "criterion"})
    assert all(c.all() for c in meth.channels.values())       # starts dense
    assert meth.step_budget(meth.cycles) == pytest.approx(meth.budget)
    grows = []
    for _ in range(40):
        train(m, opt, meth, 1)
        for r in meth.pop_metrics():
            if r["event"] == "grow":
                assert r["predicted_cost"] <= r["step_budget"] * (1 + 1e-9)
                grows.append(r["step_budget"])
    assert len(grows) == meth.cycles >= 3
    ratios = [b / meth.dense_cost for b in grows]
    want = [(meth.budget / meth.dense_cost) ** (k / meth.cycles) for k in range(1, meth.cycles + 1)]
    assert ratios == pytest.approx(want)
    assert meth.predicted_cost() <= meth.budget * (1 + 1e-9)


def test_structure_updates_end_at_5_of_130_by_default():
    torch.manual_seed(0)
    m = TinyRes()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    opts = {k: v for k, v in OPTS.items() if k != "end_fraction"}
    meth = regrow.create("iee_channel", m, opt, **{**opts, "total_steps": 260})
    assert meth.config.end_fraction == pytest.approx(5 / 130) and meth.t_end == 10 and meth.cycles == 1
    with pytest.raises(ValueError, match="end_fraction"):
        regrow.create("iee_channel", TinyRes(), None, **opts)   # 40 steps: T_end = 1 < ΔT = 6


@pytest.mark.parametrize("kw, match", [
    ({"criterion": "magnitude"}, "criterion must be 'taylor'"),
    ({"grow_by": "random"}, "grow_by must be 'criterion'"),
    ({"total_steps": 4}, "no IEE step fits"),
    ({"latency_target": 1.5}, "latency_target"),
])
def test_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_evaluation_mid_explore_scores_theta_k_including_bn_statistics():
    m, opt, meth = make()
    while meth.phase != "explore":
        train(m, opt, meth, 1)
    train(m, opt, meth, 1)  # the reactivated channels train and track statistics
    only_k = copy.deepcopy(m)
    sd = only_k.state_dict()
    with torch.no_grad():
        for n, mask in {**meth.state.masks, **meth._stat_masks}.items():
            sd[n].mul_(mask)
    only_k.eval()
    before = copy.deepcopy(m.state_dict())
    m.eval()
    with torch.no_grad():
        live = m(X)
        with meth.evaluation():
            inside = m(X)
    m.train()
    assert torch.equal(inside, only_k(X))
    assert not torch.equal(live, inside)
    assert all(torch.equal(a, b) for a, b in zip(before.values(), m.state_dict().values()))


def test_slim_after_the_last_update_then_train_on_the_smaller_network():
    m, opt, meth = make(slim_after=True)
    assert meth.replaces_parameters() and not make()[2].replaces_parameters()
    dense_figures = meth.summary()
    n_dense = sum(p.numel() for p in m.parameters())
    steps = 0
    while not meth.slimmed:
        assert meth.state.counters["iee.cycles_done"] < meth.cycles
        train(m, opt, meth, 1)
        steps += 1
    assert steps == meth.cycles * meth.config.update_interval - 1  # right after the last grow
    assert any(r["event"] == "slim" for r in meth.pop_metrics())
    assert sum(p.numel() for p in m.parameters()) < n_dense
    assert all(c.all() for c in meth.channels.values())
    assert all(any(q is p for g in opt.param_groups for q in g["params"]) for p in m.parameters())
    train(m, opt, meth, 3)   # the rest of training runs on the smaller tensors
    assert meth.stage(meth.state.step) == "train"
    s = meth.summary(measure=True, repeats=2, reference=lambda: make()[0])
    assert s["slimmed_in_training"] and s["macs_dense"] == dense_figures["macs_dense"]
    assert s["params_dense"] == n_dense and s["params"] == sum(p.numel() for p in m.parameters())
    assert s["macs"] < s["macs_dense"] and s["predicted"] <= s["budget"] * (1 + 1e-9)
    assert s["latency_ms"] > 0 and s["latency_ms_dense"] > 0 and s["throughput"] > 0


def test_lr_clock_is_inherited_and_stands_still_on_frozen_steps():
    """Channel IEE freezes Θ_K in Reactivate & Explore too: lr_clock='trained' (and the
    budget_aware preset) move its LR clock as for unstructured IEE; the default is the step."""
    from regrow.methods.iee import iee_lr_step

    _, _, paper = make()
    assert [paper.lr_step(s) for s in range(40)] == list(range(40))
    for kw in ({"lr_clock": "trained"}, {"budget_aware": True}):
        _, _, meth = make(**kw)
        clock = [meth.lr_step(s) for s in range(40)]
        assert clock == [iee_lr_step(s, 40, 2, 2, 2, meth.cycles) for s in range(40)]
        explore = [s for s in range(1, 40) if meth.stage(s + 1) == "explore" and meth.stage(s) == "explore"]
        assert explore and all(clock[s] == clock[s - 1] for s in explore)


def test_explore_lr_is_inherited_and_scales_only_the_explore_steps():
    m, opt, meth = make(explore_lr=0.5)
    inside, stages = [], []
    opt.register_step_pre_hook(lambda o, a, k: inside.append(o.param_groups[0]["lr"]))
    for s in range(1, 31):
        stages.append(meth.stage(s))
        train(m, opt, meth, 1)
    assert "explore" in stages
    assert inside == [0.025 if st == "explore" else 0.05 for st in stages]
    assert opt.param_groups[0]["lr"] == 0.05
    check_all_or_nothing(m, meth, opt)
