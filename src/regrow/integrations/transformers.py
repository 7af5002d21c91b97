"""Sparse training inside the Hugging Face ``Trainer`` (``pip install 'regrow[transformers]'``).

    from regrow.integrations.transformers import RegrowCallback, RegrowTrainer

    trainer = RegrowTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                            callbacks=[RegrowCallback("rigl", density=0.1)])
    trainer.train()
    trainer.train(resume_from_checkpoint=True)   # continues bit-identically

Your own Trainer subclass takes the mixin first: ``class MyTrainer(RegrowTrainerMixin,
Trainer)``. Two parts, because a callback alone cannot do it right: the Trainer
clips gradients *before* any callback sees them (``on_pre_optimizer_step`` comes
after the clip), and it calls no callback before evaluating or saving the model.

:class:`RegrowCallback` (the lifecycle):

* ``on_train_begin`` (the optimizer exists; on resume the checkpoint's weights and
  optimizer state are already loaded): builds the method on the Trainer's optimizer
  with ``total_steps = state.max_steps`` and, for methods with epochs (OptG),
  ``epoch_steps`` = optimizer steps per epoch (the Trainer's own formula), unless
  the options give them; on resume it loads the sparsity state from the checkpoint
  folder (``regrow_sparsity.pt``).
* ``on_save``: writes ``regrow_sparsity.pt`` into the checkpoint folder just saved.

:class:`RegrowTrainerMixin` (what only the Trainer reaches):

* clipping: the accelerator's ``unscale_gradients`` (the first thing its
  ``clip_grad_norm_`` does, after which gradients are real) is followed by
  ``method.mask_gradients()``, so ``max_grad_norm`` clips the gradient that is applied
  and the logged ``grad_norm`` is its norm; growth criteria still read the dense
  (unscaled) gradient;
* ``evaluate``, ``predict`` and ``save_model`` (hence every checkpoint's model
  weights) run inside ``method.evaluation()``: the sparse model the method stands for
  (IEE hides its explored weights during Reactivate & Explore). The live training
  values the view hides are saved in ``regrow_sparsity.pt``, so resume is exact;
* ``train(resume_from_checkpoint=...)`` tells the callback which folder to restore;
* ``log``: adds ``regrow/density`` and the latest structure-update records
  (``regrow/<event>/<key>``) to the Trainer's logs, and feeds the logged training
  ``loss`` (the mean over ``logging_steps``) to regrow's loss-spike watch: a loss far
  above its running mean warns once, with the method's likely cause, and logs
  ``regrow/loss_spike/*``.

DeepSpeed and FSDP, which clip or shard inside their engines, are not supported.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Optional

import torch

from . import _common
from .protocol import Adapter, Fit, SparsityCallback

_common.require("transformers", "transformers", "transformers>=4.40")
from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint  # noqa: E402

__all__ = ["RegrowCallback", "RegrowTrainerMixin", "RegrowTrainer", "STATE_FILE"]

STATE_FILE = "regrow_sparsity.pt"


def _torch_optimizer(opt: Any) -> torch.optim.Optimizer:
    # Accelerate's AcceleratedOptimizer wraps the user's optimizer in .optimizer
    while isinstance(getattr(opt, "optimizer", None), torch.optim.Optimizer):
        opt = opt.optimizer
    return opt


class RegrowCallback(Adapter, TrainerCallback):
    """Run regrow method ``method`` (a registered name: ``"rigl"``, ``"iee"``, …) with
    ``options`` (the method's Config fields: ``density``, ``distribution``,
    ``update_interval``, ``include``/``exclude``, …) on the Trainer's model. Needs a
    Trainer with :class:`RegrowTrainerMixin` (e.g. :class:`RegrowTrainer`).

    An adapter: the Trainer's events call the hooks of regrow's one
    :class:`~regrow.integrations.protocol.SparsityCallback` (``callback.core``), the same
    hooks regrow's own Trainer calls. After training starts, ``callback.sparsity`` is the
    :class:`regrow.SparseMethod`; ``callback.records`` holds every structure-update record.
    """

    def __init__(self, method: str, **options: Any):
        self.core = SparsityCallback(method, **options)
        self._fit: Optional[Fit] = None
        self._trainer: Optional[Trainer] = None
        self._resume_dir: Optional[str] = None

    def _bind(self, trainer: Trainer, resume_dir: Optional[str]) -> None:
        self._trainer, self._resume_dir = trainer, resume_dir

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        trainer = self._trainer
        if trainer is None:
            raise ValueError(
                "RegrowCallback needs a Trainer with RegrowTrainerMixin (the Trainer clips gradients and "
                "saves the model before any callback could mask them): use "
                "regrow.integrations.transformers.RegrowTrainer, or class MyTrainer(RegrowTrainerMixin, Trainer)")
        payload = self._load_payload()
        _mask_after_unscale(trainer)
        epoch_steps = None
        try:
            n = len(train_dataloader)
            ga = args.gradient_accumulation_steps
            epoch_steps = max(n // ga + int(n % ga > 0), 1)   # Trainer.set_initial_training_values
        except TypeError:
            pass   # an IterableDataset: give epoch_steps in the options where the method needs it
        self._fit = Fit(model, _torch_optimizer(optimizer), _common.step_facts(state.max_steps, epoch_steps),
                        state.global_step)
        self.core.on_fit_start(self._fit)
        if payload is not None:
            self.core.load_state_dict(payload, model)

    def _load_payload(self) -> Optional[Dict[str, Any]]:
        folder, self._resume_dir = self._resume_dir, None
        if folder is None:
            return None
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"resuming from {folder}, which holds no {STATE_FILE}: the checkpoint was not saved by a "
                f"Trainer running RegrowCallback")
        # plain tensors and containers only: a checkpoint never executes code
        return _common.check_payload(torch.load(path, map_location="cpu", weights_only=True), path)

    def on_step_end(self, args, state, control, **kwargs):
        if self._fit is not None:
            self._fit.step = state.global_step
            self.core.on_train_batch_end(self._fit)

    def on_save(self, args, state, control, **kwargs):
        trainer, method = self._trainer, self.sparsity
        if method is None or trainer is None or not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"the Trainer's checkpoint folder {folder} is missing; cannot save {STATE_FILE}")
        torch.save(self.core.state_dict(trainer.model), os.path.join(folder, STATE_FILE))

    def log_metrics(self) -> Dict[str, float]:
        """``regrow/density`` and the latest record of each structure-update event since
        the last call (the mixin adds them to the Trainer's logs)."""
        return self.core.log_metrics()

    def watch_loss(self, loss: float, step: int) -> None:
        """A logged training loss (at optimizer step ``step``) for the loss-spike watch."""
        if self._fit is not None:
            self._fit.step = step
            self.core.on_train_loss(self._fit, loss)

    def before_optimizer_step(self) -> None:
        """The gradients are unscaled and about to be clipped: mask them."""
        if self._fit is not None:
            self.core.on_before_optimizer_step(self._fit)


def _mask_after_unscale(trainer: Trainer) -> None:
    """Make the accelerator's gradient unscale (the start of its clip_grad_norm_) mask
    the gradients too, once per accelerator."""
    acc = trainer.accelerator
    if getattr(acc.unscale_gradients, "_regrow", False):
        return
    unscale = acc.unscale_gradients

    def unscale_gradients(*args: Any, **kwargs: Any):
        out = unscale(*args, **kwargs)
        cb = trainer._regrow_callback()
        if cb is not None:
            cb.before_optimizer_step()
        return out

    unscale_gradients._regrow = True
    acc.unscale_gradients = unscale_gradients


class RegrowTrainerMixin:
    """Put before ``Trainer`` in a Trainer's bases; see the module docstring."""

    def _regrow_callback(self) -> Optional[RegrowCallback]:
        found = [c for c in self.callback_handler.callbacks if isinstance(c, RegrowCallback)]
        if len(found) > 1:
            raise ValueError(f"a Trainer runs one RegrowCallback at a time; got {len(found)}")
        return found[0] if found else None

    def _regrow_evaluation(self):
        cb = self._regrow_callback()
        return contextlib.nullcontext() if cb is None else cb.core.evaluation()

    def train(self, resume_from_checkpoint=None, *args: Any, **kwargs: Any):
        cb = self._regrow_callback()
        if cb is not None:
            folder = resume_from_checkpoint
            if folder is True:
                folder = get_last_checkpoint(self.args.output_dir)   # as Trainer.train resolves it
            cb._bind(self, folder if isinstance(folder, (str, os.PathLike)) else None)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any):
        with self._regrow_evaluation():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        with self._regrow_evaluation():
            return super().predict(*args, **kwargs)

    def save_model(self, *args: Any, **kwargs: Any):
        with self._regrow_evaluation():
            return super().save_model(*args, **kwargs)

    def log(self, logs: Dict[str, float], *args: Any, **kwargs: Any):
        cb = self._regrow_callback()
        if cb is not None and cb.sparsity is not None and self.is_in_train:
            loss = _common.loss_value(logs.get("loss"))
            if loss is not None:
                cb.watch_loss(loss, self.state.global_step)
            logs = {**logs, **cb.log_metrics()}
        return super().log(logs, *args, **kwargs)


class RegrowTrainer(RegrowTrainerMixin, Trainer):
    """``transformers.Trainer`` with :class:`RegrowTrainerMixin`."""
