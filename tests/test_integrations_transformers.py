"""regrow.integrations.transformers: RegrowCallback + RegrowTrainerMixin under a real
Hugging Face Trainer (CPU, a tiny BERT built from a config; nothing downloaded)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from safetensors.torch import load_file  # noqa: E402
from transformers import (BertConfig, BertForSequenceClassification, Trainer, TrainerCallback,  # noqa: E402
                          TrainingArguments)

from regrow.integrations.transformers import STATE_FILE, RegrowCallback, RegrowTrainer  # noqa: E402

N, BATCH = 64, 8   # 8 optimizer steps per epoch


class Data(torch.utils.data.Dataset):
    def __init__(self, n=N):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 100, (n, 16), generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2))


def _args(out, **kw):
    base = dict(use_cpu=True, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH, max_steps=12,
                learning_rate=1e-3, weight_decay=0.01, report_to=[], disable_tqdm=True, save_strategy="no",
                logging_steps=4, seed=0, dataloader_num_workers=0)
    return TrainingArguments(str(out), **{**base, **kw})


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        yield


def _train(out, callbacks, trainer_cls=RegrowTrainer, eval_data=None, resume=None, **kw):
    tr = trainer_cls(model=tiny_bert(), args=_args(out, **kw), train_dataset=Data(), eval_dataset=eval_data,
                     callbacks=callbacks)
    tr.train(resume_from_checkpoint=resume)
    return tr


def _regrow(tr) -> RegrowCallback:
    return next(c for c in tr.callback_handler.callbacks if isinstance(c, RegrowCallback))


class Probe(TrainerCallback):
    def __init__(self):
        self.trainer = None
        self.steps, self.pre_step_norms, self.pre_step_inactive, self.eval_checks = [], [], [], []
        self.explored_live = []

    def sparsity(self):
        return _regrow(self.trainer).sparsity

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        sp = self.sparsity()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.pre_step_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.pre_step_inactive.append(max(float((sp.params[n].grad * ~m).abs().max())
                                          for n, m in sp.state.masks.items()))

    def on_step_end(self, args, state, control, **kw):
        sp = self.sparsity()
        counts, live = sp.expected_counts(), sp.live_masks()
        for n, p in sp.params.items():
            assert (p[~live[n]] == 0).all(), f"{n}: inactive weights nonzero after step {sp.state.step}"
            assert int(sp.state.masks[n].sum()) == counts[n]
        if sp.state.counters.get("iee.phase") == "explore":   # explored weights are live in training
            self.explored_live.append(any(bool((p[~sp.state.masks[n]] != 0).any()) for n, p in sp.params.items()))
        self.steps.append(sp.state.step)

    def on_prediction_step(self, args, state, control, **kw):
        sp = self.sparsity()
        zero = all(bool((p[~sp.state.masks[n]] == 0).all()) for n, p in sp.params.items())
        self.eval_checks.append((sp.state.counters.get("iee.phase"), zero))


def _probe_on(tr_cls):
    probe = Probe()

    class T(tr_cls):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            probe.trainer = self
    return probe, T


def test_masks_exact_after_every_step_and_updates_on_schedule(tmp_path):
    probe, T = _probe_on(RegrowTrainer)
    cb = RegrowCallback("rigl", density=0.2, update_interval=3)
    tr = _train(tmp_path, [cb, probe], trainer_cls=T)
    sp = cb.sparsity
    assert sp.config.total_steps == 12 and probe.steps == list(range(1, 13))   # state.max_steps
    assert [r["step"] for r in cb.records] == [3, 6]                           # T_end = 9
    assert sp.names and not any("embeddings" in n for n in sp.names)          # Linear weights only
    assert all("attention" in n or "dense" in n or "classifier" in n for n in sp.names)
    logged = [h for h in tr.state.log_history if "regrow/density" in h]
    assert logged and logged[0]["regrow/density"] == pytest.approx(0.2, abs=0.01)
    assert any("regrow/update/n_grown" in h for h in logged)


def test_gradient_accumulation_steps_the_method_once_per_optimizer_step(tmp_path):
    probe, T = _probe_on(RegrowTrainer)
    cb = RegrowCallback("rigl", density=0.2, update_interval=2)
    _train(tmp_path, [cb, probe], trainer_cls=T, gradient_accumulation_steps=2, max_steps=4)
    assert probe.steps == [1, 2, 3, 4] and cb.sparsity.config.total_steps == 4
    assert [r["step"] for r in cb.records] == [2]   # T_end = 3
    assert max(probe.pre_step_inactive) == 0.0


def test_optg_epoch_steps_follow_the_trainer(tmp_path):
    cb = RegrowCallback("optg", density=0.2)
    _train(tmp_path, [cb], max_steps=2)
    assert cb.sparsity.config.epoch_steps == N // BATCH and cb.sparsity.config.total_steps == 2


def test_max_grad_norm_clips_the_masked_gradient(tmp_path):
    probe, T = _probe_on(RegrowTrainer)
    clip = 0.01
    tr = _train(tmp_path, [RegrowCallback("rigl", density=0.2, update_interval=5), probe], trainer_cls=T,
                max_grad_norm=clip, max_steps=6, logging_steps=1)
    assert max(probe.pre_step_inactive) == 0.0
    # clipped to exactly max_grad_norm: clipping the dense gradient, then masking, leaves less
    assert probe.pre_step_norms == pytest.approx([clip] * 6, rel=1e-4)
    # the logged grad_norm is the norm of the masked gradient before clipping
    assert all(h["grad_norm"] > clip for h in tr.state.log_history if "grad_norm" in h)


IEE = {"density": 0.2, "H": 1, "J": 1, "Q": 2, "end_fraction": 1.0}   # explore after steps 1–2, 5–6, 9–10


def test_evaluation_hides_iee_explored_weights(tmp_path):
    probe, T = _probe_on(RegrowTrainer)
    cb = RegrowCallback("iee", **IEE)
    _train(tmp_path, [cb, probe], trainer_cls=T, eval_data=Data(16), eval_strategy="steps", eval_steps=1,
                max_steps=4)
    assert "explore" in [ph for ph, _ in probe.eval_checks] and all(z for _, z in probe.eval_checks)
    # evaluation ran between steps 1 and 2 and gave the explored values back to training
    assert probe.explored_live and all(probe.explored_live)


RESUME = {"iee": IEE, "rigl": {"density": 0.2, "update_interval": 2},
          "optg": {"density": 0.2, "epoch_steps": 3}}   # OptG: its own score optimizer (AdamW's class)


@pytest.mark.parametrize("method", sorted(RESUME))
def test_train_resume_from_checkpoint_is_bit_identical(method, tmp_path):
    opts = RESUME[method]
    full_cb = RegrowCallback(method, **opts)
    full = _train(tmp_path, [full_cb], save_strategy="steps", save_steps=6)
    ckpt = tmp_path / "checkpoint-6"   # mid-epoch; for IEE mid Reactivate & Explore
    assert (ckpt / STATE_FILE).is_file()

    cb = RegrowCallback(method, **opts)
    resumed = _train(tmp_path / "again", [cb], save_strategy="no", resume=str(ckpt))
    assert cb.sparsity.state.step == full_cb.sparsity.state.step == 12
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n
    for n, m in full_cb.sparsity.state.masks.items():
        assert torch.equal(m, cb.sparsity.state.masks[n]), n

    saved = torch.load(ckpt / STATE_FILE, weights_only=True)
    if method == "iee":
        assert saved["sparsity"]["state"]["counters"]["iee.phase"] == "explore"
        weights = load_file(str(ckpt / "model.safetensors"))
        sparse = {n: m for n, m in saved["sparsity"]["state"]["masks"].items() if not m.all()}
        assert sparse and set(saved["live"]) == set(sparse)
        for n, m in sparse.items():
            # the checkpoint's model is the sparse model; the explored values ride in STATE_FILE
            assert (weights[n][~m] == 0).all() and (saved["live"][n][~m] != 0).any()
    elif method == "rigl":
        assert saved["live"] == {}
        os.remove(ckpt / STATE_FILE)
        with pytest.raises(FileNotFoundError, match=STATE_FILE):
            _train(tmp_path / "third", [RegrowCallback(method, **opts)], resume=str(ckpt))


def test_plain_trainer_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="RegrowTrainerMixin"):
        _train(tmp_path, [RegrowCallback("rigl", density=0.2)], trainer_cls=Trainer, max_steps=1)


def test_bad_method_or_option_fails_before_training():
    with pytest.raises(ValueError, match="nope"):
        RegrowCallback("nope")
    with pytest.raises(ValueError, match="densty"):
        RegrowCallback("rigl", densty=0.1)


def test_a_step_the_grad_scaler_skips_inside_the_fused_adamw_changes_nothing(tmp_path):
    # The Trainer's default optimizer is fused AdamW: GradScaler calls its step() on an
    # overflow too, with found_inf set, and the optimizer skips the update itself. (Found on
    # an H200 by the CUDA test below; here a CPU GradScaler stands in for fp16's.)
    class Overflow(RegrowTrainer):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)

        def compute_loss(self, model, inputs, *a, **k):
            loss = super().compute_loss(model, inputs, *a, **k)
            return loss * float("inf") if self.state.global_step == 3 else loss

    probe, T = _probe_on(Overflow)
    cb = RegrowCallback("rigl", density=0.2, update_interval=2)
    tr = T(model=tiny_bert(), args=_args(tmp_path, max_steps=6), train_dataset=Data(), callbacks=[cb, probe])
    tr.train()
    assert getattr(tr.optimizer.optimizer, "_step_supports_amp_scaling", False)   # fused
    assert tr.optimizer.scaler is tr.accelerator.scaler
    assert cb.sparsity.state.step == 5 and probe.steps == [1, 2, 3, 3, 4, 5]
    assert [r["step"] for r in cb.records] == [2]   # T_end = 0.75 × 6: the same as without the overflow
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="the Trainer's fp16 GradScaler runs on CUDA only (Accelerate has no CPU fp16 scaler)")
def test_fp16_skipped_step_changes_nothing_cuda(tmp_path):
    class Overflow(RegrowTrainer):
        def compute_loss(self, model, inputs, *a, **k):
            loss = super().compute_loss(model, inputs, *a, **k)
            return loss * float("inf") if self.state.global_step == 3 else loss

    probe, T = _probe_on(Overflow)
    cb = RegrowCallback("rigl", density=0.2, update_interval=2)
    tr = T(model=tiny_bert(), args=_args(tmp_path, use_cpu=False, fp16=True, max_steps=6),
           train_dataset=Data(), callbacks=[cb, probe])
    tr.train()
    assert tr.accelerator.scaler is not None
    assert cb.sparsity.state.step == 5 and probe.steps == [1, 2, 3, 3, 4, 5]
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


@pytest.mark.slow
def test_missing_transformers_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['transformers'] = None\n"
        "try:\n"
        "    import regrow.integrations.transformers\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'regrow[transformers]'\" in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


class SpikyTrainer(RegrowTrainer):
    """A 1000× loss at one step: the kind of jump IEE's Reactivate & Explore made."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        return loss * 1000.0 if self.state.global_step == 6 else loss


def test_a_logged_loss_spike_warns_once_and_reaches_the_logs(tmp_path):
    with pytest.warns(UserWarning, match=r"training loss jumped to .* at step 7 "):
        tr = _train(tmp_path, [RegrowCallback("static", density=0.5)], trainer_cls=SpikyTrainer, logging_steps=1)
    spikes = [r for r in _regrow(tr).records if r.get("event") == "loss_spike"]
    assert len(spikes) == 1 and spikes[0]["step"] == 7
    assert [h["regrow/loss_spike/loss"] for h in tr.state.log_history if "regrow/loss_spike/loss" in h] == [
        spikes[0]["loss"]]


def test_an_ordinary_run_logs_no_loss_spike(tmp_path):
    tr = _train(tmp_path, [RegrowCallback("rigl", density=0.2, update_interval=2)], logging_steps=1)
    assert not [r for r in _regrow(tr).records if r.get("event") == "loss_spike"]
