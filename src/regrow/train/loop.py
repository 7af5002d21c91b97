"""The training loop behind ``regrow train`` / ``regrow resume`` (and ``torchrun -m regrow``):
:class:`Trainer`, in named phases, with the callback protocol of
:mod:`regrow.integrations.protocol` (the method itself runs through the same
``SparsityCallback`` the Lightning and Hugging Face integrations adapt).

One optimizer step = ``grad_accum`` micro-batches forward/backward, then
the callbacks' ``on_before_optimizer_step``, ``optimizer.step()`` (the method masks the update and
runs structure updates from its step hooks), then
``optimizer.zero_grad(set_to_none=True)``, then the next step's LR (a pure function of the step). The run
directory gets ``config.yaml``, ``metrics.jsonl``, ``summary.json``,
``checkpoint.pt`` and ``plots/`` (see :mod:`regrow.report`).

Exact resume: every source of randomness is either restored from the checkpoint
(torch/numpy/python RNGs, the method's generator) or a pure function of
(seed, epoch) (data order, data-loader worker seeds), and the steps of a partly
finished epoch are skipped at the sampler, so on CPU in deterministic mode a
resumed run ends with the same weights, masks and metrics as an uninterrupted one.
A run whose method slimmed the model in place is resumed by letting the method reshape
the fresh model first (``method.prepare_model``) before the weights are loaded.

The method class is resolved from (method, structure) (:func:`method_class`: ``iee``
with ``channel`` runs ``iee_channel``). Evaluation runs inside ``method.evaluation()``,
so it scores the sparse model the method stands for (not IEE's explored weights), and
``summary.json`` gets the method's own figures (``structured``: latency, throughput,
MACs, parameters of channel methods) and the dense pre-training behind ``--pretrained``
in ``train_flops_relative``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..version import __version__
from ..cost import FlopsLedger
from ..integrations.protocol import Callback, SparsityCallback
from ..methods.base import RunFacts, method_class, resolve_config
from .. import sharding
from . import checkpoint as ckpt
from . import distributed as dist_utils
from .config import RunConfig, data_seed, dump, fingerprint, validate
from .lock import RunLock
from .tasks import TASKS, Task

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"


class NonFiniteLoss(ValueError):
    """The loss, the weights or the evaluation loss became NaN/inf; the run stopped and
    kept its last good checkpoint (one whose weights and evaluation loss were finite)."""


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats as None (JSON has no NaN; ``json.dumps`` would write it)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)) or (torch.is_tensor(value) and value.numel() == 1):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def dumps(record: Dict[str, Any], **kw: Any) -> str:
    return json.dumps(json_safe(record), allow_nan=False, sort_keys=True, **kw)


def nonfinite_tensors(model: nn.Module) -> List[str]:
    """Names of floating parameters/buffers holding NaN or inf."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [n for n, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup_steps: int,
              step_size: int, gamma: float) -> float:
    """LR multiplier for optimizer step ``step`` (0-based), a pure function of the step.

    * linear warm-up (Goyal et al. 2017, "Accurate, Large Minibatch SGD", §2.2):
      η_t = η·(t + 1)/W for t < W;
    * ``cosine`` / ``warmup-cosine`` (Loshchilov & Hutter 2017, SGDR, Eq. 5 without
      restarts): η_t = η/2·(1 + cos(π·(t − W)/(T − W)));
    * ``step``: η_t = η·γ^⌊t / step_size⌋ (IEE appendix §5.3: ×0.2 every 30000 iterations);
    * ``constant``: η_t = η.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule in ("cosine", "warmup-cosine"):
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return gamma ** (step // step_size)
    return 1.0


class StepSchedule:
    """Sets every param group's LR to its base LR × ``factor(step)`` for the next
    optimizer step. Nothing to checkpoint: the LR is a pure function of the step (and
    setting it directly costs a tenth of ``LambdaLR.step``, which shows on small models).
    The base LR is kept in the group as ``initial_lr`` (torch's convention), so it
    travels with the optimizer's state_dict."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]):
        self.optimizer = optimizer  # not its group list: load_state_dict replaces that
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.factor = factor
        self.set(0)

    def set(self, step: int) -> None:
        f = self.factor(step)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool, device: torch.device) -> None:
    if on:
        import os
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> List[Dict[str, Any]]:
    """One group, or two when biases and normalisation parameters (ndim ≤ 1) skip decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": rest, "weight_decay": 0.0}) if g["params"]]


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def method_options(cfg: RunConfig, total_steps: int, steps_per_epoch: int = 1,
                   input_shape: Optional[tuple] = None) -> Dict[str, Any]:
    """The method's keyword arguments: what the method takes from the run (its
    ``run_options``), overridden by its own options, plus what the run decides."""
    cls = method_class(cfg.method, cfg.structure)
    facts = RunFacts(total_steps=total_steps, epoch_steps=steps_per_epoch,
                     input_shape=None if input_shape is None else tuple(input_shape))
    opts = {**cls.run_options(facts), **cfg.method_options}
    opts.update(structure=cfg.structure, total_steps=total_steps, seed=cfg.seed)
    if cfg.distribution is not None:
        opts["distribution"] = cfg.distribution
    # N:M fixes its own density n/m; any other density would be an error there
    opts["density"] = None if cfg.structure == "nm" else cfg.density
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    return {k: v for k, v in opts.items() if k in fields}


def check_method_config(cfg: RunConfig) -> None:
    """Run the method's own config validation before any data or model is built."""
    cls = method_class(cfg.method, cfg.structure)
    if "input_shape" in {f.name for f in dataclasses.fields(cls.Config)} and "input_shape" not in cfg.method_options:
        return  # needs the dataset's sample shape: checked when the method is built
    probe = cls.__new__(cls)
    probe.config = resolve_config(cls.Config, None, method_options(cfg, total_steps=1))
    probe.validate_config()


