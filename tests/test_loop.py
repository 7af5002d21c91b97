"""The training loop: LR schedule, optimizer groups, run directory, exact resume,
gradient accumulation, NaN stop, pretrained start, SNIP calibration."""
from __future__ import annotations

import json
import math

import pytest
import torch

from regrow.train import checkpoint as ckpt
from regrow.train import config as C
from regrow.train.loop import NonFiniteLoss, StepSchedule, lr_factor, param_groups, train

TINY = {
    "model": "mlp", "model_options": {"hidden": [16, 16]}, "data": "synthetic",
    "synthetic": {"shape": [1, 16], "num_classes": 4, "train_size": 96, "test_size": 32},
    "epochs": 2, "batch_size": 16, "log_every": 2, "quiet": True, "device": "cpu",
    "method": "rigl", "method_options": {"update_interval": 2}, "density": 0.25,
}


def tiny(tmp_path, name="run", **kw):
    if kw.get("method", "rigl") not in ("rigl", "set"):
        kw.setdefault("method_options", {})
    return C.build({**TINY, **kw, "out": str(tmp_path / name)})


def lines(run):
    return (run / "metrics.jsonl").read_text().splitlines()


# ---- pure pieces ----------------------------------------------------------------
def test_step_schedule_sets_the_lambda_lr_values_and_survives_optimizer_reload():
    def factor(t):
        return lr_factor(t, schedule="warmup-cosine", total_steps=12, warmup_steps=3, step_size=1, gamma=1.0)

    def make():
        a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        return torch.optim.SGD([{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.5}], lr=0.1)

    ours, ref = make(), make()
    sched, lam = StepSchedule(ours, factor), torch.optim.lr_scheduler.LambdaLR(ref, factor)
    for step in range(12):
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in ref.param_groups], step
        ref.step()
        lam.step()
        sched.set(step + 1)
    # resume: a fresh optimizer + the saved state keeps the base LRs (``initial_lr``)
    again = make()
    resumed = StepSchedule(again, factor)
    again.load_state_dict(ours.state_dict())
    resumed.set(7)
    assert [g["lr"] for g in again.param_groups] == [0.1 * factor(7), 0.5 * factor(7)]


def test_lr_factor_golden_values():
    kw = dict(total_steps=10, warmup_steps=0, step_size=3, gamma=0.2)
    assert lr_factor(0, schedule="cosine", **kw) == 1.0
    assert lr_factor(5, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_factor(10, schedule="cosine", **kw) == pytest.approx(0.0)
    assert [lr_factor(s, schedule="step", **kw) for s in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.2, 0.04])
    assert lr_factor(7, schedule="constant", **kw) == 1.0
    warm = dict(kw, warmup_steps=4)
    assert [lr_factor(s, schedule="warmup-cosine", **warm) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # after warm-up the cosine runs over the remaining 6 steps: half-way at step 7
    assert lr_factor(7, schedule="warmup-cosine", **warm) == pytest.approx(0.5)


def test_param_groups_skip_norm_and_bias():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    one = param_groups(m, 1e-4, False)
    assert len(one) == 1 and len(one[0]["params"]) == 6
    decay, rest = param_groups(m, 1e-4, True)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3]), torch.Size([2, 4])]
    assert decay["weight_decay"] == 1e-4 and rest["weight_decay"] == 0.0 and len(rest["params"]) == 4


