"""OptG (Zhang et al. 2022, "Optimizing Gradient-driven Criteria in Network Sparsity:
Gradient is All You Need"), §3.4, Eq. 10–17 and Algorithm 1.

Every sparse weight has a real-valued score m̂ (initialised to 0, Alg. 1 line 1),
trained alongside the weights by the straight-through estimator (Eq. 7, 10–12)

    ∂L/∂m̂ = ∂L/∂(w ⊙ m) · w,

where ``w`` is the weight if active and its dormant value (the value it had when last
pruned) if not: the forward pass uses the masked parameter, so the parameter's dense
``.grad`` before masking is exactly ∂L/∂(w ⊙ m) for every entry, and the product is
written into the scores' ``.grad`` in ``before_step``.

At the start of epoch k = 1, 2, … the binary mask is the global top-(1 − P_k) of m̂
(Eq. 6, one sort over every sparse layer, so layer-wise densities emerge and are
logged), fixed for the whole epoch, with the sigmoid sparsity schedule (Eq. 16)

    P_k = P / (1 + e^(−a(k − τ/2))),        a = 0.5, τ = epochs of the schedule,

and revived weights return with their dormant values. The scores are trained by an
optimizer of the user's optimizer's class that the method owns, one parameter group
per weight group with that group's hyper-parameters (momentum, betas, …) but no
weight decay, and the mask learning rate of Eq. 17

    η_m,k = η_w,k / (1 + e^(−a(k − τ/2))),

η_w,k read from the weights' group before every step, so it follows the user's LR
scheduler.

Choices the paper leaves open, made here:

* Epochs are ``epoch_steps`` optimizer steps (iteration-based training works too);
  τ defaults to the number of epochs in the run, ceil(total_steps / epoch_steps), as
  in the paper. Eq. 16 reaches P only asymptotically (P_τ = P·σ(aτ/2), within 10⁻¹¹
  of P for the paper's τ ≥ 100 but 8% short for τ = 10), so from epoch τ on P_k = P
  exactly and the run ends at the requested density. The pruned count of epoch k is
  round(σ_k · (N − K)), N all sparse weights and K the final active count, so the last
  epochs hold exactly K.
* Ties: the weights tied at the top-k threshold are chosen uniformly at random from
  the method's seeded generator (identical on every rank). At k = 1 every score is 0,
  so the first mask is a random subset of the scheduled size; with the paper's τ,
  P_1 = P·σ(a(1 − τ/2)) ≈ 0 and epoch 1 is dense, which this reproduces.
* No mask change after the last step of the run (it would alter the final model
  without training it).

The score optimizer steps right after the user's optimizer (from its post-step hook),
so a step the GradScaler skips moves neither. It lives inside the method, not in the
user's optimizer: the user's optimizer state_dict keeps the shape the user built, and
the model, optimizer and method restore in any order.

Resume: the scores live in ``SparseState.buffers["optg.scores"]`` and are the very
tensors the score optimizer updates; ``load_state_dict`` copies saved scores into them
in place and restores the score optimizer's state (``extra["score_optimizer"]``).

Distributed: scores change only through synchronised gradients and identical masks,
so every rank keeps identical scores without extra communication.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..schedules import sigmoid_mask_lr, sigmoid_ramp, sigmoid_sparsity
from ..sharding import full, global_select, shard_like
from ..structures import kth_smallest
from .base import METHODS, RunFacts, SparseMethod, SparsityConfig, warn_user

SCORES = "optg.scores"


@dataclass
class OptGConfig(SparsityConfig):
    """epoch_steps: optimizer steps per epoch (the mask changes only at their
    boundaries; required). tau: epochs over which the sparsity rises (default: every
    epoch of the run, which needs total_steps). a: steepness of the sigmoid (0.5).
    distribution must stay ``global`` (OptG sorts all weights together)."""

    distribution: str = "global"
    epoch_steps: Optional[int] = None
    tau: Optional[int] = None
    a: float = 0.5


def _clean_scores(v: torch.Tensor) -> torch.Tensor:
    """Scores as :func:`topk_random_ties` ranks them: float, NaN lowest (±inf become the
    extreme finite values, as ``nan_to_num`` does)."""
    if not v.is_floating_point():
        v = v.float()
    return torch.nan_to_num(v, nan=float("-inf"))


def topk_random_ties(scores: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Bool mask of the ``k`` largest entries of a flat tensor; entries tied at the
    threshold are picked uniformly at random from ``generator`` (drawn on its device,
    moved to the scores' device). NaN ranks lowest."""
    flat = _clean_scores(scores.detach().reshape(-1))
    n = flat.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    thr = kth_smallest(flat, n - k + 1)
    keep = flat > thr
    need = k - int(torch.count_nonzero(keep))
    if need > 0:
        ties = torch.nonzero(flat == thr).squeeze(1)
        pick = torch.randperm(ties.numel(), generator=generator, device=generator.device)[:need]
        keep[ties[pick.to(ties.device)]] = True
    return keep


