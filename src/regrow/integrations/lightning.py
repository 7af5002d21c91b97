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
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List, Optional

from ..methods.base import SparseMethod
from . import _common

_common.require("lightning.pytorch", "lightning", "lightning>=2.2")
from lightning.pytorch.callbacks import Callback  # noqa: E402

__all__ = ["RegrowCallback"]


class RegrowCallback(Callback):
    """Run regrow method ``method`` (a registered name: ``"rigl"``, ``"iee"``, …) with
    ``options`` (the method's Config fields: ``density``, ``distribution``,
    ``update_interval``, ``include``/``exclude``, …) on the LightningModule's weights.

    optimizer_index: which of ``trainer.optimizers`` drives the method (one optimizer
        drives one method).
    log: send structure-update records and density to ``trainer.loggers``.

    After ``fit`` starts, ``callback.sparsity`` is the :class:`regrow.SparseMethod`.
    """

    def __init__(self, method: str, *, optimizer_index: int = 0, log: bool = True, **options: Any):
        self.spec = _common.MethodSpec(method, options)
        if isinstance(optimizer_index, bool) or not isinstance(optimizer_index, int) or optimizer_index < 0:
            raise ValueError(f"optimizer_index must be a non-negative integer, got {optimizer_index!r}")
        self.optimizer_index = optimizer_index
        self._log = bool(log)
        self.sparsity: Optional[SparseMethod] = None
        self.records: List[Dict[str, Any]] = []
        self._module = None
        self._pending: Optional[Dict[str, Any]] = None
        self._view: Optional[Dict[str, Any]] = None
        self._eval = contextlib.ExitStack()

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
        if self.sparsity is not None:
            self.sparsity.detach()
        total = trainer.estimated_stepping_batches
        batches = trainer.num_training_batches
        epoch_steps = None
        if isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0:
            epoch_steps = math.ceil(batches / trainer.accumulate_grad_batches)
        self._module = pl_module
        self.sparsity = self.spec.build(pl_module, optimizers[self.optimizer_index], total, epoch_steps)
        if self._pending is not None:
            payload, self._pending = self._pending, None
            self._restore(payload)

    def _restore(self, payload: Dict[str, Any]) -> None:
        method = self.sparsity
        _common.check_resumed_config(method, payload["sparsity"])
        method.pop_metrics()   # records of the fresh construction the checkpoint replaces
        method.load_state_dict(payload["sparsity"])
        _common.restore_live(self._module, payload.get("live") or {})

    def state_dict(self) -> Dict[str, Any]:
        if self.sparsity is None:
            return dict(self._pending or {})
        live, self._view = _common.evaluation_view(self.sparsity, self._module)
        return _common.checkpoint_payload(self.sparsity, live)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        payload = _common.check_payload(state_dict, f"the checkpoint's {self.state_key} state")
        if self.sparsity is None:
            self._pending = payload        # usual order: weights and callbacks before on_fit_start
        else:
            self._restore(payload)         # strategies that restore after setup

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        if self.sparsity is None:
            return
        view = self._view if self._view is not None else _common.evaluation_view(self.sparsity, pl_module)[1]
        self._view = None
        if "state_dict" in checkpoint:
            _common.swap_in_view(checkpoint["state_dict"], pl_module, view)

    # ---- the step ------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        method = self.sparsity
        if method is not None and getattr(optimizer, "_optimizer", optimizer) is method.optimizer:
            method.mask_gradients()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.sparsity is None:
            return
        records = self.sparsity.pop_metrics()
        if records:
            self.records.extend(records)
            if self._log and trainer.loggers:
                metrics = _common.flat_metrics(records, self.sparsity)
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)

    # ---- evaluation -------------------------------------------------------------------
    def _enter(self) -> None:
        self._eval.close()
        if self.sparsity is not None:
            self._eval.enter_context(self.sparsity.evaluation())

    def _exit(self) -> None:
        self._eval.close()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._enter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._exit()

    def on_test_start(self, trainer, pl_module) -> None:
        self._enter()

    def on_test_end(self, trainer, pl_module) -> None:
        self._exit()

    def on_predict_start(self, trainer, pl_module) -> None:
        self._enter()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._exit()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._exit()   # training values back even when a run dies inside validation
