"""Sparse training inside Lightning: one callback (``pip install 'regrow[lightning]'``).

    from regrow.integrations.lightning import RegrowCallback

    sparsity = RegrowCallback("rigl", density=0.1, update_interval=100)
    trainer = L.Trainer(max_epochs=10, gradient_clip_val=1.0, callbacks=[sparsity])
    trainer.fit(module, datamodule)                    # sparsity.sparsity is the method
    trainer.fit(module, datamodule, ckpt_path="last")  # resumes bit-identically

What the callback does, on regrow's step contract (the method runs from the
optimizer's step hooks, whoever calls ``optimizer.step()``):

* ``on_fit_start`` (optimizers exist, a checkpoint's weights are loaded): builds the
  method on ``trainer.optimizers[optimizer_index]`` with ``total_steps =
  trainer.estimated_stepping_batches`` and, for methods with epochs (OptG),
  ``epoch_steps`` = optimizer steps per epoch, unless the options give them.
* ``on_before_optimizer_step``: masks the gradient (growth criteria have read the
  dense one). Lightning calls it after AMP's unscale and *before* its gradient
  clipping, so ``gradient_clip_val`` clips the gradient that is applied.
* validation, test and predict run inside ``method.evaluation()``: the model is the
  sparse model the method stands for (IEE hides its explored weights during
  Reactivate & Explore).
* checkpoints: the model ``state_dict`` in a checkpoint is the evaluation view too
  (``Module.load_from_checkpoint`` gives the sparse model); the callback's state
  holds the method's state and the live training values the view hides, so
  ``fit(ckpt_path=...)`` with this callback continues bit-identically on CPU.
* logging: at every structure update the method's records (``regrow/<event>/<key>``)
  and ``regrow/density`` go to ``trainer.loggers``; ``callback.records`` keeps them all.
* loss spikes: every ``log_every_n_steps`` steps the ``training_step``'s loss is read
  (one device sync per logging step, as Lightning's own logging) and a loss far above
  its running mean warns once, with the method's likely cause, and logs
  ``regrow/loss_spike/*`` (the same watch as regrow's own Trainer).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from . import _common
from .protocol import Adapter, Fit, SparsityCallback

_common.require("lightning.pytorch", "lightning", "lightning>=2.2")
from lightning.pytorch.callbacks import Callback  # noqa: E402

__all__ = ["RegrowCallback"]


class RegrowCallback(Adapter, Callback):
    """Run regrow method ``method`` (a registered name: ``"rigl"``, ``"iee"``, …) with
    ``options`` (the method's Config fields: ``density``, ``distribution``,
    ``update_interval``, ``include``/``exclude``, …) on the LightningModule's weights.

    optimizer_index: which of ``trainer.optimizers`` drives the method (one optimizer
        drives one method).
    log: send structure-update records and density to ``trainer.loggers``.

    An adapter: Lightning's events call the hooks of regrow's one
    :class:`~regrow.integrations.protocol.SparsityCallback` (``callback.core``), the same
    hooks regrow's own Trainer calls. After ``fit`` starts, ``callback.sparsity`` is the
    :class:`regrow.SparseMethod`.
    """

    def __init__(self, method: str, *, optimizer_index: int = 0, log: bool = True, **options: Any):
        self.core = SparsityCallback(method, **options)
        if isinstance(optimizer_index, bool) or not isinstance(optimizer_index, int) or optimizer_index < 0:
            raise ValueError(f"optimizer_index must be a non-negative integer, got {optimizer_index!r}")
        self.optimizer_index = optimizer_index
        self._log = bool(log)
        self._fit: Optional[Fit] = None
        self._view: Optional[Dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.spec.method)

    # ---- building and restoring -------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        optimizers = trainer.optimizers
        if self.optimizer_index >= len(optimizers):
            raise ValueError(
                f"optimizer_index={self.optimizer_index} but configure_optimizers returned "
                f"{len(optimizers)} optimizer(s)")
        total = trainer.estimated_stepping_batches   # first: it sets up the train dataloader
        batches = trainer.num_training_batches
        epoch_steps = None
        if isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0:
            epoch_steps = math.ceil(batches / trainer.accumulate_grad_batches)
        facts = _common.step_facts(total, epoch_steps)
        self._fit = Fit(pl_module, optimizers[self.optimizer_index], facts, trainer.global_step)
        self.core.on_fit_start(self._fit)

    def state_dict(self) -> Dict[str, Any]:
        if self.sparsity is None:
            return self.core.state_dict()
        live, self._view = _common.evaluation_view(self.sparsity, self._fit.model)
        return _common.checkpoint_payload(self.sparsity, live, self.core.loss_watch)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # usual order: weights and callbacks before on_fit_start (restored there);
        # strategies that restore after setup restore now
        self.core.load_state_dict(state_dict, self._fit.model if self._fit is not None else None,
                                  where=f"the checkpoint's {self.state_key} state")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        if self.sparsity is None:
            return
        view = self._view if self._view is not None else _common.evaluation_view(self.sparsity, pl_module)[1]
        self._view = None
        if "state_dict" in checkpoint:
            _common.swap_in_view(checkpoint["state_dict"], pl_module, view)

    # ---- the step ------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._fit is not None:
            self.core.on_before_optimizer_step(Fit(pl_module, optimizer, self._fit.facts, trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._fit is None:
            return
        self._fit.step = trainer.global_step
        self.core.on_train_batch_end(self._fit)
        if trainer.global_step % max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1)) == 0:
            loss = _common.loss_value(outputs)
            if loss is not None:
                self.core.on_train_loss(self._fit, loss)
        metrics = self.core.log_metrics() if self.core.unlogged else {}
        if metrics and self._log and trainer.loggers:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    # ---- evaluation -------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        self.core.on_validation_start(self._fit)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.core.on_validation_end(self._fit)

    on_test_start = on_predict_start = on_validation_start
    on_test_end = on_predict_end = on_validation_end

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.core.on_exception(self._fit, exception)