def loss_fn_for(label_smoothing: float, task: Task = TASKS.get("classification")
                ) -> Callable[[nn.Module, Any], torch.Tensor]:
    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        dev = next(model.parameters()).device
        return task.loss(model(x.to(dev)), y.to(dev), label_smoothing)
    return loss_fn


class TensorBatches:
    """In-memory datasets: index the tensors once per batch instead of collating
    ``batch_size`` items (the DataLoader's per-item path costs more than an MLP step)."""

    def __init__(self, dataset: torch.utils.data.TensorDataset, sampler):
        self.tensors, self.sampler = dataset.tensors, sampler

    def __iter__(self):
        x, y = self.tensors
        for idx in self.sampler.index_batches():
            # index_select: the same rows as x[idx] at half the cost of advanced indexing
            yield x.index_select(0, idx), y.index_select(0, idx)

    def __len__(self) -> int:
        return len(self.sampler)


class _Writer:
    """metrics.jsonl on rank 0; keeps the line count for exact resume."""

    def __init__(self, path: Path, enabled: bool, lines: int):
        self.path, self.enabled, self.lines = path, enabled, lines
        if enabled:
            if path.exists():
                kept = path.read_text().splitlines(keepends=True)[:lines]
                ckpt.write_text(path, "".join(kept))
            self.f = open(path, "a")

    def write(self, record: Dict[str, Any]) -> None:
        self.lines += 1
        if self.enabled:
            self.f.write(dumps(record, default=float) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.enabled:
            self.f.close()


def evaluate(model: nn.Module, loader, ctx: dist_utils.Context, *, amp: bool, channels_last: bool,
             num_classes: int, task: Task = TASKS.get("classification")) -> Dict[str, float]:
    """Loss and top-1/top-5 over ``loader`` (summed over ranks), as ``task`` reports them
    (language models add ``val_perplexity``)."""
    model.eval()
    totals = [0.0, 0.0, 0.0, 0.0]  # loss sum, top-1, top-5, count
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(amp, ctx.device):
                logits = model(x)
            logits = logits.float()
            totals[0] += float(task.loss(logits, y, reduction="sum"))
            totals[1] += task.hits(logits, y, 1)
            totals[2] += task.hits(logits, y, 5)
            totals[3] += y.numel()
    loss, top1, top5, n = dist_utils.all_sum(ctx, totals)
    model.train()
    return task.metrics(loss, top1, top5, n, num_classes)


def _autocast(amp: bool, device: torch.device):
    if amp:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pretrain_samples(cfg: RunConfig, train_size: int) -> int:
    """Dense pre-training samples behind ``cfg.pretrained``: ``pretrained_epochs`` × the
    training set when given, else what a regrow checkpoint records, else 0."""
    if cfg.pretrained is None:
        return 0
    if cfg.pretrained_epochs is not None:
        return int(round(cfg.pretrained_epochs * train_size))
    return ckpt.pretrained_samples(cfg.pretrained) or 0


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to start over an existing run unless asked (every rank checks, so all stop)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"run directory {out} exists and is not a directory")
    if out.exists() and not overwrite:
        taken = [n for n in (CHECKPOINT, SUMMARY, METRICS) if (out / n).exists()]
        if taken == [METRICS] and (out / CONFIG).is_file():
            raise ValueError(
                f"run directory {out} holds {METRICS} but no {CHECKPOINT}: its run stopped before the first "
                f"checkpoint; restart it from its config.yaml with 'regrow resume {out}', or pass --overwrite "
                "to start this one there")
        if taken:
            raise ValueError(
                f"run directory {out} already holds {', '.join(taken)}; continue it with "
                f"'regrow resume {out}', or pass --overwrite to start over"
            )


