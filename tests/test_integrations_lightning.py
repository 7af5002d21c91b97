"""regrow.integrations.lightning: RegrowCallback under a real Lightning Trainer (CPU,
a tiny MLP; nothing downloaded)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402

import regrow  # noqa: E402
from regrow.integrations.lightning import RegrowCallback  # noqa: E402

BATCHES, BATCH = 3, 16   # 3 optimizer steps per epoch


class Net(L.LightningModule):
    def __init__(self, overflow_at: int = -1):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        self.overflow_at = overflow_at
        self.val_checks = []   # (phase, every sparse weight zero outside Θ_K) per validation batch

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.trainer.global_step == self.overflow_at:
            loss = loss * float("inf")   # the GradScaler finds inf gradients and skips this step
        return loss

    def validation_step(self, batch, batch_idx):
        sp = _callback(self.trainer).sparsity
        zero = all(bool((p[~sp.state.masks[n]] == 0).all()) for n, p in sp.params.items())
        self.val_checks.append((sp.state.counters.get("iee.phase"), zero))
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def _callback(trainer) -> RegrowCallback:
    return next(c for c in trainer.callbacks if isinstance(c, RegrowCallback))


def _data(n=BATCHES * BATCH):
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g))
    return DataLoader(ds, batch_size=BATCH)


def _trainer(callbacks, **kw):
    kw = {"max_epochs": 4, "logger": False, "enable_checkpointing": False, **kw}
    return L.Trainer(accelerator="cpu", devices=1, callbacks=callbacks, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kw)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|Loading `train_dataloader`|"
                                "LitLogger|litmodels|GPU available|TPU available|val_check_interval).*")
        yield


class Probe(Callback):
    """After each optimizer step: the sparse weights' state, as the callback left it."""

    def __init__(self):
        self.steps, self.params = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.params.append([p.detach().clone() for p in pl_module.parameters()])
        sp = _callback(trainer).sparsity
        counts = sp.expected_counts()
        for n, p in sp.params.items():
            m = sp.state.masks[n]
            assert (p[~m] == 0).all(), f"{n}: inactive weights nonzero after step {sp.state.step}"
            assert int(m.sum()) == counts[n]
        self.steps.append(sp.state.step)


def test_masks_exact_after_every_step_and_updates_on_schedule():
    probe, cb = Probe(), RegrowCallback("rigl", density=0.2, update_interval=2)
    _trainer([cb, probe]).fit(Net(), _data())
    sp = cb.sparsity
    # total_steps from trainer.estimated_stepping_batches: 4 epochs × 3 steps
    assert sp.config.total_steps == 12 and probe.steps == list(range(1, 13))
    assert [r["step"] for r in cb.records if r.get("event") == "update"] == [2, 4, 6, 8]   # T_end = 9
    assert sp.density() == pytest.approx(0.2, abs=0.01)


def test_optg_epoch_steps_from_the_loader():
    cb = RegrowCallback("optg", density=0.2)
    _trainer([cb, Probe()]).fit(Net(), _data())
    assert cb.sparsity.config.epoch_steps == BATCHES and cb.sparsity.config.total_steps == 12


class GradNorms(Callback):
    """The masked gradient before clipping (this hook runs after RegrowCallback's, before
    Lightning clips) and the applied gradient after the step."""

    def __init__(self):
        self.before, self.applied, self.inactive_max = [], [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.masks = {n: m.clone() for n, m in _callback(trainer).sparsity.state.masks.items()}
        self.before.append(_norm(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.applied.append(_norm(pl_module))
        sp = _callback(trainer).sparsity
        self.inactive_max.append(max(float((sp.params[n].grad * ~m).abs().max()) for n, m in self.masks.items()))


def _norm(module) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()
                                                       if p.grad is not None])))


def test_gradient_clipping_clips_the_masked_gradient():
    clip, norms = 0.05, GradNorms()
    _trainer([RegrowCallback("rigl", density=0.2, update_interval=5), norms], max_epochs=2,
             gradient_clip_val=clip).fit(Net(), _data())
    assert max(norms.inactive_max) == 0.0          # what is applied is masked
    assert all(b > clip for b in norms.before)     # so every step clips
    # the applied norm is the clip value: clipping the dense gradient and masking after
    # would leave it at clip · |masked| / |dense| < clip
    assert norms.applied == pytest.approx([clip] * len(norms.applied), rel=1e-4)


