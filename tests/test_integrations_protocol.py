"""The one callback protocol (regrow.integrations.protocol): SparsityCallback driven by
hand, as any trainer drives it."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from regrow.integrations.protocol import Callback, Fit, SparsityCallback, watch_loss
from regrow.methods.base import RunFacts


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt


def _fit_steps(core, fit, steps, x, y):
    for _ in range(steps):
        nn.functional.cross_entropy(fit.model(x), y).backward()
        core.on_before_optimizer_step(fit)
        fit.optimizer.step()
        fit.optimizer.zero_grad()
        fit.step += 1
        core.on_train_batch_end(fit)


def test_every_hook_of_the_base_callback_does_nothing():
    cb, fit = Callback(), Fit(*_setup(), RunFacts())
    for hook in ("on_fit_start", "on_before_optimizer_step", "on_train_batch_end", "on_validation_start",
                 "on_validation_end"):
        assert getattr(cb, hook)(fit) is None
    assert cb.on_train_epoch_end(fit, {}) is None and cb.on_save_checkpoint(fit, {}) is None
    assert cb.on_fit_end(fit, {}) is None and cb.on_exception(fit, RuntimeError()) is None


def test_facts_fill_the_options_the_user_did_not_give():
    model, opt = _setup()
    core = SparsityCallback("rigl", density=0.25, update_interval=2)
    core.on_fit_start(Fit(model, opt, RunFacts(total_steps=40)))
    assert core.method.config.total_steps == 40
    given = SparsityCallback("rigl", density=0.25, update_interval=2, total_steps=7)
    given.on_fit_start(Fit(*_setup(), RunFacts(total_steps=40)))
    assert given.method.config.total_steps == 7


def test_unknown_method_or_option_fails_when_the_callback_is_made():
    with pytest.raises(ValueError, match="unknown method"):
        SparsityCallback("nope")
    with pytest.raises(ValueError, match="unknown option"):
        SparsityCallback("rigl", densty=0.1)


def test_masks_before_the_optimizer_step_only_for_its_optimizer():
    model, opt = _setup()
    core = SparsityCallback("rigl", density=0.25, update_interval=2)
    fit = Fit(model, opt, RunFacts(total_steps=20))
    core.on_fit_start(fit)
    x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    masks = core.method.state.masks
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    core.on_before_optimizer_step(Fit(model, other, fit.facts))   # not the method's optimizer
    assert any(bool((core.method.params[n].grad * ~m).abs().sum() > 0) for n, m in masks.items())
    core.on_before_optimizer_step(fit)
    assert all(float((core.method.params[n].grad * ~m).abs().max()) == 0.0 for n, m in masks.items())


def test_records_are_collected_and_drained_by_the_logger():
    model, opt = _setup()
    core = SparsityCallback("rigl", density=0.25, update_interval=2)
    fit = Fit(model, opt, RunFacts(total_steps=20))
    core.on_fit_start(fit)
    _fit_steps(core, fit, 4, torch.randn(8, 8), torch.randint(0, 4, (8,)))
    assert [r["step"] for r in core.records] == [2, 4]
    flat = core.log_metrics()
    assert flat["regrow/density"] == pytest.approx(0.25, abs=0.02) and "regrow/update/iou_grow" in flat
    assert core.unlogged == [] and core.log_metrics() == {"regrow/density": flat["regrow/density"]}


def test_state_restored_before_the_fit_starts_continues_bit_identically():
    x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
    model, opt = _setup()
    a = SparsityCallback("iee", density=0.25, H=2, J=2, Q=2)
    fit = Fit(model, opt, RunFacts(total_steps=30))
    a.on_fit_start(fit)
    _fit_steps(a, fit, 4, x, y)              # mid Reactivate & Explore (iterations 4–5 of ΔT = 6)
    assert a.method.phase == "explore"
    payload = a.state_dict(model)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(opt.state_dict())   # state_dict() holds the live tensors
    _fit_steps(a, fit, 7, x, y)

    model2, opt2 = _setup(seed=1)
    b = SparsityCallback("iee", density=0.25, H=2, J=2, Q=2)
    b.load_state_dict(payload)               # frameworks restore callbacks before the fit
    assert b.method is None
    model2.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    fit2 = Fit(model2, opt2, RunFacts(total_steps=30), step=4)
    b.on_fit_start(fit2)
    _fit_steps(b, fit2, 7, x, y)
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), n
    assert b.method.checksum() == a.method.checksum()


def test_validation_view_hides_explored_weights_and_restores_them():
    model, opt = _setup()
    core = SparsityCallback("iee", density=0.25, H=2, J=2, Q=2)
    fit = Fit(model, opt, RunFacts(total_steps=30))
    core.on_fit_start(fit)
    _fit_steps(core, fit, 4, torch.randn(8, 8), torch.randint(0, 4, (8,)))
    assert core.method.phase == "explore"
    live = {n: p.detach().clone() for n, p in model.named_parameters()}
    core.on_validation_start(fit)
    for n, m in core.method.state.masks.items():
        assert float((core.method.params[n].detach() * ~m).abs().max()) == 0.0
    core.on_exception(fit, RuntimeError("died in validation"))   # values back even then
    for n, p in model.named_parameters():
        assert torch.equal(p, live[n])


# ---- the loss-spike watch every trainer feeds ---------------------------------------------
def test_watch_loss_golden_running_mean_and_one_warning():
    state = {}
    assert watch_loss(state, 2.0, 1, None) is None and state["loss_ema"] == 2.0
    assert watch_loss(state, 1.0, 2, None) is None
    assert state["loss_ema"] == pytest.approx(0.98 * 2.0 + 0.02 * 1.0)         # 1.98
    assert watch_loss(state, 19.0, 3, None) is None        # < 10 × 1.98: not a spike
    ema = state["loss_ema"]
    assert watch_loss(state, float("nan"), 4, None) is None and state["loss_ema"] == ema   # not fed
    with pytest.warns(UserWarning, match=r"jumped to 300 at step 5 .*lower the lr"):
        rec = watch_loss(state, 300.0, 5, None)
    assert rec == {"event": "loss_spike", "step": 5, "loss": 300.0, "running_mean": ema, "hint": ""}
    assert state["spike_reported"] is True
    assert watch_loss(state, 3000.0, 6, None) is None      # once per run
    # a small loss is no spike however large the ratio: it must also be > 1 nat above the mean
    assert watch_loss({"loss_ema": 0.01}, 0.5, 1, None) is None


def test_loss_spikes_reach_records_and_the_logger_and_the_watch_resumes():
    model, opt = _setup()
    core = SparsityCallback("iee", density=0.25, H=2, J=2, Q=2)
    fit = Fit(model, opt, RunFacts(total_steps=30), step=4)
    core.on_fit_start(fit)
    assert core.on_train_loss(fit, 1.0) is None
    with pytest.warns(UserWarning, match="Reactivate & Explore.*explore_lr"):   # the method's hint
        rec = core.on_train_loss(fit, 50.0)
    assert rec["event"] == "loss_spike" and core.records[-1] is rec
    flat = core.log_metrics()
    assert flat["regrow/loss_spike/loss"] == 50.0 and flat["regrow/loss_spike/running_mean"] == 1.0
    payload = core.state_dict(model)
    again = SparsityCallback("iee", density=0.25, H=2, J=2, Q=2)
    again.load_state_dict(payload)
    again.on_fit_start(Fit(*_setup(), RunFacts(total_steps=30), step=4))
    assert again.loss_watch == core.loss_watch and again.loss_watch["spike_reported"] is True
