"""What every integration shares: checking the method and its options when the
callback is made, building the method from the framework's optimizer and step
counts, the evaluation view of the model for checkpoints, and flat metrics for loggers.

No framework is imported here.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..methods.base import METHODS, RunFacts, SparseMethod, method_class


def require(module: str, extra: str, version: str):
    """Import ``module`` or raise an ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(
            f"regrow.integrations.{extra} needs the '{module}' package ({version}): "
            f"pip install 'regrow[{extra}]'"
        ) from e


class MethodSpec:
    """A method name and its options, checked when the callback is made (unknown
    method or option names fail before any training starts)."""

    def __init__(self, method: str, options: Dict[str, Any]):
        if not isinstance(method, str):
            raise ValueError(f"method must be a registered method name ({', '.join(METHODS.names())}); "
                             f"got {method!r}")
        structure = options.get("structure")
        self.cls = method_class(method, structure)   # ValueError naming the allowed methods
        self.method = method
        fields = {f.name for f in dataclasses.fields(self.cls.Config)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method '{method}'; allowed: {sorted(fields)}")
        self.options = dict(options)
        self.fields = fields

    def build(self, model: nn.Module, optimizer: torch.optim.Optimizer, facts: RunFacts, *,
              framework_lr: bool = True) -> SparseMethod:
        """The method on ``model``/``optimizer``; ``facts`` (the trainer's counts of
        optimizer steps, a sample's shape) fill the options the user did not give."""
        method = self.cls(model, optimizer, **{**self.cls.run_options(facts), **self.options})
        if framework_lr and getattr(method.config, "lr_clock", "step") != "step":
            warnings.warn(
                f"{method.name}: lr_clock={method.config.lr_clock!r} needs the training loop to evaluate "
                f"its LR schedule at method.lr_step(step); the framework's scheduler does not, so it has "
                f"no effect here (regrow's own loop applies it)", UserWarning, stacklevel=4)
        return method


def step_facts(total_steps: Optional[float], epoch_steps: Optional[int]) -> RunFacts:
    """:class:`RunFacts` from a framework's step counts (``inf``/``None`` when unknown)."""
    known = total_steps is not None and math.isfinite(total_steps)
    return RunFacts(total_steps=int(total_steps) if known else None, epoch_steps=epoch_steps or None)


def check_resumed_config(method: SparseMethod, sd: Dict[str, Any]) -> None:
    """Warn when the checkpoint's method config differs from the one built now (e.g. a
    longer run: schedules follow the new total_steps)."""
    saved = sd.get("config") or {}
    now = dataclasses.asdict(method.config)
    diff = sorted(k for k in now if k in saved and _norm(saved[k]) != _norm(now[k]))
    if diff:
        warnings.warn(
            "the checkpoint's regrow method was configured differently: "
            + ", ".join(f"{k}={saved[k]!r} then, {now[k]!r} now" for k in diff)
            + "; the run continues with the new values", UserWarning, stacklevel=3)


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def evaluation_view(method: SparseMethod, model: nn.Module) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """``(live, view)`` for the parameters of ``model`` that ``method.evaluation()``
    changes (IEE's explored weights during Reactivate & Explore; usually none):
    ``view`` is what the sparse model holds, ``live`` what training holds. A checkpoint
    stores the view as the model's weights (what a user deploys) and the live values
    with the sparsity state (what an exact resume needs)."""
    if type(method).evaluation is SparseMethod.evaluation:
        return {}, {}   # the base evaluation() changes nothing: skip copying the model
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    live, view = {}, {}
    with method.evaluation():
        for n, p in params.items():
            if not torch.equal(p, before[n]):
                live[n], view[n] = before[n], p.detach().clone()
    return live, view


def swap_in_view(state_dict: Dict[str, Any], model: nn.Module, view: Dict[str, torch.Tensor]) -> None:
    """Replace, in a model ``state_dict`` (tensors sharing storage with the parameters),
    every entry of a parameter in ``view`` (alias names included) by its view value."""
    if not view:
        return
    params = dict(model.named_parameters())
    by_ptr = {(params[n].data_ptr(), tuple(params[n].shape)): v for n, v in view.items()}
    for k, t in list(state_dict.items()):
        if torch.is_tensor(t):
            v = by_ptr.get((t.data_ptr(), tuple(t.shape)))
            if v is not None:
                state_dict[k] = v


def restore_live(model: nn.Module, live: Dict[str, torch.Tensor]) -> None:
    """Write the live training values saved by :func:`evaluation_view` back."""
    params = dict(model.named_parameters())
    unknown = sorted(set(live) - set(params))
    if unknown:
        raise ValueError(f"the checkpoint's regrow state holds live values for {unknown}, which "
                         f"this model does not have")
    with torch.no_grad():
        for n, v in live.items():
            params[n].copy_(v)


def loss_value(outputs: Any) -> Optional[float]:
    """The training loss in a step's outputs (a tensor, or a mapping with ``"loss"``), or None."""
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    if torch.is_tensor(outputs) and outputs.numel() == 1:
        return float(outputs.detach())
    if isinstance(outputs, (int, float)) and not isinstance(outputs, bool):
        return float(outputs)
    return None


def flat_metrics(records: List[Dict[str, Any]], method: SparseMethod, prefix: str = "regrow/") -> Dict[str, float]:
    """Numbers of the latest record of each event (``regrow/update/iou_grow``, …) and
    the current density, for a framework logger."""
    out: Dict[str, float] = {}
    for r in records:
        event = str(r.get("event", "update"))
        for k, v in r.items():
            if k not in ("step", "event", "density") and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}{event}/{k}"] = float(v)
    out[f"{prefix}density"] = float(method.density())
    return out


def checkpoint_payload(method: SparseMethod, live: Dict[str, torch.Tensor],
                       loss_watch: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What an integration stores: the method's state_dict plus live values (if any) and
    the loss-spike watch's running mean."""
    return {"format": "regrow.integration/1", "sparsity": method.state_dict(), "live": live,
            "loss_watch": dict(loss_watch or {})}


def check_payload(payload: Any, where: str) -> Dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != "regrow.integration/1":
        raise ValueError(f"{where} is not a regrow integration state (expected format "
                         f"'regrow.integration/1')")
    return payload