# ---- end to end -----------------------------------------------------------------
def test_run_directory_has_every_file_and_key(tmp_path):
    cfg = tiny(tmp_path)
    summary = train(cfg)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt",
                 "plots/loss.png", "plots/accuracy.png", "plots/density.png", "plots/structure.png"):
        assert (run / name).is_file(), name
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("method", "model", "data", "target_density", "final_density", "per_layer_density",
                "test_top1", "steps", "wall_seconds", "seed", "regrow_version", "torch_version"):
        assert key in on_disk, key
    assert on_disk["steps"] == 12 and on_disk["target_density"] == 0.25
    assert on_disk["final_density"] == pytest.approx(0.25, abs=1e-3)
    assert 0.0 <= on_disk["test_top1"] <= 1.0
    records = [json.loads(x) for x in lines(run)]
    events = {r["event"] for r in records}
    assert {"train", "epoch", "update"} <= events
    for r in records:
        assert {"step", "epoch", "event"} <= set(r)
    train_recs = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train_recs] == list(range(2, 13, 2))
    assert all({"loss", "lr", "batch_acc", "density"} <= set(r) for r in train_recs)
    ep = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in ep] == [1, 2] and all({"test_acc", "train_loss"} <= set(r) for r in ep)
    upd = [r for r in records if r["event"] == "update"]
    assert upd and all("iou_grow" in r for r in upd)
    assert C.load_yaml(str(run / "config.yaml")) == cfg.to_dict()
    assert ckpt.load(run / "checkpoint.pt")["loop"]["step"] == 12