@METHODS.register("optg")
class OptG(SparseMethod):
    """Supermask scores trained by the straight-through estimator ∂L/∂m̂ = ∂L/∂(w⊙m)·w,
    global top-(1 − P_k) mask each epoch on a sigmoid schedule (Zhang et al. 2022)."""

    Config = OptGConfig
    structures = ("unstructured",)
    keeps_dormant = True
    dynamic = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.optimizer is None:
            raise ValueError("OptG trains its scores with the model's optimizer; pass optimizer=...")
        # zeros_like: sharded like the weight under FSDP2
        self._scores: Dict[str, torch.Tensor] = {
            n: torch.zeros_like(p.detach(), dtype=torch.promote_types(p.dtype, torch.float32))
            for n, p in self.params.items()
        }
        self.state.buffers[SCORES] = self._scores
        self.score_optimizer, self._score_groups = self._score_optimizer()
        self.log(self._mask_record(0, 1))

    # ---- configuration ------------------------------------------------------
    def validate_config(self) -> None:
        cfg = self.config
        if cfg.distribution != "global":
            raise ValueError(
                f"OptG ranks all sparse weights in one global sort (Zhang et al. 2022, §3.4), so "
                f"distribution must be 'global'; got {cfg.distribution!r}"
            )
        super().validate_config()
        cfg = self.config
        es = cfg.epoch_steps
        if es is None:
            raise ValueError("OptG needs epoch_steps (optimizer steps per epoch; the mask changes at their boundaries)")
        if isinstance(es, bool) or not isinstance(es, int) or es <= 0:
            raise ValueError(f"epoch_steps must be a positive integer, got {es!r}")
        tau = cfg.tau
        if tau is None and cfg.total_steps is None:
            raise ValueError("OptG needs tau (epochs of the sparsity schedule) or total_steps to derive it")
        if tau is not None and (isinstance(tau, bool) or not isinstance(tau, int) or tau <= 0):
            raise ValueError(f"tau must be a positive integer (epochs), got {tau!r}")
        if isinstance(cfg.a, bool) or not isinstance(cfg.a, (int, float)) or not cfg.a > 0:
            raise ValueError(f"a (sigmoid steepness) must be a number > 0, got {cfg.a!r}")

    @classmethod
    def run_options(cls, run: RunFacts) -> Dict[str, Any]:
        out = super().run_options(run)
        if run.epoch_steps is not None:   # masks change at epoch boundaries
            out["epoch_steps"] = int(run.epoch_steps)
        return out

    def warn_if_idle(self) -> None:
        ts = self.config.total_steps
        if ts is not None and self.config.epoch_steps >= ts:
            warn_user(
                f"optg: epoch_steps = {self.config.epoch_steps} is not below total_steps = {ts}: the "
                f"mask (chosen at epoch boundaries) never changes from the first random one; give "
                f"epoch_steps the optimizer steps of one epoch")

    @property
    def tau(self) -> int:
        cfg = self.config
        return cfg.tau if cfg.tau is not None else math.ceil(cfg.total_steps / cfg.epoch_steps)

    # ---- schedules (Eq. 16, 17) ----------------------------------------------
    def epoch_of(self, step: int) -> int:
        """Epoch k (1-based) of the 1-based optimizer step ``step``."""
        return (step - 1) // self.config.epoch_steps + 1

    def ramp(self, k: int) -> float:
        """1 / (1 + e^(−a(k − τ/2))) before epoch τ, then exactly 1."""
        return 1.0 if k >= self.tau else sigmoid_ramp(k, self.tau, self.config.a)

    def sparsity(self, k: int) -> float:
        """P_k of Eq. 16 (P once k ≥ τ)."""
        final = 1.0 - self.config.density
        return final if k >= self.tau else sigmoid_sparsity(k, final, self.tau, self.config.a)

    def mask_lr(self, k: int, weight_lr: float) -> float:
        """η_m,k of Eq. 17 (η_w,k once k ≥ τ)."""
        return weight_lr if k >= self.tau else sigmoid_mask_lr(k, weight_lr, self.tau, self.config.a)

    # ---- masks ------------------------------------------------------------------
    def kept_count(self, k: int) -> int:
        """Active sparse weights in epoch k: N − round(σ_k · (N − K))."""
        total = sum(p.numel() for p in self.params.values())
        return total - int(round(self.ramp(k) * (total - self._kept_final)))

    def initial_masks(self, targets: Dict[str, int]) -> Dict[str, torch.Tensor]:
        # K, the final active count: a constant of the config (global_counts' exact total)
        self._kept_final = sum(targets.values())
        zeros = {n: torch.zeros(p.shape, device=p.device) for n, p in self.params.items()}
        masks = self._global_masks(zeros, self.kept_count(1))
        targets.update({n: int(torch.count_nonzero(m)) for n, m in masks.items()})
        return masks

    def _global_masks(self, scores: Dict[str, torch.Tensor], kept: int) -> Dict[str, torch.Tensor]:
        """Top-``kept`` of the scores over all sparse layers (dense_first_last stay dense).
        FSDP2: chosen on the gathered scores, each rank keeps its shard."""
        dense = set(self.dense_names())
        sparse = [n for n in self.names if n not in dense]
        budget = kept - sum(self.params[n].numel() for n in dense)
        # FSDP2: the same choice across the shards, without gathering (None: not sharded)
        got = global_select("topk", scores, None, budget, {n: self.params[n] for n in sparse},
                            clean=_clean_scores, generator=self.generator)
        if got is not None:
            return {n: got[n] if n in got else torch.ones_like(self.params[n].detach(), dtype=torch.bool)
                    for n in self.names}
        flat = torch.cat([full(scores[n]).reshape(-1) for n in sparse])
        keep = topk_random_ties(flat, budget, self.generator)
        out, i = {}, 0
        for n in self.names:
            if n in dense:
                out[n] = torch.ones(self.params[n].shape, dtype=torch.bool, device=self.params[n].device)
            else:
                size = self.params[n].numel()
                out[n] = keep[i : i + size].view(self.params[n].shape).to(self.params[n].device)
                i += size
        return {n: shard_like(m, self.params[n]) for n, m in out.items()}

    @property
    def scores(self) -> Dict[str, torch.Tensor]:
        """m̂ by parameter name (the tensors the optimizer updates)."""
        return self._scores

    # ---- the optimizer of the scores --------------------------------------------------
    def _score_optimizer(self) -> Tuple[torch.optim.Optimizer, List[Tuple[int, int]]]:
        """An optimizer of the user's class over the scores, one group per weight group
        holding sparse weights (that group's hyper-parameters, no weight decay); returns
        it and the (weight group, score group) index pairs."""
        groups = self.optimizer.param_groups
        owner: Dict[str, int] = {}
        for n, p in self.params.items():
            for gi, g in enumerate(groups):
                if any(q is p for q in g["params"]):
                    owner[n] = gi
                    break
            else:
                raise ValueError(f"sparse parameter '{n}' is not in the optimizer; OptG needs it there")
        score_groups, pairs = [], []
        for gi in sorted(set(owner.values())):
            sg = {k: v for k, v in groups[gi].items() if k != "params"}
            sg.update(params=[self._scores[n] for n in self.names if owner[n] == gi], weight_decay=0.0,
                      lr=self.mask_lr(1, groups[gi]["lr"]))
            pairs.append((gi, len(score_groups)))
            score_groups.append(sg)
        cls = type(self.optimizer)
        # defaults the constructor takes (torch's AdamW keeps Adam's decoupled_weight_decay in
        # its defaults but does not accept it); the groups carry every setting anyway
        sig = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
        defaults = {k: v for k, v in self.optimizer.defaults.items() if k != "params" and (takes_any or k in sig)}
        try:
            opt = cls(score_groups, **defaults)
        except TypeError as e:
            raise ValueError(f"OptG trains its scores with an optimizer of the model's optimizer class "
                             f"{cls.__name__}, which could not be built from its defaults: {e}") from None
        return opt, pairs

    # ---- the training step --------------------------------------------------------
    def before_step(self, step: int) -> None:
        k = self.epoch_of(step)
        groups, score_groups = self.optimizer.param_groups, self.score_optimizer.param_groups
        for wi, si in self._score_groups:
            score_groups[si]["lr"] = self.mask_lr(k, float(groups[wi]["lr"]))
        for n in self.names:
            p, s = self.params[n], self._scores[n]
            if p.grad is None:
                s.grad = None
                continue
            # STE, Eq. 7/10: ∂L/∂m̂ = ∂L/∂(w⊙m) · w with w the dormant value where inactive
            w = torch.where(self.state.masks[n], p.detach(), self.state.dormant[n])
            s.grad = (p.grad.detach() * w).to(s.dtype)

    def step_flops(self, zeta_sparse: float, zeta_dense: float) -> float:
        """2·ζ_P + ζ_D per sample at every step: the forward (ζ_P) and the gradient w.r.t.
        activations (≈ ζ_P, through the masked weights) run sparse, but the STE needs
        ∂L/∂(w⊙m) for every weight, active or not, so the weight-gradient product is dense
        (ζ_D). ζ_P itself falls from ≈ ζ_D to the target over the sigmoid schedule; the
        score update is element-wise, O(|W|), and neglected."""
        return 2.0 * zeta_sparse + zeta_dense

    def restore_after_update(self) -> None:
        super().restore_after_update()
        self.score_optimizer.step()   # the scores move only with a step the weights took

    def after_step(self, step: int) -> None:
        ts = self.config.total_steps
        if step % self.config.epoch_steps or (ts is not None and step >= ts):
            return
        k = step // self.config.epoch_steps + 1
        new = self._global_masks(self._scores, self.kept_count(k))
        after_prune = {n: self.state.masks[n] & new[n] for n in self.names}
        record = self.commit(new, grow_init="dormant", after_prune=after_prune)
        self.log({**self._mask_record(step, k), **record})

    def _mask_record(self, step: int, k: int) -> Dict[str, Any]:
        return {
            "step": step, "event": "mask", "epoch": k,
            "target_sparsity": self.sparsity(k),
            "mask_lr": self.mask_lr(k, float(self.optimizer.param_groups[self._score_groups[0][0]]["lr"])),
            "density": self.state.density(),
            "layer_density": self.state.layer_densities(),
        }

    # ---- persistence ------------------------------------------------------------
    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        super().load_state_dict(sd)
        loaded: Optional[Dict[str, torch.Tensor]] = self.state.buffers.get(SCORES)
        if loaded is None or set(loaded) != set(self._scores):
            raise ValueError(
                f"OptG state_dict must hold scores for {sorted(self._scores)} under buffers['{SCORES}']"
            )
        with torch.no_grad():
            for n, s in self._scores.items():
                if loaded[n].shape != s.shape:
                    raise ValueError(
                        f"OptG score '{n}' has shape {tuple(loaded[n].shape)} in the checkpoint "
                        f"but {tuple(s.shape)} in the model"
                    )
                s.copy_(loaded[n])
                s.grad = None
        # the score optimizer holds these very tensors: keep them, not the loaded copies
        self.state.buffers[SCORES] = self._scores

    def extra_state(self) -> Dict[str, Any]:
        return {"score_optimizer": self.score_optimizer.state_dict()}

    def load_extra_state(self, extra: Dict[str, Any]) -> None:
        if "score_optimizer" not in extra:
            raise ValueError("OptG state_dict lacks extra['score_optimizer'] (the state of the scores' "
                             "optimizer); it was written by an older regrow: start the run afresh")
        self.score_optimizer.load_state_dict(extra["score_optimizer"])
