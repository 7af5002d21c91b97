"""OptG (regrow.methods.optg): STE score gradients, epoch-wise global masks, the sigmoid
schedules, dormant revival, FLOPs and bit-exact resume."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import regrow
from regrow.methods.optg import SCORES, topk_random_ties
from regrow.schedules import sigmoid_mask_lr, sigmoid_sparsity
from conftest import TinyMLP

EPOCH = 4


def _batch(step: int, d_in: int = 16, classes: int = 4, batch: int = 16):
    g = torch.Generator().manual_seed(step)
    return torch.randn(batch, d_in, generator=g), torch.randint(0, classes, (batch,), generator=g)


def _loss(model, step):
    x, y = _batch(step)
    return nn.functional.cross_entropy(model(x), y)


def _train(method, model, opt, steps, start=1, sched=None, each=None):
    for step in range(start, start + steps):
        opt.zero_grad()
        _loss(model, step).backward()
        method.step()
        if each is not None:
            each(step)
        if sched is not None:
            sched.step()


def _make(opt_kind="sgd", init_seed=0, **cfg):
    torch.manual_seed(init_seed)
    model = TinyMLP()
    if opt_kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    base = dict(density=0.1, epoch_steps=EPOCH, total_steps=10 * EPOCH)
    base.update(cfg)
    return model, opt, regrow.create("optg", model, opt, **base)


def _ste_reference(model, masks, dormant, step):
    """Autograd of a model whose weights are w_eff ⊙ (h(m̂) + m̂ − sg(m̂)): forward uses the
    binary mask, the gradient reaching m̂ is ∂L/∂(w⊙m) · w_eff (Eq. 7)."""
    p = dict(model.named_parameters())
    m_hat = {n: torch.zeros_like(p[n], requires_grad=True) for n in masks}
    w = {}
    for n in masks:
        w_eff = torch.where(masks[n], p[n].detach(), dormant[n])
        h = masks[n].to(w_eff.dtype)
        w[n] = w_eff * (h + m_hat[n] - m_hat[n].detach())
    x, y = _batch(step)
    a = torch.relu(nn.functional.linear(x, w["fc1.weight"], p["fc1.bias"].detach()))
    a = torch.relu(nn.functional.linear(a, w["fc2.weight"], p["fc2.bias"].detach()))
    out = nn.functional.linear(a, w["fc3.weight"], p["fc3.bias"].detach())
    nn.functional.cross_entropy(out, y).backward()
    return {n: t.grad for n, t in m_hat.items()}


def test_score_gradients_equal_the_ste_formula():
    model, opt, m = _make(density=0.3, tau=3)
    _train(m, model, opt, EPOCH + 1)  # past one mask change: some weights dormant with trained values
    step = EPOCH + 2
    masks = {n: t.clone() for n, t in m.state.masks.items()}
    dormant = {n: t.clone() for n, t in m.state.dormant.items()}
    assert any(not torch.equal(dormant[n][~masks[n]], torch.zeros(0)) for n in m.names)
    ref = _ste_reference(model, masks, dormant, step)
    opt.zero_grad()
    _loss(model, step).backward()
    m.step()  # writes the score gradients in before_step; the optimizer leaves .grad alone
    for n in m.names:
        inactive = ~masks[n]
        assert inactive.any()
        assert torch.allclose(m.scores[n].grad, ref[n], rtol=1e-5, atol=1e-8), n
        # inactive weights get a non-zero signal through their dormant values
        assert m.scores[n].grad[inactive].abs().sum() > 0


def test_mask_changes_only_at_epoch_boundaries_and_density_is_exact():
    model, opt, m = _make(density=0.1)
    total = sum(p.numel() for p in m.params.values())
    final = round(0.1 * total)
    changed_at = []
    prev = regrow.mask_checksum(m.state.masks)

    def check(step):
        nonlocal prev
        now = regrow.mask_checksum(m.state.masks)
        if now != prev:
            changed_at.append(step)
        prev = now
        counts = m.expected_counts()
        for n, mask in m.state.masks.items():
            assert int(mask.sum()) == counts[n]
            assert torch.all(m.params[n].detach()[~mask] == 0)
        k = m.epoch_of(step + 1)
        kept = sum(int(mask.sum()) for mask in m.state.masks.values())
        assert kept == total - round(m.ramp(k) * (total - final))

    _train(m, model, opt, 10 * EPOCH, each=check)
    assert changed_at and all(s % EPOCH == 0 for s in changed_at)
    assert len(changed_at) >= 7  # the sparsity rises every epoch, so nearly every boundary changes it
    assert sum(int(mask.sum()) for mask in m.state.masks.values()) == final


def test_sparsity_and_mask_lr_follow_the_sigmoid_schedules():
    tau = 8
    model, opt, m = _make(density=0.2, tau=tau, total_steps=10 * EPOCH)
    score_group = m.score_optimizer.param_groups[-1]
    assert score_group["params"][0] is m.scores[m.names[0]] and score_group["weight_decay"] == 0.0
    assert len(opt.param_groups) == 1   # the user's optimizer keeps the groups the user built
    assert score_group["momentum"] == 0.9
    seen = []

    def spy(optimizer, args, kwargs):  # the lrs the optimizer really uses
        seen.append((m.state.step + 1, optimizer.param_groups[0]["lr"], score_group["lr"]))

    opt.register_step_pre_hook(spy)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    _train(m, model, opt, 10 * EPOCH, sched=sched)
    assert len(seen) == 10 * EPOCH and seen[-1][1] < 0.1  # the scheduler did change the weights' lr
    for step, w_lr, m_lr in seen:
        k = (step - 1) // EPOCH + 1
        want = sigmoid_mask_lr(k, w_lr, tau, 0.5) if k < tau else w_lr
        assert m_lr == pytest.approx(want, rel=1e-12), step
    records = [r for r in m.pop_metrics() if r["event"] == "mask"]
    assert [r["epoch"] for r in records] == list(range(1, 11))
    total = sum(p.numel() for p in m.params.values())
    for r in records:
        k = r["epoch"]
        want = sigmoid_sparsity(k, 0.8, tau, 0.5) if k < tau else 0.8
        assert r["target_sparsity"] == pytest.approx(want, rel=1e-12)
        # the realised sparsity is P_k up to rounding to whole weights
        assert abs((1 - r["density"]) - want) <= 1 / total
        assert sum(r["layer_density"][n] * m.params[n].numel() for n in m.names) == pytest.approx(
            r["density"] * total)


def test_layer_densities_come_from_the_global_sort():
    model, opt, m = _make(density=0.1, tau=1)  # P_k = P from epoch 1
    _train(m, model, opt, EPOCH - 1)
    with torch.no_grad():  # one step of score updates (~1e-3) cannot reorder these
        m.scores["fc1.weight"].fill_(1.0)
        m.scores["fc2.weight"].fill_(0.0)
        m.scores["fc3.weight"].fill_(2.0)
    _train(m, model, opt, 1, start=EPOCH)  # the boundary: global top-166 of 1664
    assert m.expected_counts() == {"fc1.weight": 38, "fc2.weight": 0, "fc3.weight": 128}
    (rec,) = [r for r in m.pop_metrics() if r["step"] == EPOCH]
    assert rec["layer_density"] == {"fc1.weight": 38 / 512, "fc2.weight": 0.0, "fc3.weight": 1.0}


def test_revived_weights_return_with_their_dormant_values():
    model, opt, m = _make(density=0.2, tau=2)
    revived = 0
    for step in range(1, 8 * EPOCH + 1):
        old = {n: t.clone() for n, t in m.state.masks.items()}
        dormant = {n: t.clone() for n, t in m.state.dormant.items()}
        _train(m, model, opt, 1, start=step)
        for n in m.names:
            grown = m.state.masks[n] & ~old[n]
            pruned = old[n] & ~m.state.masks[n]
            assert torch.equal(m.params[n].detach()[grown], dormant[n][grown])
            assert torch.all(m.params[n].detach()[pruned] == 0)
            assert torch.all(m.state.dormant[n][pruned] != 0)  # the trained value, kept
            revived += int(grown.sum())
    assert revived > 0


def test_first_epoch_mask_is_random_subset_and_dense_for_long_schedules():
    _, _, short = _make(density=0.1, tau=10)
    total = sum(p.numel() for p in short.params.values())
    kept = sum(int(t.sum()) for t in short.state.masks.values())
    assert kept == total - round(sigmoid_sparsity(1, 1.0, 10) * (total - round(0.1 * total)))
    _, _, other_seed = _make(density=0.1, tau=10, seed=5)
    assert regrow.mask_checksum(short.state.masks) != regrow.mask_checksum(other_seed.state.masks)
    _, _, long = _make(density=0.1, tau=160, total_steps=160 * EPOCH)
    assert all(bool(t.all()) for t in long.state.masks.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0]), min_size=1, max_size=40), st.data())
def test_topk_random_ties_is_an_exact_top_k(values, data):
    scores = torch.tensor(values)
    k = data.draw(st.integers(0, len(values)))
    keep = topk_random_ties(scores, k, torch.Generator().manual_seed(data.draw(st.integers(0, 9))))
    assert int(keep.sum()) == k
    if 0 < k < len(values):
        assert scores[keep].min() >= scores[~keep].max()


@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
def test_resume_is_bit_exact(opt_kind):
    model_a, opt_a, a = _make(opt_kind, density=0.2)
    fresh = copy.deepcopy(model_a)
    sched_a = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=10 * EPOCH)
    _train(a, model_a, opt_a, 2 * EPOCH + 2, sched=sched_a)  # mid-epoch, after two mask changes
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict(), "sched": sched_a.state_dict(),
                "sparsity": a.state_dict()}, buf)
    # the uninterrupted run
    _train(a, model_a, opt_a, 8 * EPOCH - 2, start=2 * EPOCH + 3, sched=sched_a)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    torch.manual_seed(123)
    model_b = TinyMLP()
    if opt_kind == "sgd":
        opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt_b = torch.optim.Adam(model_b.parameters(), lr=1e-2, weight_decay=1e-3)
    b = regrow.create("optg", model_b, opt_b, density=0.2, epoch_steps=EPOCH, total_steps=10 * EPOCH, seed=7)
    scores_in_optimizer = list(b.score_optimizer.param_groups[-1]["params"])
    sched_b = torch.optim.lr_scheduler.CosineAnnealingLR(opt_b, T_max=10 * EPOCH)
    model_b.load_state_dict(ck["model"])
    b.load_state_dict(ck["sparsity"])
    opt_b.load_state_dict(ck["opt"])
    sched_b.load_state_dict(ck["sched"])
    assert all(s is t for s, t in zip(scores_in_optimizer, b.score_optimizer.param_groups[-1]["params"]))
    assert all(b.scores[n] is t for n, t in zip(b.names, scores_in_optimizer))
    _train(b, model_b, opt_b, 8 * EPOCH - 2, start=2 * EPOCH + 3, sched=sched_b)
    for n in a.names:
        assert torch.equal(a.state.masks[n], b.state.masks[n]), n
        assert torch.equal(a.params[n], b.params[n]), n
        assert torch.equal(a.scores[n], b.scores[n]), n
        assert torch.equal(a.state.dormant[n], b.state.dormant[n]), n
        sa, sb = a.score_optimizer.state[a.scores[n]], b.score_optimizer.state[b.scores[n]]
        assert sa.keys() == sb.keys() and sa
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), (n, key)
    assert a.state.buffers.keys() == b.state.buffers.keys()
    assert a.expected_counts() == b.expected_counts()


def test_step_flops_dense_weight_gradient_every_step():
    _, _, m = _make()
    assert m.step_flops(1.0, 10.0) == 12.0


def test_one_score_group_per_weight_group_with_its_hyper_parameters():
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.SGD([{"params": [model.fc1.weight, model.fc1.bias], "lr": 0.2, "momentum": 0.5},
                           {"params": [model.fc2.weight, model.fc2.bias, model.fc3.weight, model.fc3.bias]}],
                          lr=0.1, momentum=0.9, weight_decay=1e-3)
    m = regrow.create("optg", model, opt, epoch_steps=2, tau=4)
    assert len(opt.param_groups) == 2 and len(m.score_optimizer.param_groups) == 2
    assert type(m.score_optimizer) is torch.optim.SGD
    g1, g2 = m.score_optimizer.param_groups
    assert g1["params"] == [m.scores["fc1.weight"]] and g1["momentum"] == 0.5 and g1["weight_decay"] == 0
    assert [id(t) for t in g2["params"]] == [id(m.scores["fc2.weight"]), id(m.scores["fc3.weight"])]
    assert g2["momentum"] == 0.9 and g2["weight_decay"] == 0
    opt.zero_grad()
    _loss(model, 1).backward()
    m.step()
    assert g1["lr"] == pytest.approx(sigmoid_mask_lr(1, 0.2, 4))
    assert g2["lr"] == pytest.approx(sigmoid_mask_lr(1, 0.1, 4))


@pytest.mark.parametrize("cfg,match", [
    ({"distribution": "erk"}, "global"),
    ({"distribution": "uniform"}, "global"),
    ({"epoch_steps": None}, "epoch_steps"),
    ({"epoch_steps": 0}, "epoch_steps"),
    ({"total_steps": None}, "tau"),
    ({"tau": -3}, "tau"),
    ({"a": 0}, r"a \(sigmoid"),
    ({"structure": "nm"}, "structure"),
])
def test_bad_config_is_a_value_error_naming_the_field(cfg, match):
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    base = dict(epoch_steps=2, total_steps=10)
    base.update(cfg)
    with pytest.raises(ValueError, match=match):
        regrow.create("optg", model, opt, **base)


def test_needs_an_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        regrow.OptG(TinyMLP(), None, epoch_steps=2, total_steps=10)


def test_scores_are_state_buffers():
    _, _, m = _make()
    assert m.state.buffers[SCORES] is m.scores
    assert m.state_dict()["state"]["buffers"][SCORES].keys() == set(m.names)
