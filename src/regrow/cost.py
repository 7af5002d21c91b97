"""FLOPs: inference FLOPs of a (sparse) model and the training-FLOPs ledger.

Conventions (IEE appendix §3, RigL §4.4):

* Forward FLOPs count multiplications and additions of Conv and Linear layers:
  2 · MACs = 2 · (k · c_in / groups) · c_out · |output positions| for a convolution,
  2 · in · out (per token) for a Linear. Biases, normalisation, activations, pooling
  and residual additions are a few per output element and are ignored (< 1% of
  any CNN in this library).
* A sparse layer costs its dense FLOPs times its density; dense layers cost full.
  ζ_P is the forward of the sparse model, ζ_D of the dense one, both per sample.
* Training one sample: forward + backward ≈ 3 · forward (the backward computes the
  gradient w.r.t. activations and w.r.t. weights, each ≈ one forward). Each method
  says what its steps cost through ``SparseMethod.step_flops(ζ_P, ζ_D)``: static/SET/
  GMP 3·ζ_P (GMP's ζ_P shrinks with its density), dense 3·ζ_D, RigL 2·ζ_P + ζ_D at
  update steps (dense gradient), IEE 2·ζ_P + ζ_D in Reactivate & Explore.
* The ledger evaluates ζ_P with the per-layer active counts each step started from
  (``method.expected_counts()`` after the previous step), so IEE's reduced Θ_K during
  Accuracy Improvement and GMP's shrinking density are counted as they ran.
* Pruning from a pretrained model adds the dense pre-training, 3·ζ_D per sample
  (``pretrain_samples``) or a given amount (``pretrain_flops``).

``relative`` compares with dense training of the same samples: total / (3·ζ_D·samples).
That is the papers' accounting, which assumes kernels that skip zeros. This library
runs masked *dense* kernels, so the ledger also keeps ``executed``: the same per-step
formulas evaluated with ζ_P = ζ_D, i.e. what the hardware actually computed
(``executed_relative``); wall-time ratios between methods follow that one.

``physical_relative`` (``train_flops_physical_relative``) counts what each step
physically needs with sparse kernels (``SparseMethod.step_flops_physical``). It equals
the papers' accounting except for IEE's Reactivate & Explore: with Θ_P live the
forward and the activation gradients run over every weight and Θ_P's weight gradients
are computed, 3·ζ_D − ζ_P per sample where the appendix books 2·ζ_P + ζ_D.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from .modules import is_sparse_layer, unwrap

Shape = Union[Sequence[int], torch.Tensor]


def _example(model: nn.Module, input_shape: Shape) -> torch.Tensor:
    if torch.is_tensor(input_shape):
        return input_shape
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be the positive shape of one sample (no batch dim), got {input_shape!r}")
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros((1,) + shape, device=device, dtype=dtype)


def layer_flops(model: nn.Module, input_shape: Shape) -> Dict[str, float]:
    """Dense forward FLOPs per sample of every sparse-layer weight (Conv, Linear, HF
    Conv1D), keyed by its FQN.

    ``input_shape``: one sample's shape without the batch dimension (e.g. ``(1, 28, 28)``),
    or an example input batch. One traced forward pass in eval mode without gradients
    (BatchNorm statistics untouched); a module called twice counts twice.
    """
    model = unwrap(model)
    x = _example(model, input_shape)
    batch = x.shape[0]
    flops: Dict[str, float] = {}
    handles = []

    def hook(name: str):
        def fn(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
            if not torch.is_tensor(out):
                return
            # convolutions put channels in dim 1; Linear and HF Conv1D features last
            c_out = out.shape[1] if isinstance(mod, nn.modules.conv._ConvNd) else out.shape[-1]
            positions = out.numel() / (batch * c_out)
            flops[name] = flops.get(name, 0.0) + 2.0 * mod.weight.numel() * positions
        return fn

    for mn, mod in model.named_modules():
        if is_sparse_layer(mod):
            handles.append(mod.register_forward_hook(hook(f"{mn}.weight" if mn else "weight")))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return flops


def _sparse_flops(layers: Dict[str, float], counts: Dict[str, int], numels: Dict[str, int],
                  scale: Optional[Dict[str, float]] = None) -> float:
    """Σ layer FLOPs × active fraction (``counts / numels``); layers without a count run
    at ``scale`` (their current over their original size; 1.0 when not given)."""
    return sum(f * (counts[n] / numels[n] if n in counts else (scale[n] if scale else 1.0))
               for n, f in layers.items())


def inference_flops(model: nn.Module, method: Optional[Any], input_shape: Shape) -> float:
    """Forward FLOPs per sample of the sparse model: sparse layers scaled by the density of
    their mask, other layers full (``method=None``: the dense model)."""
    layers = layer_flops(model, input_shape)
    if method is None:
        return float(sum(layers.values()))
    masks = method.state.masks
    counts = {n: int(torch.count_nonzero(m)) for n, m in masks.items()}
    return _sparse_flops(layers, counts, {n: m.numel() for n, m in masks.items()})


class FlopsLedger:
    """Training FLOPs of one run, step by step.

    Call ``record_step(batch_size)`` once per optimizer step, right after ``method.step()``.
    ``pretrain_samples`` (dense pre-training samples, e.g. pretrained epochs × dataset
    size) or ``pretrain_flops`` add the cost of the dense model a method started from.
    """

    def __init__(self, model: nn.Module, method: Any, input_shape: Shape,
                 pretrain_flops: float = 0.0, pretrain_samples: int = 0):
        if pretrain_flops < 0 or pretrain_samples < 0:
            raise ValueError(f"pretrain_flops and pretrain_samples must be >= 0, got "
                             f"{pretrain_flops!r}, {pretrain_samples!r}")
        self.method = method
        self.model = unwrap(model)
        self.layers = layer_flops(model, input_shape)
        self.zeta_dense = float(sum(self.layers.values()))
        if self.zeta_dense <= 0:
            raise ValueError(f"model {type(unwrap(model)).__name__} has no Conv/Linear layer to count FLOPs of")
        # original weight sizes: counts and physically slimmed layers are scaled against them
        self._numels = self._weight_numels()
        self._scale = {n: 1.0 for n in self.layers}
        self._params_seen = method.params
        self.zeta_physical = self.zeta_dense  # what the (masked dense) kernels compute now
        self.pretrain = float(pretrain_flops) + 3.0 * self.zeta_dense * int(pretrain_samples)
        self.total = self.pretrain
        self.physical = self.pretrain
        self.executed = self.pretrain
        self.samples = 0
        self.steps = 0
        self._zeta_next = self.zeta_sparse()

    def _weight_numels(self) -> Dict[str, int]:
        weights = dict(self.model.named_parameters())
        return {n: weights[n].numel() for n in self.layers}

    def _follow_slimming(self) -> None:
        """In-training slimming (channel methods) replaces the method's parameters with
        smaller ones, and layers slimmed to one channel leave its masks: from then on
        every layer runs at its current size."""
        if self.method.params is self._params_seen:
            return
        self._params_seen = self.method.params
        now = self._weight_numels()
        self._scale = {n: now[n] / self._numels[n] for n in self.layers}
        self.zeta_physical = float(sum(f * self._scale[n] for n, f in self.layers.items()))

    def zeta_sparse(self) -> float:
        """ζ_P of the structure in place now (the next step's sparse forward)."""
        self._follow_slimming()
        return _sparse_flops(self.layers, self.method.expected_counts(), self._numels, self._scale)

    def record_step(self, batch_size: int) -> float:
        """Add the step just taken (``batch_size`` samples); returns its FLOPs."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        cost = float(self.method.step_flops(self._zeta_next, self.zeta_dense)) * batch_size
        self.total += cost
        self.physical += float(self.method.step_flops_physical(self._zeta_next, self.zeta_dense)) * batch_size
        # the step ran on the model as it was before this step's slimming (if any)
        self.executed += float(self.method.step_flops(self.zeta_physical, self.zeta_physical)) * batch_size
        self.samples += int(batch_size)
        self.steps += 1
        self._zeta_next = self.zeta_sparse()
        return cost

    @property
    def relative(self) -> float:
        """Total training FLOPs (pre-training included) over dense training of the same samples."""
        if self.samples == 0:
            return 0.0 if self.total == 0 else math.inf
        return self.total / (3.0 * self.zeta_dense * self.samples)

    @property
    def physical_relative(self) -> float:
        """As :attr:`relative`, counting what each step physically needs with sparse
        kernels (``step_flops_physical``) instead of the papers' accounting."""
        if self.samples == 0:
            return 0.0 if self.physical == 0 else math.inf
        return self.physical / (3.0 * self.zeta_dense * self.samples)

    @property
    def executed_relative(self) -> float:
        """FLOPs the masked dense kernels really ran, over dense training of the same samples."""
        if self.samples == 0:
            return 0.0 if self.executed == 0 else math.inf
        return self.executed / (3.0 * self.zeta_dense * self.samples)

    def inference_flops(self) -> float:
        self._follow_slimming()
        masks = self.method.state.masks
        counts = {n: int(torch.count_nonzero(m)) for n, m in masks.items()}
        return _sparse_flops(self.layers, counts, self._numels, self._scale)

    def dense_inference_flops(self) -> float:
        return self.zeta_dense

    def state_dict(self) -> Dict[str, Any]:
        return {"total": self.total, "physical": self.physical, "executed": self.executed, "samples": self.samples, "steps": self.steps,
                "zeta_next": self._zeta_next, "zeta_dense": self.zeta_dense, "pretrain": self.pretrain,
                "zeta_physical": self.zeta_physical}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        if not isinstance(sd, dict) or "total" not in sd:
            raise ValueError("not a FlopsLedger state_dict (expected keys total, samples, steps, ...)")
        if not math.isclose(sd["zeta_dense"], self.zeta_dense, rel_tol=1e-9):
            raise ValueError(f"FlopsLedger state is for a model of {sd['zeta_dense']:g} dense FLOPs, "
                             f"this one has {self.zeta_dense:g} (different model or input shape)")
        self.total = float(sd["total"])
        self.physical = float(sd.get("physical", sd["total"]))
        self.executed = float(sd["executed"])
        self.samples = int(sd["samples"])
        self.steps = int(sd["steps"])
        self._zeta_next = float(sd["zeta_next"])
        self.pretrain = float(sd.get("pretrain", 0.0))
        self.zeta_physical = float(sd.get("zeta_physical", self.zeta_dense))