def prepare_out(out: Path, overwrite: bool) -> None:
    """Clear a run directory for a fresh start: called only once the run is known to start
    (every option checked, data, model and method built), under the directory's lock."""
    check_out(out, overwrite)
    if overwrite:
        for n in (CHECKPOINT, SUMMARY, METRICS):
            (out / n).unlink(missing_ok=True)
        for shards in out.glob(f"{CHECKPOINT}.shards-*"):   # an FSDP2 run's checkpoint shards
            shutil.rmtree(shards, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def check_checkpoint_belongs(out: Path, state: Dict[str, Any]) -> None:
    """``resume``: the checkpoint must be this directory's (its config.yaml's fingerprint);
    refuse another run's checkpoint before anything is written."""
    from .config import differences, load_yaml

    stored = out / CONFIG
    if not stored.is_file():
        return  # nothing to disagree with (config.yaml is rewritten by nobody but a fresh start)
    try:
        mine = load_yaml(str(stored))
        fp_dir = fingerprint(mine)
    except ValueError as e:
        raise ValueError(f"{stored} is not a regrow run config ({e}); refusing to resume over it") from None
    fp_ckpt = fingerprint(state["config"])
    if fp_dir != fp_ckpt or state.get("fingerprint", fp_ckpt) != fp_ckpt:
        diff = differences(mine, state["config"])
        shown = "; ".join(f"{k}: {a!r} in config.yaml, {b!r} in the checkpoint" for k, (a, b) in
                          list(diff.items())[:6])
        raise ValueError(
            f"{out / CHECKPOINT} does not belong to run directory {out} (config fingerprint {fp_ckpt} "
            f"vs {fp_dir} of its config.yaml: {shown or 'edited checkpoint'}); nothing was changed. Put the "
            "checkpoint back in its own run directory and resume that one")


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
          stop_after_steps: Optional[int] = None, report: bool = True,
          check_only: bool = False, callbacks: Sequence[Callback] = ()) -> Dict[str, Any]:
    """Run (or, with ``resume``, continue) the training run ``cfg``; return the summary.

    ``stop_after_steps`` writes a checkpoint after that many optimizer steps and
    returns early (an interruption on purpose, used to test ``regrow resume``).
    ``check_only`` builds data, model and method (every late check) and returns ``{}``
    without touching the run directory (``regrow compare`` checks all cells first).

    Nothing in the run directory is removed or written before the run is known to start;
    rank 0 holds the directory's lock (:class:`~regrow.train.lock.RunLock`) throughout.
    """
    validate(cfg)
    check_method_config(cfg)
    from .data import load_dataset
    from .models import build_model

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"run directory {out} exists and is not a directory")
    ctx = dist_utils.setup(cfg.device, timeout=cfg.dist_timeout)
    lock = None
    try:
        if cfg.amp and ctx.device.type != "cuda":
            raise ValueError(f"amp (bfloat16 autocast) needs a CUDA device; this run is on {ctx.device}")
        if not check_only:
            failure = None
            if ctx.is_main:
                try:
                    lock = RunLock(out, "regrow " + ("resume" if resume else "train")).acquire()
                except ValueError as e:
                    failure = e
            if dist_utils.broadcast_flag(ctx, failure is not None):
                raise failure or ValueError(f"rank 0 could not lock run directory {out}")
            if lock is not None and lock.stale:
                print(f"regrow: took over the lock of a writer that is gone ({lock.stale})")
        state = None
        if resume:
            state = ckpt.load(out / CHECKPOINT)
            check_checkpoint_belongs(out, state)
        elif not check_only:
            check_out(out, overwrite)
            dist_utils.barrier(ctx)  # every rank has looked before rank 0 writes anything
        return _run(cfg, ctx, out, state, stop_after_steps, report, load_dataset, build_model,
                    overwrite=overwrite, check_only=check_only, callbacks=callbacks)
    finally:
        if lock is not None:
            lock.release()
        dist_utils.teardown(ctx)