def test_existing_run_directory_is_not_overwritten_silently(tmp_path):
    train(tiny(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="regrow resume"):
        train(tiny(tmp_path, epochs=1))
    train(tiny(tmp_path, epochs=1), overwrite=True)


@pytest.mark.parametrize("method,stop", [("rigl", 7), ("iee", 5)])
def test_resume_mid_epoch_is_bit_identical(tmp_path, method, stop):
    opts = {"update_interval": 2} if method == "rigl" else {"H": 1, "J": 1, "Q": 1}
    kw = dict(method=method, method_options=opts, deterministic=True, epochs=3)
    train(tiny(tmp_path, "full", **kw))
    part = tiny(tmp_path, "part", **kw)
    assert train(part, stop_after_steps=stop) == {"stopped_at_step": stop}
    assert ckpt.load(tmp_path / "part" / "checkpoint.pt")["loop"]["epoch_step"] == stop % 6
    train(part, resume=True)
    assert lines(tmp_path / "full") == lines(tmp_path / "part")
    a = ckpt.load(tmp_path / "full" / "checkpoint.pt")
    b = ckpt.load(tmp_path / "part" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, m in a["method"]["state"]["masks"].items():
        assert torch.equal(m, b["method"]["state"]["masks"][k]), k
    for k, m in a["method"]["state"]["dormant"].items():
        assert torch.equal(m, b["method"]["state"]["dormant"][k]), k
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("full", "part"))
    assert sa["test_top1"] == sb["test_top1"] and sa["steps"] == sb["steps"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """Mean of two half-batch losses = loss of the full batch: same steps, same weights."""
    kw = dict(deterministic=True, epochs=1, method="static", momentum=0.0, weight_decay=0.0)
    train(tiny(tmp_path, "one", **kw))
    train(tiny(tmp_path, "two", grad_accum=2, **kw))
    a = ckpt.load(tmp_path / "one" / "checkpoint.pt")["model"]
    b = ckpt.load(tmp_path / "two" / "checkpoint.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    la = [json.loads(x) for x in lines(tmp_path / "one")]
    lb = [json.loads(x) for x in lines(tmp_path / "two")]
    assert [r["step"] for r in la] == [r["step"] for r in lb]


def test_grad_accum_must_divide_the_batch(tmp_path):
    with pytest.raises(ValueError, match="multiple of world size x grad_accum"):
        train(tiny(tmp_path, grad_accum=3))


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    cfg = tiny(tmp_path, method="static", lr=1e12, momentum=0.0, weight_decay=0.0, epochs=3)
    train(cfg, stop_after_steps=1)
    path = tmp_path / "run" / "checkpoint.pt"
    before = path.read_bytes()
    with pytest.raises(NonFiniteLoss, match=r"at step \d+ \(epoch 1\).*last good checkpoint"):
        train(cfg, resume=True)
    assert path.read_bytes() == before
    assert ckpt.load(path)["loop"]["step"] == 1
    assert not (tmp_path / "run" / "summary.json").exists()


def test_pretrained_weights_are_the_starting_point(tmp_path):
    train(tiny(tmp_path, "dense", method="dense", method_options={}, epochs=1))
    src = tmp_path / "dense" / "checkpoint.pt"
    # lr so small that the run cannot move the weights: the result is pretrained ⊙ mask
    cfg = tiny(tmp_path, "fine", method="static", method_options={}, epochs=1, lr=1e-30,
               weight_decay=0.0, pretrained=str(src))
    train(cfg)
    pre = ckpt.load(src)["model"]
    out = ckpt.load(tmp_path / "fine" / "checkpoint.pt")
    masks = out["method"]["state"]["masks"]
    for k, w in out["model"].items():
        expect = pre[k] * masks[k] if k in masks else pre[k]
        torch.testing.assert_close(w, expect)


def test_pretrained_for_another_model_is_rejected(tmp_path):
    train(tiny(tmp_path, "dense", method="dense", method_options={}, epochs=1))
    cfg = tiny(tmp_path, "x", model_options={"hidden": [8]},
               pretrained=str(tmp_path / "dense" / "checkpoint.pt"))
    with pytest.raises(ValueError, match="does not fit model mlp"):
        train(cfg)


def test_snip_is_calibrated_by_the_loop(tmp_path):
    s = train(tiny(tmp_path, method="snip", method_options={"calibration_batches": 2}, epochs=1))
    assert s["final_density"] == pytest.approx(0.25, abs=1e-3)
    assert math.isfinite(s["test_loss"])


def test_amp_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the CPU-only error path needs a machine without CUDA")
    with pytest.raises(ValueError, match="amp .* needs a CUDA device"):
        train(tiny(tmp_path, amp=True))


def test_no_decay_and_adamw_and_step_schedule_run(tmp_path):
    s = train(tiny(tmp_path, optimizer="adamw", lr=1e-3, no_decay_norm_bias=True, schedule="step",
                   lr_step_size=3, lr_gamma=0.5, label_smoothing=0.1, epochs=1))
    lrs = [json.loads(x)["lr"] for x in lines(tmp_path / "run") if '"train"' in x]
    # LR used by steps 2, 4, 6 (0-based 1, 3, 5): γ^⌊i/3⌋
    assert lrs == pytest.approx([1e-3, 5e-4, 5e-4])
    assert s["steps"] == 6


def test_channel_methods_get_the_sample_shape_from_the_data(tmp_path):
    """iee_channel traces the model on one sample: the loop passes the dataset's shape."""
    s = train(tiny(tmp_path, method="iee_channel", structure="channel", model="resnet20", model_options={},
                   synthetic={"shape": [3, 8, 8], "num_classes": 4, "train_size": 96, "test_size": 32},
                   method_options={"cost": "flops", "H": 2, "J": 1, "Q": 1, "end_fraction": 0.75}, epochs=2))
    assert s["steps"] == 12 and s["final_density"] < 1.0
    saved = ckpt.load(tmp_path / "run" / "checkpoint.pt")["method"]["config"]
    assert tuple(saved["input_shape"]) == (3, 8, 8)


# ---- integration: evaluation, pretraining cost, data seed, structured runs ----------
def _records(run, event):
    return [json.loads(x) for x in lines(run) if json.loads(x)["event"] == event]


def test_evaluation_mid_explore_scores_theta_k_and_leaves_training_alone(tmp_path):
    """IEE H=2, J=2, Q=4: steps 4-7 are Reactivate & Explore, so epoch 1 (6 steps) ends in it."""
    from regrow.train.data import load_dataset
    from regrow.train.distributed import Context
    from regrow.train.loop import evaluate
    from regrow.train.models import build_model

    kw = dict(method="iee", method_options={"H": 2, "J": 2, "Q": 4}, deterministic=True, epochs=3)
    train(tiny(tmp_path, "every", eval_every=1, **kw))
    train(tiny(tmp_path, "last", eval_every=3, **kw))
    train(tiny(tmp_path, "cut", **kw), stop_after_steps=6)
    a = ckpt.load(tmp_path / "every" / "checkpoint.pt")["model"]
    b = ckpt.load(tmp_path / "last" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # evaluating changed nothing
    assert _records(tmp_path / "every", "method") == _records(tmp_path / "last", "method")
    # epoch 1's score is that of the model holding only Θ_K
    cut = ckpt.load(tmp_path / "cut" / "checkpoint.pt")
    assert cut["method"]["state"]["counters"]["iee.phase"] == "explore"
    bundle = load_dataset("synthetic", None, seed=0, synthetic=TINY["synthetic"])
    loader = torch.utils.data.DataLoader(bundle.test, batch_size=512)
    ctx = Context(0, 1, 0, torch.device("cpu"))

    def score(masked):
        model = build_model("mlp", bundle.input_shape, bundle.num_classes, hidden=[16, 16])
        masks = cut["method"]["state"]["masks"]
        model.load_state_dict({k: v * masks[k] if masked and k in masks else v for k, v in cut["model"].items()})
        return evaluate(model, loader, ctx, amp=False, channels_last=False, num_classes=4)

    logged = _records(tmp_path / "every", "epoch")[0]
    theta_k = score(masked=True)
    assert logged["test_loss"] == pytest.approx(theta_k["test_loss"], rel=1e-6)
    assert logged["test_acc"] == theta_k["test_acc"]
    assert score(masked=False)["test_loss"] != pytest.approx(theta_k["test_loss"], rel=1e-6)


def test_pretrained_runs_count_the_dense_pretraining_flops(tmp_path):
    """IEE appendix §3: pruning from a pretrained model adds 3·ζ_D per pre-training sample."""
    train(tiny(tmp_path, "dense", method="dense", method_options={}, epochs=1))  # 96 samples
    src = str(tmp_path / "dense" / "checkpoint.pt")
    base = train(tiny(tmp_path, "scratch", method="static", method_options={}, epochs=2))
    s = train(tiny(tmp_path, "fine", method="static", method_options={}, epochs=2, pretrained=src))
    flag = train(tiny(tmp_path, "flag", method="static", method_options={}, epochs=2, pretrained=src,
                      pretrained_epochs=0.5))
    zp, zd, samples = s["inference_flops"], s["dense_inference_flops"], 2 * 96
    assert base["train_flops_relative"] == pytest.approx(zp / zd)
    assert base["train_flops_executed_relative"] == pytest.approx(1.0)  # masked dense kernels
    assert s["train_flops_relative"] == pytest.approx((zp * samples + zd * 96) / (zd * samples))
    assert flag["train_flops_relative"] == pytest.approx((zp * samples + zd * 48) / (zd * samples))
    # a plain state_dict carries no record: only the flag counts
    plain = tmp_path / "plain.pt"
    torch.save(ckpt.load(src)["model"], plain)
    p = train(tiny(tmp_path, "plain", method="static", method_options={}, epochs=2, pretrained=str(plain)))
    assert p["train_flops_relative"] == pytest.approx(zp / zd)


def test_data_seed_is_fixed_across_training_seeds(tmp_path, monkeypatch):
    import regrow.train.data as data

    seen = []
    real = data.load_dataset

    def spy(name, root=None, seed=0, **kw):
        seen.append(seed)
        return real(name, root, seed=seed, **kw)

    monkeypatch.setattr(data, "load_dataset", spy)
    s3 = train(tiny(tmp_path, "s3", method="static", method_options={}, epochs=1, seed=3))
    s5 = train(tiny(tmp_path, "s5", method="static", method_options={}, epochs=1, seed=5))
    s7 = train(tiny(tmp_path, "d7", method="static", method_options={}, epochs=1, seed=3, data_seed=7))
    assert seen == [0, 0, 7]
    assert (s3["data_seed"], s5["data_seed"], s7["data_seed"]) == (0, 0, 7)
    assert C.data_seed(C.build({"data": "mnist1d"})) == 42
    assert C.data_seed(C.build({"data": "mnist1d", "data_seed": 1})) == 1


# ---- the language-model task ----------------------------------------------------------
SAMPLE_FORTUNES = str(__import__("pathlib").Path(__file__).parent / "data" / "fortunes")
LM = {"model": "gpt_tiny", "model_options": {"n_layer": 1, "n_embd": 16, "n_head": 2}, "data": "fortunes",
      "data_root": SAMPLE_FORTUNES, "data_options": {"block_size": 16}, "epochs": 2, "batch_size": 16,
      "optimizer": "adamw", "lr": 0.01, "log_every": 3, "quiet": True, "device": "cpu", "density": 0.1}


@pytest.mark.parametrize("method,structure,opts", [
    ("dense", "unstructured", {}), ("rigl", "unstructured", {"update_interval": 3}),
    ("iee", "unstructured", {"H": 2, "J": 2, "Q": 2}), ("iee", "nm", {"H": 2, "J": 2, "Q": 2})])
def test_the_lm_task_trains_and_reports_validation_perplexity(tmp_path, method, structure, opts):
    pytest.importorskip("transformers")
    cfg = C.build({**LM, "method": method, "structure": structure, "method_options": opts,
                   "out": str(tmp_path / "lm")})
    s = train(cfg)
    assert s["steps"] == 2 * s["steps_per_epoch"] > 4
    assert s["val_perplexity"] == pytest.approx(math.exp(s["test_loss"]))
    assert 1.0 < s["val_perplexity"] < 256.0  # better than a uniform guess over bytes after a few steps
    target = {"dense": 1.0, "nm": 0.5}.get(method if method == "dense" else structure, 0.1)
    assert s["final_density"] == pytest.approx(target, abs=2e-3)
    epochs = [r for r in map(json.loads, lines(tmp_path / "lm")) if r["event"] == "epoch"]
    assert [("val_perplexity" in r) for r in epochs] == [True, True]
    on_disk = json.loads((tmp_path / "lm" / "summary.json").read_text())
    assert on_disk["val_perplexity"] == s["val_perplexity"]


def test_the_lm_task_resumes_bit_identically(tmp_path):
    pytest.importorskip("transformers")
    kw = {**LM, "method": "rigl", "method_options": {"update_interval": 3}, "deterministic": True}
    train(C.build({**kw, "out": str(tmp_path / "full")}))
    part = C.build({**kw, "out": str(tmp_path / "part")})
    train(part, stop_after_steps=7)
    train(part, resume=True)
    assert lines(tmp_path / "full") == lines(tmp_path / "part")
    a, b = (ckpt.load(tmp_path / d / "checkpoint.pt") for d in ("full", "part"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_loop_runs_the_schedule_on_the_methods_lr_step(tmp_path):
    """IEE with lr_clock='trained': the loop evaluates the schedule at method.lr_step
    (Θ_K's clock stands still during Reactivate & Explore, issue 15)."""
    from regrow.methods.iee import iee_cycles, iee_lr_step

    opts = {"H": 2, "J": 2, "Q": 2, "lr_clock": "trained"}
    train(tiny(tmp_path, method="iee", method_options=opts, epochs=4, log_every=1, schedule="cosine"))
    recs = _records(tmp_path / "run", "train")
    total = 24   # 96 samples / 16 per batch × 4 epochs
    cycles = iee_cycles(total, 0.75, 2, 2, 2)
    assert [r["step"] for r in recs] == list(range(1, total + 1))
    # the LR logged at step k is that of optimizer step k − 1
    want = [0.1 * lr_factor(iee_lr_step(k - 1, total, 2, 2, 2, cycles), schedule="cosine", total_steps=total,
                            warmup_steps=0, step_size=1, gamma=1.0) for k in range(1, total + 1)]
    assert [r["lr"] for r in recs] == pytest.approx(want)
    assert len(set(r["lr"] for r in recs)) < total   # it stood still on frozen steps


# ---- the Trainer's phases and its callback protocol -----------------------------------
class Recorder:
    """A user callback on the protocol the integrations use: records each phase."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def record(fit, *args):
            self.calls.append((hook, fit.step))
            if hook == "on_before_optimizer_step":
                # the method masked the gradient before this hook: inactive grads are zero
                sp = fit.sparsity.method
                self.inactive_grad = max(float((sp.params[n].grad * ~m).abs().max())
                                         for n, m in sp.state.masks.items())
            if hook == "on_save_checkpoint":
                args[0]["user_note"] = "kept"
            if hook == "on_fit_end":
                self.summary = args[0]
        return record


def test_trainer_runs_user_callbacks_at_its_named_phases(tmp_path):
    rec = Recorder()
    summary = train(tiny(tmp_path, epochs=2), callbacks=[rec])
    names = [h for h, _ in rec.calls]
    steps = 96 // 16
    assert names[0] == "on_fit_start"
    assert names.count("on_before_optimizer_step") == names.count("on_train_batch_end") == 2 * steps
    assert names.count("on_train_epoch_end") == 2 and names.count("on_validation_start") == 2
    # per epoch: steps, epoch end, validation, checkpoint; then the end of the fit
    epoch = (["on_before_optimizer_step", "on_train_batch_end"] * steps
             + ["on_train_epoch_end", "on_validation_start", "on_validation_end", "on_save_checkpoint"])
    assert names == ["on_fit_start"] + epoch * 2 + ["on_fit_end"]
    # step counts what the optimizer did: before step k it is k - 1, after it k
    batch_steps = [s for h, s in rec.calls if h == "on_train_batch_end"]
    assert batch_steps == list(range(1, 2 * steps + 1))
    assert rec.inactive_grad == 0.0
    assert rec.summary is summary
    state = ckpt.load(tmp_path / "run" / "checkpoint.pt")
    assert state["user_note"] == "kept"


def test_trainer_drives_the_method_through_the_integrations_sparsity_callback(tmp_path):
    from regrow.integrations.protocol import SparsityCallback

    class Check:
        def on_fit_start(self, trainer):
            assert isinstance(trainer.sparsity, SparsityCallback)
            assert trainer.callbacks[0] is trainer.sparsity and trainer.method is trainer.sparsity.method
            self.records = trainer.sparsity.records

        def __getattr__(self, hook):
            return lambda *a: None

    check = Check()
    train(tiny(tmp_path), callbacks=[check])
    # the records the run directory logs are the ones the callback collected
    logged = [r for r in map(json.loads, lines(tmp_path / "run")) if "mask_checksum" in r]
    assert [r["step"] for r in check.records] == [r["step"] for r in logged] and logged


def test_a_user_callback_error_stops_the_run_and_is_raised(tmp_path):
    class Boom:
        def __getattr__(self, hook):
            def f(fit, *a):
                if hook == "on_train_batch_end" and fit.step == 3:
                    raise RuntimeError("user callback failed")
                if hook == "on_exception":
                    self.seen = a[0]
            return f

    boom = Boom()
    with pytest.raises(RuntimeError, match="user callback failed"):
        train(tiny(tmp_path), callbacks=[boom])
    assert isinstance(boom.seen, RuntimeError)


# ---- loss spikes are reported, not silent --------------------------------------------------
class Spike:
    """Blows the weights up after step 6 and puts them back after step 7: step 7's loss
    jumps, and the run goes on as if nothing happened."""

    def __getattr__(self, hook):
        return lambda *a: None

    def on_train_batch_end(self, fit):
        if fit.step == 6:
            self.saved = {k: v.clone() for k, v in fit.model.state_dict().items()}
            with torch.no_grad():
                for p in fit.model.parameters():
                    p.mul_(30.0)
        if fit.step == 7:
            fit.model.load_state_dict(self.saved)


def test_a_loss_spike_is_warned_once_and_recorded(tmp_path):
    with pytest.warns(UserWarning, match=r"training loss jumped to .* at step 7 .*lower the lr"):
        train(tiny(tmp_path, method="static", epochs=3), callbacks=[Spike()])
    spikes = [r for r in map(json.loads, lines(tmp_path / "run")) if r.get("event") == "loss_spike"]
    assert len(spikes) == 1 and spikes[0]["step"] == 7
    assert spikes[0]["loss"] > 10 * spikes[0]["running_mean"] and spikes[0]["hint"] == ""


def test_an_ordinary_run_reports_no_loss_spike(tmp_path):
    train(tiny(tmp_path, epochs=3))
    assert not [r for r in map(json.loads, lines(tmp_path / "run")) if r.get("event") == "loss_spike"]
