"""The step contract (DESIGN §7): whoever calls ``optimizer.step()`` — ``sparsity.step()``,
the optimizer itself, ``torch.amp.GradScaler`` — masks stay true, a skipped step changes
nothing, clipping clips the applied gradient, and a restore works in either order."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import regrow
from conftest import TinyMLP, TinyNet, tiny_batch, tiny_loss
from test_methods_invariants import check_invariants

HERE = Path(__file__).parent


def _mlp_batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


def _loss(model, step):
    x, y = _mlp_batch(step)
    return nn.functional.cross_entropy(model(x), y)


def _rigl(model, opt, **kw):
    cfg = dict(density=0.3, distribution="uniform", update_interval=3, total_steps=30, alpha=0.5)
    cfg.update(kw)
    return regrow.create("rigl", model, opt, **cfg)


def _snapshot(method, model, opt):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
            copy.deepcopy(method.state_dict()))


def _assert_same(a, b):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_plain_optimizer_step_is_a_sparse_step():
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    m = _rigl(model, opt)
    prev = {n: k.clone() for n, k in m.state.masks.items()}
    updates = 0
    for step in range(1, 13):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()                       # no sparsity.step(): the hooks do it
        assert m.state.step == step
        check_invariants(m, opt, prev, step)
        updates += sum(r["event"] == "update" for r in m.pop_metrics())
        prev = {n: k.clone() for n, k in m.state.masks.items()}
    assert updates == 4                  # steps 3, 6, 9, 12


def test_sparsity_step_equals_optimizer_step_bit_for_bit():
    runs = []
    for drive in ("method", "optimizer"):
        torch.manual_seed(0)
        model = TinyMLP()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        m = _rigl(model, opt)
        for step in range(1, 13):
            opt.zero_grad()
            _loss(model, step).backward()
            (m.step if drive == "method" else opt.step)()
        runs.append(_snapshot(m, model, opt))
    _assert_same(runs[0], runs[1])


AMP_OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    # fused optimizers take the GradScaler's found_inf and skip the update inside their
    # own step(): the step hooks run for a step that is not taken (HF's default AdamW)
    "adam-fused": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
}


def _amp_run(method_name, steps, overflow_at=(), optimizer="sgd", **cfg):
    torch.manual_seed(0)
    model = TinyMLP()
    opt = AMP_OPTIMIZERS[optimizer](model.parameters())
    m = regrow.create(method_name, model, opt, **cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    history = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        scaler.scale(_loss(model, step)).backward()
        if step in overflow_at:
            model.fc2.weight.grad[0, 0] = float("inf")
        scaler.unscale_(opt)
        before = _snapshot(m, model, opt)
        scaler.step(opt)
        scaler.update()
        history.append((before, _snapshot(m, model, opt)))
    return m, model, opt, history


def test_grad_scaler_pattern_keeps_inactive_weights_zero():
    m, model, opt, _ = _amp_run("rigl", 12, density=0.3, distribution="uniform", update_interval=3,
                                total_steps=30, alpha=0.5)
    assert m.state.step == 12
    for n, p in m.params.items():
        assert torch.all(p.detach()[~m.state.masks[n]] == 0)
        assert torch.all(opt.state[p]["momentum_buffer"][~m.state.masks[n]] == 0)


@pytest.mark.parametrize("name,cfg", [
    ("rigl", dict(density=0.3, distribution="uniform", update_interval=3, total_steps=30, alpha=0.5)),
    ("iee", dict(density=0.3, distribution="uniform", H=3, J=1, Q=2, total_steps=30, criterion="taylor")),
    ("optg", dict(density=0.3, epoch_steps=3, total_steps=30)),
])
@pytest.mark.parametrize("optimizer", sorted(AMP_OPTIMIZERS))
def test_a_step_the_scaler_skips_changes_nothing(name, cfg, optimizer):
    # step 3 is an update step (RigL), an accumulation step (IEE's taylor scores) and
    # the end of an epoch (OptG): the skipped one must leave every byte as it was
    m, model, opt, history = _amp_run(name, 5, overflow_at=(3,), optimizer=optimizer, **cfg)
    before, after = history[2]
    _assert_same(before, after)
    assert m.state.step == 4   # 5 calls, one skipped
    if name == "rigl":         # the update of step 3 happened on the next step taken
        assert [r["step"] for r in m.pop_metrics() if r["event"] == "update"] == [3]


def test_clip_grad_norm_clips_the_masked_gradient_and_growth_sees_the_dense_one():
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = _rigl(model, opt, density=0.1)
    for step in range(1, 3):
        opt.zero_grad()
        _loss(model, step).backward()
        m.step()
    opt.zero_grad()
    _loss(model, 3).backward()           # step 3 is an update step
    dense = {n: p.grad.clone() for n, p in model.named_parameters()}
    masked = {n: g * m.state.masks[n] if n in m.state.masks else g for n, g in dense.items()}
    want = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in masked.values()]))
    dense_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in dense.values()]))
    assert dense_norm > want + 1e-2      # clipping the dense gradient would over-clip
    total = m.clip_grad_norm_(0.1)
    assert torch.allclose(total, want)
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert torch.allclose(after, torch.tensor(0.1), rtol=1e-4)
    for n in m.names:                    # growth scores come from the dense gradient
        assert torch.equal(m._grow_scores[n], dense[n].abs())
    m.step()                             # the pre-hook does not mask or read again
    assert m.state.step == 3


def test_mask_gradients_runs_once_per_backward():
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = _rigl(model, opt)
    calls = []
    orig = m.before_step
    m.before_step = lambda step: (calls.append(step), orig(step))
    _loss(model, 1).backward()
    m.mask_gradients()
    m.mask_gradients()
    opt.step()
    assert calls == [1]
    opt.zero_grad(set_to_none=False)     # same gradient tensors, a new backward
    _loss(model, 2).backward()
    opt.step()
    assert calls == [1, 2]


def test_adam_with_zero_eps_keeps_inactive_weights_zero_not_nan():
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=0.0)
    assert not regrow.optim.preserves_zeros(opt)
    m = regrow.create("static", model, opt, density=0.3)
    for step in range(1, 6):
        opt.zero_grad()
        _loss(model, step).backward()
        m.step()
        for n, p in m.params.items():
            assert torch.all(p.detach()[~m.state.masks[n]] == 0), n


def test_methods_without_optimizer_raise_a_clear_error_on_step():
    for name, cfg in (("iee", dict(H=2, J=2, Q=2, total_steps=40)), ("static", {})):
        m = regrow.create(name, TinyMLP(), None, **cfg)
        with pytest.raises(ValueError, match="without an optimizer"):
            m.step()


def test_one_optimizer_drives_one_method():
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = regrow.create("static", model, opt, density=0.5)
    with pytest.raises(ValueError, match="already drives regrow method 'static'.*detach"):
        regrow.create("static", model, opt, density=0.5)
    first.detach()
    second = regrow.create("static", model, opt, density=0.5)
    _loss(model, 1).backward()
    opt.step()
    assert second.state.step == 1 and first.state.step == 0


def test_a_sparse_weight_missing_from_the_optimizer_is_named():
    model = TinyMLP()
    opt = torch.optim.SGD(list(model.fc1.parameters()) + list(model.fc3.parameters()), lr=0.1)
    with pytest.raises(ValueError, match=r"not in the optimizer: .*fc2.weight"):
        regrow.create("static", model, opt, density=0.5)


@pytest.mark.parametrize("name,cfg,match", [
    ("rigl", dict(total_steps=50), "no structure update will happen"),
    ("dst_ee", dict(total_steps=50), "no structure update will happen"),
    ("set", dict(total_steps=120, update_interval=100), "no structure update will happen"),
    ("gmp", dict(total_steps=50), "one-shot"),
    ("optg", dict(total_steps=50, epoch_steps=50), "never changes"),
])
def test_settings_that_make_a_method_idle_warn(name, cfg, match):
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=match) as rec:
        regrow.create(name, model, opt, **cfg)
    assert rec[0].filename == __file__   # points at the user's line


@pytest.mark.parametrize("name,cfg", [
    ("rigl", dict(total_steps=1000)), ("gmp", dict(total_steps=1000)),
    ("optg", dict(total_steps=1000, epoch_steps=100)), ("static", {}),
])
def test_working_settings_do_not_warn(name, cfg):
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        regrow.create(name, model, opt, **cfg)


# ---- restore in any order, for every registered method, in a fresh process --------
@pytest.mark.slow
def test_restore_in_either_order_continues_bit_identically(tmp_path):
    from restore_worker import CASES, run_reference

    for name in regrow.METHODS.names():
        assert name in CASES, f"add a restore case for the new method '{name}' in tests/restore_worker.py"
    for name in CASES:
        run_reference(name, tmp_path)
    proc = subprocess.run([sys.executable, str(HERE / "restore_worker.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == {f"{n}/{o}" for n in CASES for o in ("early", "late")}
    bad = {k: v for k, v in report.items() if v != "identical"}
    assert not bad, bad