class Trainer:
    """regrow's training loop in named phases; what ``regrow train`` runs.

    :meth:`setup` (data, model, optimizer, the method through the
    :class:`~regrow.integrations.protocol.SparsityCallback`, LR schedule, loaders, FLOPs
    ledger) → :meth:`restore` a checkpoint or :meth:`start` fresh (calibration, run
    directory) → :meth:`fit`: per epoch :meth:`train_epoch` (per step
    :meth:`training_step` then :meth:`optimizer_step`), :meth:`end_epoch`
    (:meth:`validate`, :meth:`save_checkpoint`) → :meth:`summarize`.

    Callbacks follow the protocol the framework integrations use
    (:class:`regrow.integrations.protocol.Callback`): the sparsity callback is the same
    object Lightning's and Hugging Face's adapters drive, and ``callbacks`` adds the
    user's own. The Trainer is the :class:`~regrow.integrations.protocol.Fit` its
    callbacks see (``model``, ``optimizer``, ``facts``, ``step``).
    """

    def __init__(self, cfg: RunConfig, ctx: dist_utils.Context, out: Path, *, load_dataset, build_model,
                 callbacks: Sequence[Callback] = ()):
        self.cfg, self.ctx, self.out = cfg, ctx, out
        self._load_dataset, self._build_model = load_dataset, build_model
        self.user_callbacks = list(callbacks)
        self.t0 = time.perf_counter()
        self.loop: Dict[str, Any] = {
            "step": 0, "epoch": 0, "epoch_step": 0, "metrics_lines": 0, "wall": 0.0,
            "window": [0.0, 0.0], "epoch_stats": [0.0, 0.0], "last_eval": {},
            "train_wall": 0.0, "train_cpu": 0.0}

    # ---- the Fit view callbacks see ----------------------------------------------------
    @property
    def step(self) -> int:
        return self.loop["step"]

    @property
    def callbacks(self) -> List[Callback]:
        return [self.sparsity, *self.user_callbacks]

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ---- phases --------------------------------------------------------------------------
    def setup(self, *, fresh: bool) -> None:
        """Data, model (pretrained weights on a fresh start), optimizer, sampler, the
        method, LR schedule, loaders and FLOPs ledger (every late check happens here)."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        set_deterministic(cfg.deterministic, ctx.device)
        seed_everything(cfg.seed)
        bundle = self.bundle = self._load_dataset(
            cfg.data, cfg.data_root, seed=data_seed(cfg), augment=cfg.augment, image_size=cfg.image_size,
            synthetic=cfg.synthetic, options=cfg.data_options)
        self.task = TASKS.get(bundle.task)
        try:
            model = self._build_model(cfg.model, bundle.input_shape, bundle.num_classes, **cfg.model_options)
        except TypeError as e:
            raise ValueError(f"model_options {cfg.model_options} do not fit model '{cfg.model}': {e}") from None
        if cfg.pretrained and fresh:
            weights = ckpt.load_model_weights(cfg.pretrained)
            try:
                model.load_state_dict(weights)
            except RuntimeError as e:
                raise ValueError(f"pretrained checkpoint {cfg.pretrained} does not fit model "
                                 f"{cfg.model}: {str(e).splitlines()[0]}") from None
        model.to(ctx.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        # FSDP2: parameters become row shards before the optimizer and the method see them
        self.fsdp = cfg.fsdp and ctx.distributed
        if self.fsdp:
            dist_utils.shard_model(model, ctx, amp=cfg.amp)
        self.optimizer = build_optimizer(cfg, model)

        self.sampler = dist_utils.GlobalBatchSampler(
            len(bundle.train), cfg.batch_size, seed=cfg.seed, rank=ctx.rank,
            world_size=ctx.world_size, grad_accum=cfg.grad_accum)
        self.spe = spe = self.sampler.steps_per_epoch
        self.total_steps = total_steps = cfg.epochs * spe
        self.facts = RunFacts(total_steps=total_steps, epoch_steps=spe, input_shape=tuple(bundle.input_shape))
        # the method (iee + channel -> iee_channel), through the callback the integrations use
        self.sparsity = SparsityCallback(cfg.method, framework_lr=False,
                                         **method_options(cfg, total_steps, spe, bundle.input_shape))
        self.sparsity.on_fit_start(self)
        # the loss-spike watch keeps its running mean in the loop record: checkpointed with it
        self.sparsity.loss_watch = self.loop
        self.method = method = self.sparsity.method
        warmup = int(round(cfg.warmup_epochs * spe))
        self.sched = StepSchedule(self.optimizer, lambda s: lr_factor(
            method.lr_step(s), schedule=cfg.schedule, total_steps=total_steps, warmup_steps=warmup,
            step_size=cfg.lr_step_size, gamma=cfg.lr_gamma))

        self.loader_gen = torch.Generator()
        self.train_loader = self.make_loader(self.sampler)
        # FSDP2's forward is collective (every rank runs the same batches): each rank scores
        # the whole test set; the metrics are ratios of sums, so the world-fold sums agree
        test_idx = (list(range(len(bundle.test))) if self.fsdp
                    else list(range(ctx.rank, len(bundle.test), ctx.world_size)))
        self.test_loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(bundle.test, test_idx), batch_size=cfg.eval_batch_size,
            shuffle=False, num_workers=cfg.num_workers, pin_memory=ctx.device.type == "cuda",
            generator=torch.Generator())
        # dense pre-training behind --pretrained (IEE appendix §3: 3·ζ_D per sample); one
        # real sample traces the FLOPs (token models need integer input, not zeros of a float shape)
        self.ledger = FlopsLedger(model, method, bundle.input_shape if bundle.task == "classification"
                                  else bundle.train[0][0][None].to(ctx.device),
                                  pretrain_samples=pretrain_samples(cfg, len(bundle.train)) if fresh else 0)
        self.loss_fn = loss_fn_for(cfg.label_smoothing, self.task)

    def make_loader(self, batch_sampler):
        bundle, cfg = self.bundle, self.cfg
        if (isinstance(bundle.train, torch.utils.data.TensorDataset) and len(bundle.train.tensors) == 2
                and cfg.num_workers == 0):
            return TensorBatches(bundle.train, batch_sampler)
        # an explicit generator: creating the iterator must not draw from the global RNG
        return torch.utils.data.DataLoader(
            bundle.train, batch_sampler=batch_sampler, num_workers=cfg.num_workers,
            pin_memory=self.ctx.device.type == "cuda", generator=self.loader_gen, persistent_workers=False)

    def restore(self, state: Dict[str, Any]) -> None:
        """Continue from checkpoint ``state``: the method reshapes the fresh model first
        (in-training slimming), then weights, optimizer, LR, method, ledger, loop and RNGs."""
        cfg, method = self.cfg, self.method
        try:
            if ckpt.shards_dir(self.out / CHECKPOINT, state) is not None:   # written by an FSDP2 run
                state = ckpt.load_shards(self.out / CHECKPOINT, state, sharding.mesh_of(self.model))
            method.prepare_model(state["method"])  # e.g. slim the fresh model like the checkpointed one
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.sched.set(state["loop"]["step"])  # the LR is a function of the step alone
            self.sparsity.restore(self.model, state["method"])
            if state.get("ledger") is not None:
                self.ledger.load_state_dict(state["ledger"])
        except (RuntimeError, KeyError, TypeError, IndexError) as e:
            first = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
            raise ValueError(
                f"{self.out / CHECKPOINT} does not fit the run its config describes (model '{cfg.model}', "
                f"method '{cfg.method}'): {type(e).__name__}: {first[:300]}") from None
        loop, ctx = self.loop, self.ctx
        loop.update(state["loop"])
        # each rank's own running sums (the loss window and epoch totals are per rank until
        # they are summed); a checkpoint of another world size gives rank 0 their total
        per_rank = loop.pop("rank_stats", None)
        if per_rank is not None:
            mine = per_rank[ctx.rank] if len(per_rank) == ctx.world_size else (
                [sum(col) for col in zip(*per_rank)] if ctx.is_main else [0.0] * 4)
            loop["window"], loop["epoch_stats"] = list(mine[:2]), list(mine[2:])
        ckpt.set_rng_state(state["rng"])

    def start(self, overwrite: bool) -> None:
        """A fresh run: data-driven methods calibrate (SNIP), then, the run being known to
        start, the run directory is cleared (``--overwrite``) and the config written."""
        cfg, ctx = self.cfg, self.ctx
        if self.method.needs_data:
            # world size 1: every rank scores the same global batches, so masks agree
            calib = dist_utils.GlobalBatchSampler(len(self.bundle.train), cfg.batch_size, seed=cfg.seed)
            calib.set_epoch(-1)
            self.loader_gen.manual_seed(cfg.seed)
            batches = ((x.to(ctx.device), y.to(ctx.device)) for x, y in self.make_loader(calib))
            self.method.calibrate(batches, self.loss_fn)
        if ctx.is_main:
            prepare_out(self.out, overwrite)
            ckpt.write_text(self.out / CONFIG, f"# config fingerprint {fingerprint(cfg)} (checkpoint.pt and "
                                               f"summary.json carry the same)\n" + dump(cfg))

    def _wrap(self) -> None:
        self.net: nn.Module = self.model
        if self.ctx.distributed and not self.fsdp:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None)
        self.fnet = torch.compile(self.net) if self.cfg.compile else self.net
        self._wrapped = self.method.params

    def fit(self, stop_after_steps: Optional[int] = None) -> bool:
        """Train to the end of the run (or ``stop_after_steps``, writing a checkpoint);
        True when it stopped early."""
        cfg, ctx = self.cfg, self.ctx
        self._wrap()
        # in-training slimming swaps the Parameters DDP holds (the method then rebuilds its
        # ``params``): wrap the smaller model anew; every rank slims at the same step
        self._rewrap = ctx.distributed and self.method.replaces_parameters()
        self.writer = _Writer(self.out / METRICS, ctx.is_main, self.loop["metrics_lines"])
        self.loop["wall_base"] = self.loop["wall"]
        self.show = ctx.is_main and not cfg.quiet
        self.bar = None
        stopped = False
        for cb in self.user_callbacks:   # the sparsity callback started in setup()
            cb.on_fit_start(self)
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.show, dynamic_ncols=True,
                            desc=f"{cfg.method} d={cfg.density:g}", leave=False)
            self.model.train()
            for epoch in range(self.loop["epoch"], cfg.epochs):
                stopped = self.train_epoch(epoch, stop_after_steps)
                if stopped:
                    self.save_checkpoint()
                    break
                self.end_epoch(epoch)
        except BaseException as e:
            for cb in self.user_callbacks:
                cb.on_exception(self, e)
            self.sparsity.on_exception(self, e)
            raise
        finally:
            if self.bar is not None:
                self.bar.close()
            self.writer.close()
        return stopped

    def train_epoch(self, epoch: int, stop_after_steps: Optional[int]) -> bool:
        """One epoch (or what is left of it after a resume); True when stopped early."""
        cfg, ctx, loop = self.cfg, self.ctx, self.loop
        skip = loop["epoch_step"] if epoch == loop["epoch"] else 0
        self.sampler.set_epoch(epoch, skip_steps=skip)
        self.loader_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
        # built once, not per step: batches come from CPU tensors/loaders (moving them to
        # the CPU is a no-op), and the contexts are reusable
        move = ctx.device.type != "cpu"
        self._amp_ctx, self._no_sync = _autocast(cfg.amp, ctx.device), contextlib.nullcontext()
        micro = 0
        self._step_loss, self._step_seen = 0.0, 0
        stopped = False
        # time spent in training steps only (no evaluation/checkpoints): throughput
        w0, c0 = time.perf_counter(), time.process_time()
        for x, y in self.train_loader:
            if move:
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            if cfg.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            micro += 1
            last_micro = micro % cfg.grad_accum == 0
            logits = self.training_step(x, y, last_micro)
            if not last_micro:
                continue
            self.optimizer_step(epoch)
            self.after_step(epoch, logits, y)
            if stop_after_steps is not None and self.step >= stop_after_steps:
                stopped = True
                break
        loop["train_wall"] += time.perf_counter() - w0
        loop["train_cpu"] += time.process_time() - c0
        return stopped

    def training_step(self, x: torch.Tensor, y: torch.Tensor, last_micro: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch (the loss is the mean over the
        step's micro-batches); returns the logits."""
        cfg = self.cfg
        if self.fsdp:   # FSDP2 reduce-scatters only at the last micro-batch
            self.model.set_requires_gradient_sync(last_micro)
        sync = (self.net.no_sync() if self.ctx.distributed and not self.fsdp and not last_micro
                else self._no_sync)
        with sync:
            with self._amp_ctx:
                logits = self.fnet(x)
                loss = self.task.loss(logits.float() if cfg.amp else logits, y, cfg.label_smoothing)
            # the mean over micro-batches (no extra autograd node without accumulation)
            (loss / cfg.grad_accum if cfg.grad_accum > 1 else loss).backward()
        n_y = y.numel()
        self._step_loss += loss.item() * n_y
        self._step_seen += n_y
        return logits

    def optimizer_step(self, epoch: int) -> None:
        """Stop on a non-finite loss (every rank), then the masked optimizer step with
        whatever structure update is due, and the next step's LR."""
        step = self.step
        if dist_utils.broadcast_flag(self.ctx, not math.isfinite(self._step_loss)):
            last = self.out / CHECKPOINT
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise NonFiniteLoss(
                f"loss became non-finite ({self._step_loss / self._step_seen}) at step {step + 1} "
                f"(epoch {epoch + 1}); stopping, {kept}")
        self._lr = self.optimizer.param_groups[0]["lr"]
        self._call("on_before_optimizer_step")
        self.optimizer.step()     # the method runs from the optimizer's step hooks
        self.optimizer.zero_grad(set_to_none=True)
        if self._rewrap and self.method.params is not self._wrapped:
            self._wrap()
        self.sched.set(step + 1)
        self.loop["step"] = step + 1
        self.ledger.record_step(self.cfg.batch_size)

    def after_step(self, epoch: int, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Losses, the method's records (with the masks' checksum), the periodic train
        record, the progress bar, then the callbacks' ``on_train_batch_end``."""
        cfg, ctx, loop, step = self.cfg, self.ctx, self.loop, self.step
        loop["epoch_step"] += 1
        window, es = loop["window"], loop["epoch_stats"]
        window[0] += self._step_loss
        window[1] += self._step_seen
        es[0] += self._step_loss
        es[1] += self._step_seen
        spike = self.sparsity.on_train_loss(self, self._step_loss / self._step_seen)
        if spike is not None:
            self.writer.write(spike)
        self._step_loss, self._step_seen = 0.0, 0
        records = self.sparsity.pop_records()
        log_now = step % cfg.log_every == 0
        if ctx.distributed and (records or log_now):
            dist_utils.check_masks(ctx, self.method.checksum(), step)
        ep = epoch + loop["epoch_step"] / self.spe
        # the masks after each structure update, comparable across runs and ranks
        checksum = self.method.checksum() if records else None
        for r in records:
            self.writer.write({"event": "method", "epoch": ep, **r, "step": r.get("step", step),
                               "mask_checksum": checksum})
        if log_now:
            # accuracy of the logged step's (last micro-)batch only: a per-step
            # accuracy costs more than the whole rest of the loop on small models
            correct = self.task.hits(logits.detach(), y, 1)
            loss_sum, seen, correct, n = dist_utils.all_sum(ctx, window + [correct, y.numel()])
            rec = {"event": "train", "step": step, "epoch": ep, "loss": loss_sum / seen,
                   "batch_acc": correct / n, "lr": self._lr, "density": self.method.density()}
            self.writer.write(rec)
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['batch_acc']:.3f}", refresh=False)
            loop["window"] = [0.0, 0.0]
        if self.show:
            self.bar.update(1)
        loop["metrics_lines"] = self.writer.lines
        for cb in self.user_callbacks:
            cb.on_train_batch_end(self)

    def end_epoch(self, epoch: int) -> None:
        """The epoch's record, evaluation when due, the masks checked across ranks, the
        record written, a checkpoint when due."""
        cfg, ctx, loop = self.cfg, self.ctx, self.loop
        loss_sum, seen = dist_utils.all_sum(ctx, loop["epoch_stats"])
        rec = {"event": "epoch", "step": self.step, "epoch": epoch + 1, "train_loss": loss_sum / seen,
               "lr": self.optimizer.param_groups[0]["lr"], "density": self.method.density()}
        for cb in self.user_callbacks:
            cb.on_train_epoch_end(self, rec)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            ev = self.validate()
            rec.update(ev)
            loop["last_eval"] = ev
        if ctx.distributed:
            dist_utils.check_masks(ctx, self.method.checksum(), self.step)
        self.writer.write(rec)
        loop.update(epoch=epoch + 1, epoch_step=0, epoch_stats=[0.0, 0.0],
                    metrics_lines=self.writer.lines, last_train={"train_loss": rec["train_loss"]})
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            self.save_checkpoint(loop["last_eval"].get("test_loss"))

    def validate(self) -> Dict[str, float]:
        """Test metrics of the sparse model the method stands for (IEE: Θ_K only), on
        the bare model (DDP's forward would sync buffers over uneven eval shards)."""
        self._call("on_validation_start")
        try:
            return evaluate(self.model, self.test_loader, self.ctx, amp=self.cfg.amp,
                            channels_last=self.cfg.channels_last, num_classes=self.bundle.num_classes,
                            task=self.task)
        finally:
            self._call("on_validation_end")

    def save_checkpoint(self, eval_loss: Optional[float] = None) -> None:
        """Write ``checkpoint.pt`` (rank 0), never a non-finite one: a diverged model
        would be "the last good checkpoint" resume starts from (every rank checks its own)."""
        loop, out = self.loop, self.out
        bad = nonfinite_tensors(self.model)
        if eval_loss is not None and not math.isfinite(eval_loss):
            bad.append(f"evaluation loss {eval_loss}")
        if dist_utils.broadcast_flag(self.ctx, bool(bad)):
            last = out / CHECKPOINT
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written"
            raise NonFiniteLoss(
                f"the model became non-finite by step {self.step} (epoch {loop['epoch']}): "
                f"{', '.join(bad[:5]) or 'on another rank'}; not writing it, {kept} (lower the lr?)")
        stats = dist_utils.all_gather_floats(self.ctx, loop["window"] + loop["epoch_stats"])
        if not (self.ctx.is_main or self.fsdp):
            return
        loop["wall"] = loop["wall_base"] + time.perf_counter() - self.t0
        checkpoint = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "ledger": self.ledger.state_dict(),
            "rng": ckpt.rng_state(),
            "loop": {**{k: v for k, v in loop.items() if k != "wall_base"}, "rank_stats": stats},
            "config": self.cfg.to_dict(), "fingerprint": fingerprint(self.cfg), "regrow_version": __version__,
        }
        for cb in self.user_callbacks:
            cb.on_save_checkpoint(self, checkpoint)
        # FSDP2: every rank writes its shards (torch.distributed.checkpoint), rank 0 the rest
        (ckpt.save_sharded if self.fsdp else ckpt.save)(out / CHECKPOINT, checkpoint)

    def summarize(self, report: bool) -> Dict[str, Any]:
        """``summary.json`` (rank 0) and, with ``report``, the run's plots and table."""
        cfg, ctx, loop, method, ledger = self.cfg, self.ctx, self.loop, self.method, self.ledger
        step = self.step
        checksums = dist_utils.check_masks(ctx, method.checksum(), step)
        summary = {
            "method": cfg.method, "model": cfg.model, "data": cfg.data,
            "target_density": float(method.config.density), "final_density": method.density(),
            "distribution": method.config.distribution, "structure": method.config.structure,
            "per_layer_density": method.layer_densities(),
            "test_top1": loop["last_eval"].get("test_acc"), "test_loss": loop["last_eval"].get("test_loss"),
            **({"test_top5": loop["last_eval"]["test_top5"]} if "test_top5" in loop["last_eval"] else {}),
            **({"val_perplexity": loop["last_eval"]["val_perplexity"]} if "val_perplexity" in loop["last_eval"]
               else {}),
            **loop.get("last_train", {}),
            "steps": step, "epochs": cfg.epochs, "steps_per_epoch": self.spe, "total_steps": self.total_steps,
            "batch_size": cfg.batch_size, "world_size": ctx.world_size, "device": str(ctx.device),
            "wall_seconds": loop["wall_base"] + time.perf_counter() - self.t0, "seed": cfg.seed,
            "train_step_seconds": loop["train_wall"], "train_step_cpu_seconds": loop["train_cpu"],
            "steps_per_second": step / loop["train_wall"] if loop["train_wall"] > 0 else None,
            "mask_checksums": checksums, "regrow_version": __version__, "torch_version": torch.__version__,
            "data_seed": data_seed(cfg), "method_class": method.name, "config_fingerprint": fingerprint(cfg),
        }
        if ctx.is_main:
            # channel methods: predicted vs measured latency, throughput, MACs, parameters
            # (a fresh dense model is the reference once the trained one was slimmed in place)
            figures = method.summary(measure=True, reference=lambda: self._build_model(
                cfg.model, self.bundle.input_shape, self.bundle.num_classes, **cfg.model_options).to(ctx.device))
            if figures:
                summary["structured"] = figures
        summary["train_flops_relative"] = float(ledger.relative)
        summary["train_flops_physical_relative"] = float(ledger.physical_relative)
        summary["train_flops_executed_relative"] = float(ledger.executed_relative)
        summary["inference_flops"] = float(ledger.inference_flops())
        summary["dense_inference_flops"] = float(ledger.dense_inference_flops())
        for cb in self.user_callbacks:
            cb.on_fit_end(self, summary)
        if ctx.is_main:
            ckpt.write_text(self.out / SUMMARY, dumps(summary, indent=2) + "\n")
            if report:
                from ..report import render_run
                render_run(self.out)
        return summary


def _run(cfg, ctx, out, state, stop_after_steps, report, load_dataset, build_model, *,
         overwrite: bool = False, check_only: bool = False, callbacks: Sequence[Callback] = ()):
    trainer = Trainer(cfg, ctx, out, load_dataset=load_dataset, build_model=build_model, callbacks=callbacks)
    trainer.setup(fresh=state is None)
    if check_only:
        return {}
    if state is not None:
        trainer.restore(state)
    else:
        trainer.start(overwrite)
    if trainer.fit(stop_after_steps):
        if ctx.is_main and not cfg.quiet:
            print(f"stopped after {trainer.step} steps; continue with: regrow resume {out}")
        dist_utils.check_masks(ctx, trainer.method.checksum(), trainer.step)
        return {"stopped_at_step": trainer.step}
    return trainer.summarize(report)