def test_validation_runs_inside_evaluation_with_iee_mid_explore():
    seen = []

    class Live(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sp = _callback(trainer).sparsity
            if sp.state.counters["iee.phase"] == "explore":   # explored weights live again
                seen.append(sum(int((p != 0).sum()) for p in sp.params.values())
                            > sum(int(m.sum()) for m in sp.state.masks.values()))

    net = Net()
    _trainer([RegrowCallback("iee", density=0.2, H=1, J=1, Q=2, end_fraction=1.0), Live()],
             val_check_interval=1).fit(net, _data(), _data())
    phases = [ph for ph, _ in net.val_checks]
    assert "explore" in phases and all(zero for _, zero in net.val_checks)
    assert seen and all(seen)


class Kill(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


METHOD_OPTIONS = {
    "rigl": {"density": 0.2, "update_interval": 2},
    # the epoch-2 checkpoint (after step 6) falls in Reactivate & Explore (steps 6–7)
    "iee": {"density": 0.2, "H": 1, "J": 1, "Q": 2, "end_fraction": 1.0},
    "optg": {"density": 0.2},
}


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_fit_kill_resume_is_bit_identical(method, tmp_path):
    opts = METHOD_OPTIONS[method]
    full_cb, full = RegrowCallback(method, **opts), Net()
    _trainer([full_cb]).fit(full, _data())

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True)
    with pytest.raises(RuntimeError, match="killed"):
        _trainer([RegrowCallback(method, **opts), ckpt, Kill(2)], enable_checkpointing=True).fit(Net(), _data())
    path = tmp_path / "epoch=1-step=6.ckpt"
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=3.ckpt", path.name]

    cb, resumed = RegrowCallback(method, **opts), Net()
    _trainer([cb]).fit(resumed, _data(), ckpt_path=str(path))
    assert cb.sparsity.state.step == full_cb.sparsity.state.step == 12
    for (n, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n
    for n, m in full_cb.sparsity.state.masks.items():
        assert torch.equal(m, cb.sparsity.state.masks[n]), n
    sa, sb = full.trainer.optimizers[0].state_dict(), resumed.trainer.optimizers[0].state_dict()
    for k, st in sa["state"].items():
        assert torch.equal(st["momentum_buffer"], sb["state"][k]["momentum_buffer"])

    if method == "iee":
        saved = torch.load(path, weights_only=True)
        state = saved["callbacks"][cb.state_key]
        assert state["sparsity"]["state"]["counters"]["iee.phase"] == "explore"
        masks = {n: m for n, m in state["sparsity"]["state"]["masks"].items() if not m.all()}
        assert masks and set(state["live"]) == set(masks)   # explored values kept for the resume ...
        for n, m in masks.items():                          # ... while the checkpoint's model is sparse
            assert (saved["state_dict"][n][~m] == 0).all() and (state["live"][n][~m] != 0).any()


def test_amp_gradscaler_skipped_step_changes_nothing():
    from lightning.pytorch.plugins import MixedPrecision

    probe, cb = Probe(), RegrowCallback("rigl", density=0.2, update_interval=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    net = Net(overflow_at=4)   # the 5th batch overflows
    _trainer([cb, probe], max_epochs=2, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)]).fit(net, _data())
    sp = cb.sparsity
    # 6 batches, one skipped: the optimizer (and the method) took 5 steps
    assert sp.state.step == 5 and probe.steps == [1, 2, 3, 4, 4, 5]
    assert all(torch.equal(a, b) for a, b in zip(probe.params[3], probe.params[4]))   # nothing written
    assert scaler.get_scale() < 2.0 ** 8
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert [r["step"] for r in cb.records if r.get("event") == "update"] == [2]   # T_end = 4


class Capture(Logger):
    def __init__(self):
        super().__init__()
        self.metrics = []

    name, version = "capture", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


def test_structure_updates_reach_the_logger():
    logger = Capture()
    _trainer([RegrowCallback("rigl", density=0.2, update_interval=3)], logger=logger, max_epochs=2).fit(Net(), _data())
    logged = [(s, m) for s, m in logger.metrics if "regrow/density" in m]
    assert [s for s, _ in logged] == [3]   # T_end = 4.5: one update
    assert logged[0][1]["regrow/density"] == pytest.approx(0.2, abs=0.01)
    assert "regrow/update/n_grown" in logged[0][1]


def test_bad_method_or_option_fails_before_training():
    with pytest.raises(ValueError, match="nope"):
        RegrowCallback("nope")
    with pytest.raises(ValueError, match="densty"):
        RegrowCallback("rigl", densty=0.1)
    with pytest.raises(ValueError, match="optimizer_index"):
        RegrowCallback("rigl", optimizer_index=-1)


def test_optimizer_step_with_closure_masks_what_the_closure_computed():
    """Lightning steps through ``optimizer.step(closure)``: the backward runs inside
    step(), after the pre-step hook, so the hook masks after the closure."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    sp = regrow.create("rigl", model, opt, density=0.3, total_steps=20, update_interval=4)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    for i in range(6):
        masks = {n: m.clone() for n, m in sp.state.masks.items()}

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure) if i % 2 else opt.step(closure=closure)
        for n, p in sp.params.items():
            assert (p.grad[~masks[n]] == 0).all() and (p[~sp.state.masks[n]] == 0).all()
    assert sp.state.step == 6 and [r["step"] for r in sp.pop_metrics()] == [4]


@pytest.mark.slow
def test_import_regrow_imports_no_framework_and_missing_lightning_names_the_extra():
    code = (
        "import sys\n"
        "import regrow, regrow.integrations\n"
        "assert 'lightning' not in sys.modules and 'transformers' not in sys.modules, 'framework imported'\n"
        "sys.modules['lightning'] = None\n"
        "sys.modules['lightning.pytorch'] = None\n"
        "try:\n"
        "    import regrow.integrations.lightning\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'regrow[lightning]'\" in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


def test_resuming_a_longer_run_warns_that_schedules_follow_the_new_length(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True)
    _trainer([RegrowCallback("rigl", density=0.2, update_interval=2), ckpt], max_epochs=2,
             enable_checkpointing=True).fit(Net(), _data())
    cb = RegrowCallback("rigl", density=0.2, update_interval=2)
    with pytest.warns(UserWarning, match="total_steps=6 then, 9 now"):
        _trainer([cb], max_epochs=3).fit(Net(), _data(), ckpt_path=str(tmp_path / "epoch=1-step=6.ckpt"))
    assert cb.sparsity.state.step == 9 and cb.sparsity.config.total_steps == 9


def test_lr_clock_under_a_framework_scheduler_warns_that_it_has_no_effect():
    from regrow.integrations.protocol import Fit, SparsityCallback
    from regrow.methods.base import RunFacts
    core = SparsityCallback("iee", H=2, J=2, Q=2, lr_clock="trained")
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="lr_clock='trained' .* no effect"):
        core.on_fit_start(Fit(model, opt, RunFacts(total_steps=40)))
    # regrow's own Trainer applies lr_step: no warning there
    own = SparsityCallback("iee", H=2, J=2, Q=2, lr_clock="trained", framework_lr=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        own.on_fit_start(Fit(model, torch.optim.SGD(model.parameters(), lr=0.1), RunFacts(total_steps=40)))


class SpikeNet(Net):
    """Returns a 1000× loss at one step: the kind of jump IEE's Reactivate & Explore made."""

    def __init__(self, spike_at: int):
        super().__init__()
        self.spike_at = spike_at

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1000.0 if self.trainer.global_step == self.spike_at else loss


def test_a_loss_spike_warns_once_and_reaches_the_logger():
    logger, cb = Capture(), RegrowCallback("static", density=0.5)
    with pytest.warns(UserWarning, match=r"training loss jumped to .* at step 7 "):
        _trainer([cb], logger=logger, log_every_n_steps=1).fit(SpikeNet(spike_at=6), _data())
    spikes = [r for r in cb.records if r.get("event") == "loss_spike"]
    assert len(spikes) == 1 and spikes[0]["step"] == 7   # the step count after the spiked step
    assert any("regrow/loss_spike/loss" in m for _, m in logger.metrics)


def test_an_ordinary_fit_reports_no_loss_spike():
    cb = RegrowCallback("rigl", density=0.2, update_interval=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "training loss jumped")
        _trainer([cb], log_every_n_steps=1).fit(Net(), _data())
    assert not [r for r in cb.records if r.get("event") == "loss_spike"]
