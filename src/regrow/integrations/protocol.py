"""The callback protocol every trainer drives regrow through.

One protocol, three trainers: regrow's own :class:`regrow.train.loop.Trainer` calls the
hooks of :class:`Callback` at its named phases, and the Lightning and Hugging Face
callbacks (:mod:`regrow.integrations.lightning`, :mod:`regrow.integrations.transformers`)
are adapters that call the *same* hooks of the *same* :class:`SparsityCallback` from
their framework's events. So building the method from the run's facts, restoring it,
masking the gradient before the optimizer step, collecting structure-update records and
evaluating the sparse model happen in one place, whichever loop runs.

Hook names and order follow Lightning's (the most widely known):

    on_fit_start → [on_before_optimizer_step → optimizer.step() → on_train_batch_end]* →
    on_train_epoch_end → on_validation_start … on_validation_end → on_save_checkpoint →
    … → on_fit_end            (on_exception when the run dies)

Each hook receives the :class:`Fit` the trainer shows its callbacks: the model, the
optimizer, what the run knows (:class:`regrow.methods.base.RunFacts`) and the step.
regrow's Trainer *is* such an object; the adapters build one from their framework.

No framework is imported here.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Dict, List, MutableMapping, Optional

import torch
from torch import nn

from ..methods.base import RunFacts, SparseMethod
from ..modules import warn_user
from . import _common

__all__ = ["Fit", "Callback", "SparsityCallback", "Adapter", "watch_loss"]

# a step whose training loss is SPIKE_RATIO times its running mean (EMA, decay EMA_DECAY) and
# at least SPIKE_NATS above it is reported, once per run: a run can blow up and carry on,
# finite but ruined, without any error (IEE's Reactivate & Explore did, issue 15)
SPIKE_RATIO, SPIKE_NATS, EMA_DECAY = 10.0, 1.0, 0.98


def watch_loss(state: MutableMapping[str, Any], loss: float, step: int,
               method: Optional[SparseMethod]) -> Optional[Dict[str, Any]]:
    """Feed one training loss to the spike watch whose state (``loss_ema``,
    ``spike_reported``) lives in ``state``. The first loss more than ``SPIKE_RATIO`` times
    the running mean and ``SPIKE_NATS`` above it warns, with the method's likely cause
    (:meth:`SparseMethod.loss_spike_hint`), and returns the ``loss_spike`` record; later
    ones (and non-finite losses, which the loops handle) return None."""
    loss = float(loss)
    if not math.isfinite(loss):
        return None
    ema = state.get("loss_ema")
    record = None
    if (ema is not None and not state.get("spike_reported") and loss > SPIKE_RATIO * ema
            and loss > ema + SPIKE_NATS):
        hint = method.loss_spike_hint(step) if method is not None else ""
        warn_user(f"training loss jumped to {loss:.4g} at step {step} ({loss / ema:.3g}× its running "
                  f"mean {ema:.3g}); " + (hint or "if the run does not recover, lower the lr"))
        record = {"event": "loss_spike", "step": step, "loss": loss, "running_mean": ema, "hint": hint}
        state["spike_reported"] = True
    state["loss_ema"] = loss if ema is None else EMA_DECAY * ema + (1 - EMA_DECAY) * loss
    return record


@dataclass
class Fit:
    """What a trainer shows its callbacks (duck-typed: any object with these
    attributes will do; regrow's Trainer has them)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    facts: RunFacts
    step: int = 0


class Callback:
    """A hook for each named phase of a training run; every hook does nothing by default.

    ``fit`` is the trainer's :class:`Fit` view (``model``, ``optimizer``, ``facts``,
    ``step``). ``record`` (epoch end) is the epoch's metrics record, ``checkpoint`` the
    dict about to be written (a callback may add its own keys), ``summary`` the run's.
    """

    def on_fit_start(self, fit: Any) -> None:
        """The optimizer exists; on resume the weights and optimizer state are loaded
        (regrow's Trainer loads them after this hook, Lightning and HF before)."""

    def on_before_optimizer_step(self, fit: Any) -> None:
        """Gradients of the step are complete (unscaled under AMP), before clipping."""

    def on_train_batch_end(self, fit: Any) -> None:
        """After the optimizer step (``fit.step`` counts it)."""

    def on_train_epoch_end(self, fit: Any, record: Dict[str, Any]) -> None:
        """After the last step of an epoch, before evaluation."""

    def on_validation_start(self, fit: Any) -> None:
        """Before the model is evaluated."""

    def on_validation_end(self, fit: Any) -> None:
        """After the model is evaluated."""

    def on_save_checkpoint(self, fit: Any, checkpoint: Dict[str, Any]) -> None:
        """Before ``checkpoint`` is written."""

    def on_fit_end(self, fit: Any, summary: Dict[str, Any]) -> None:
        """The run finished (not called when it stops early on purpose)."""

    def on_exception(self, fit: Any, exception: BaseException) -> None:
        """The run died with ``exception`` (which is re-raised after the hooks)."""


class SparsityCallback(Callback):
    """Run regrow method ``method`` (a registered name) with ``options`` (its Config
    fields) on the trainer's model and optimizer. The one implementation behind regrow's
    Trainer and the framework callbacks.

    framework_lr: the framework's scheduler sets the LR (Lightning, HF): a method option
        that needs the loop to evaluate the LR at ``method.lr_step(step)`` warns that it
        has no effect. regrow's Trainer passes False (it applies ``lr_step``).

    ``method`` (after :meth:`on_fit_start`) is the :class:`regrow.SparseMethod`;
    ``records`` keeps every structure-update record, ``unlogged`` those a logger has not
    taken yet (:meth:`log_metrics`).
    """

    def __init__(self, method: str, *, framework_lr: bool = True, **options: Any):
        self.spec = _common.MethodSpec(method, options)
        self.framework_lr = framework_lr
        self.method: Optional[SparseMethod] = None
        self.records: List[Dict[str, Any]] = []
        self.unlogged: List[Dict[str, Any]] = []
        self._pending: Optional[Dict[str, Any]] = None
        self._eval = contextlib.ExitStack()
        self.loss_watch: Dict[str, Any] = {}   # watch_loss's state, kept in the payload

    # ---- building and restoring ---------------------------------------------------
    def on_fit_start(self, fit: Any) -> None:
        if self.method is not None:
            self.method.detach()   # a second fit: the old method lets go of the optimizer
        self.method = self.spec.build(fit.model, fit.optimizer, fit.facts, framework_lr=self.framework_lr)
        if self._pending is not None:
            payload, self._pending = self._pending, None
            self._restore_payload(fit.model, payload)

    def restore(self, model: nn.Module, method_state: Dict[str, Any],
                live: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Load the method's state (and the live training values an evaluation view
        hid) into the method built by :meth:`on_fit_start`."""
        method = self.method
        assert method is not None, "restore() before on_fit_start()"
        if self.framework_lr:
            _common.check_resumed_config(method, method_state)
        method.pop_metrics()   # records of the fresh construction the checkpoint replaces
        method.load_state_dict(method_state)
        _common.restore_live(model, live or {})

    def state_dict(self, model: Optional[nn.Module] = None) -> Dict[str, Any]:
        """The integration payload: the method's state and the live values its
        evaluation view hides (empty before the fit starts, unless a restore is pending)."""
        if self.method is None:
            return dict(self._pending or {})
        live = _common.evaluation_view(self.method, model)[0] if model is not None else {}
        return _common.checkpoint_payload(self.method, live, self.loss_watch)

    def load_state_dict(self, payload: Dict[str, Any], model: Optional[nn.Module] = None,
                        where: str = "the checkpoint") -> None:
        """Restore now (the method exists) or at :meth:`on_fit_start` (frameworks that
        restore callbacks before the fit starts)."""
        if not payload:
            return
        payload = _common.check_payload(payload, where)
        if self.method is None or model is None:
            self._pending = payload
        else:
            self._restore_payload(model, payload)

    def _restore_payload(self, model: nn.Module, payload: Dict[str, Any]) -> None:
        self.restore(model, payload["sparsity"], payload.get("live") or {})
        self.loss_watch = dict(payload.get("loss_watch") or {})

    # ---- the step --------------------------------------------------------------------
    def on_before_optimizer_step(self, fit: Any) -> None:
        """Mask the gradient (growth criteria have read the dense one), so clipping and
        the optimizer see the gradient that is applied."""
        method = self.method
        if method is not None and getattr(fit.optimizer, "_optimizer", fit.optimizer) is method.optimizer:
            method.mask_gradients()

    def on_train_batch_end(self, fit: Any) -> None:
        self.pop_records()

    def on_train_loss(self, fit: Any, loss: float) -> Optional[Dict[str, Any]]:
        """A training loss of the step (``fit.step``) the trainer saw: a spike far above
        its running mean warns once per run with the method's likely cause
        (:func:`watch_loss`); its ``loss_spike`` record is returned and, for the
        framework's loggers, kept in ``records`` and ``unlogged``."""
        record = watch_loss(self.loss_watch, loss, fit.step, self.method)
        if record is not None:
            self.records.append(record)
            self.unlogged.append(record)
        return record

    def pop_records(self) -> List[Dict[str, Any]]:
        """The structure-update records since the last call (also kept in ``records``)."""
        if self.method is None:
            return []
        records = self.method.pop_metrics()
        if records:
            self.records.extend(records)
            self.unlogged.extend(records)
        return records

    def log_metrics(self) -> Dict[str, float]:
        """``regrow/density`` and the latest record of each event since the last call,
        flat, for a framework logger."""
        if self.method is None:
            return {}
        records, self.unlogged = self.unlogged, []
        return _common.flat_metrics(records, self.method)

    # ---- evaluation ------------------------------------------------------------------
    def evaluation(self):
        """Context: the model is the sparse model the method stands for (IEE hides its
        explored weights during Reactivate & Explore)."""
        return self.method.evaluation() if self.method is not None else contextlib.nullcontext()

    def on_validation_start(self, fit: Any) -> None:
        self._eval.close()
        self._eval.enter_context(self.evaluation())

    def on_validation_end(self, fit: Any) -> None:
        self._eval.close()

    def on_exception(self, fit: Any, exception: BaseException) -> None:
        self._eval.close()   # training values back even when a run dies inside validation


class Adapter:
    """Base of a framework's callback that adapts its events to ``self.core``, the
    :class:`SparsityCallback`: the method as ``sparsity``, its records and spec."""

    core: SparsityCallback

    @property
    def spec(self) -> _common.MethodSpec:
        return self.core.spec

    @property
    def sparsity(self) -> Optional[SparseMethod]:
        """The :class:`regrow.SparseMethod` (``None`` before training starts)."""
        return self.core.method

    @property
    def records(self) -> List[Dict[str, Any]]:
        """Every structure-update record so far."""
        return self.core.records
