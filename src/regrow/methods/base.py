"""The one base every sparsity method stands on, and the method registry.

A method is a small subclass of :class:`SparseMethod` with its own ``Config``
dataclass, registered with ``@METHODS.register("name")``. It decides masks; the
base keeps them true: inactive gradients zeroed before the optimizer step,
inactive weights zeroed after it, optimizer state zeroed for pruned and grown
entries, dormant values stored for methods that revive weights.

Usage (DESIGN §1)::

    sparsity = regrow.RigL(model, optimizer, density=0.1, total_steps=steps)
    for x, y in loader:
        F.cross_entropy(model(x), y).backward()
        sparsity.step()          # optimizer step + mask maintenance + updates
        optimizer.zero_grad()
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import fnmatch
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import metrics as mask_metrics
from ..criteria import CRITERIA
from ..distributions import DISTRIBUTIONS, check_density, layer_counts
from ..optim import byte_view, mask_gradients_, mask_parameters_, preserves_zeros, zero_optimizer_state_
from ..registry import Registry
from ..schedules import FRACTION_SCHEDULES, update_fraction
from ..state import SparseState, count_true, mask_checksum
from ..structures import global_grow, global_prune, global_topk, make_structure

METHODS: "Registry[type]" = Registry("method")

SPARSE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
GROW_INITS = ("zero", "dormant", "keep")


@dataclass
class SparsityConfig:
    """Fields every method shares.

    density: fraction of sparse weights kept, in (0, 1]; ``None`` means 0.1, or N/M
        for the ``nm`` structure (where any other value is an error).
    distribution: ``uniform`` | ``erk`` | ``global``.
    structure: ``unstructured`` | ``nm`` (with ``n``, ``m``) | ``fanin`` (every output
        neuron keeps the same number of inputs; per-layer counts rounded to a multiple of
        the layer's outputs).
    dense_first_last: keep the first and last sparse layer dense.
    include / exclude: fnmatch patterns on parameter names; ``include`` replaces the
        default (every Conv/Linear weight), ``exclude`` removes names from it.
    total_steps: optimizer steps in the whole run (needed by scheduled methods).
    seed: seeds the method's own generator (identical on every rank).
    """

    density: Optional[float] = None
    distribution: str = "erk"
    structure: str = "unstructured"
    n: int = 2
    m: int = 4
    dense_first_last: bool = False
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    total_steps: Optional[int] = None
    seed: int = 0


@dataclass
class DynamicConfig(SparsityConfig):
    """Fields of methods that update the structure every ΔT steps until T_end.

    update_interval: ΔT in optimizer steps.
    end_fraction: T_end = end_fraction · total_steps (0.75 in RigL and IEE).
    alpha: initial update fraction α; fraction_schedule: ``cosine`` | ``constant``.
    """

    update_interval: int = 100
    end_fraction: float = 0.75
    alpha: float = 0.3
    fraction_schedule: str = "cosine"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def sparse_parameters(
    model: nn.Module, include: Tuple[str, ...] = (), exclude: Tuple[str, ...] = ()
) -> Dict[str, nn.Parameter]:
    """Parameters to sparsify, by FQN: Conv/Linear weights unless ``include`` says otherwise."""
    model = unwrap(model)
    if include:
        chosen = {
            n: p for n, p in model.named_parameters()
            if any(fnmatch.fnmatchcase(n, pat) for pat in include)
        }
    else:
        chosen = {
            f"{mn}.weight" if mn else "weight": mod.weight
            for mn, mod in model.named_modules()
            if isinstance(mod, SPARSE_MODULES) and isinstance(mod.weight, nn.Parameter)
        }
    chosen = {n: p for n, p in chosen.items() if not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)}
    if not chosen:
        raise ValueError(
            f"model {type(model).__name__} has nothing to sparsify: no Conv/Linear weight "
            f"matches include={list(include) or 'default'} minus exclude={list(exclude)}"
        )
    return chosen


def _check_choice(field: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def resolve_config(cls: type, config: Any, overrides: Dict[str, Any]):
    """Build a ``cls`` config from an instance/dict plus keyword overrides, naming bad fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if isinstance(config, dict):
        unknown += sorted(set(config) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {cls.__qualname__}; allowed: {sorted(names)}")
    base = {} if config is None else (dict(config) if isinstance(config, dict) else dataclasses.asdict(config))
    base = {k: v for k, v in base.items() if k in names}
    base.update(overrides)
    for k in ("include", "exclude"):
        if k in base and base[k] is not None:
            base[k] = (base[k],) if isinstance(base[k], str) else tuple(base[k])
    return cls(**base)


class SparseMethod:
    """Base of all methods. Subclasses set ``name``/``Config`` and override hooks:

    * ``initial_masks(targets)`` — the starting masks (default: random at the targets);
    * ``before_step(step)`` — runs with dense gradients still in ``.grad``;
    * ``after_step(step)`` — runs after the masked optimizer step (structure updates).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = SparsityConfig
    structures: ClassVar[Tuple[str, ...]] = ("unstructured", "nm", "fanin")
    needs_total_steps: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    keeps_dormant: ClassVar[bool] = False
    dynamic: ClassVar[bool] = False
    # (structure, registered name) pairs: the class that runs this method with that
    # structure (``iee`` with ``channel`` is ``iee_channel``); see :func:`method_class`
    variants: ClassVar[Tuple[Tuple[str, str], ...]] = ()

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 config: Any = None, **overrides: Any):
        self.config = resolve_config(self.Config, config, overrides)
        self.validate_config()
        self.model = unwrap(model)
        self.optimizer = optimizer
        cfg = self.config
        self.params = sparse_parameters(self.model, cfg.include, cfg.exclude)
        self.names: List[str] = list(self.params)
        self.structure = make_structure(cfg.structure, cfg.n, cfg.m)
        for n, p in self.params.items():
            self.structure.check(n, p.shape)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        self._metrics: List[Dict[str, Any]] = []
        targets = self.initial_targets()
        dormant = {n: p.detach().clone() for n, p in self.params.items()} if self.keeps_dormant else {}
        masks = self.initial_masks(targets)
        self.state = SparseState(masks=masks, targets=targets, dormant=dormant)
        self.apply_masks()
        if self.dynamic:
            mask_metrics.start_tracking(self.state)

    # ---- configuration ------------------------------------------------------
    def validate_config(self) -> None:
        cfg = self.config
        _check_choice("structure", cfg.structure, self.structures)
        _check_choice("distribution", cfg.distribution, DISTRIBUTIONS)
        if cfg.structure == "nm":
            make_structure("nm", cfg.n, cfg.m)
            if cfg.density is not None and not math.isclose(cfg.density, cfg.n / cfg.m):
                raise ValueError(
                    f"density {cfg.density} conflicts with N:M {cfg.n}:{cfg.m} (density n/m = "
                    f"{cfg.n / cfg.m:g}); leave density unset for the nm structure"
                )
            if cfg.distribution == "global":
                raise ValueError("distribution 'global' cannot be combined with structure 'nm'; "
                                 "allowed with nm: uniform, erk (both give n/m per layer)")
            self.config = dataclasses.replace(cfg, density=cfg.n / cfg.m)
        elif cfg.structure == "fanin" and cfg.distribution == "global":
            raise ValueError("distribution 'global' cannot be combined with structure 'fanin' "
                             "(every neuron keeps k inputs per layer); allowed with fanin: uniform, erk")
        elif cfg.density is None:
            self.config = dataclasses.replace(cfg, density=0.1)
        else:
            check_density(cfg.density)
        ts = self.config.total_steps
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts <= 0):
            raise ValueError(f"total_steps must be a positive integer, got {ts!r}")
        if self.needs_total_steps and ts is None:
            raise ValueError(
                f"method '{self.name}' needs total_steps: a positive integer, the number of "
                f"optimizer steps in the run"
            )
        if hasattr(cfg, "update_interval"):
            if not isinstance(cfg.update_interval, int) or cfg.update_interval <= 0:
                raise ValueError(f"update_interval must be a positive integer, got {cfg.update_interval!r}")
        if hasattr(cfg, "end_fraction") and not 0 < cfg.end_fraction <= 1:
            raise ValueError(f"end_fraction must be in (0, 1], got {cfg.end_fraction!r}")
        if hasattr(cfg, "alpha"):
            if not 0 <= cfg.alpha <= 1:
                raise ValueError(f"alpha must be in [0, 1], got {cfg.alpha!r}")
            _check_choice("fraction_schedule", cfg.fraction_schedule, tuple(FRACTION_SCHEDULES))
        if hasattr(cfg, "criterion"):
            CRITERIA.get(cfg.criterion)

    @property
    def is_global(self) -> bool:
        return self.config.distribution == "global"

    def dense_names(self) -> List[str]:
        if self.config.dense_first_last and len(self.names) > 1:
            return [self.names[0], self.names[-1]]
        return []

    def initial_targets(self) -> Dict[str, int]:
        cfg = self.config
        shapes = {n: tuple(p.shape) for n, p in self.params.items()}
        if cfg.structure == "nm":
            return {n: self.structure.count(s, cfg.density) for n, s in shapes.items()}
        counts = layer_counts(cfg.distribution, shapes, cfg.density, self.dense_names())
        if cfg.structure == "fanin":   # k per output neuron: a multiple of the outputs
            counts = {n: self.structure.round_count(shapes[n], c) for n, c in counts.items()}
        return counts

    def initial_masks(self, targets: Dict[str, int]) -> Dict[str, torch.Tensor]:
        """Random masks at the targets (globally ranked under ``global``)."""
        scores = {n: CRITERIA.get("random")(p, None, self.generator) for n, p in self.params.items()}
        return self.select(scores, targets)

    def select(self, scores: Dict[str, torch.Tensor], targets: Dict[str, int]) -> Dict[str, torch.Tensor]:
        """Top-scored masks at ``targets`` per layer, or at their total under ``global``."""
        if self.is_global:
            dense = set(self.dense_names())
            sparse = {n: s for n, s in scores.items() if n not in dense}
            masks = global_topk(sparse, sum(targets[n] for n in sparse))
            masks.update({n: torch.ones_like(scores[n], dtype=torch.bool) for n in dense})
            masks = {n: masks[n] for n in scores}
            for n, m in masks.items():
                targets[n] = count_true(m)
            return masks
        return {n: self.structure.topk(s, targets[n]) for n, s in scores.items()}

    # ---- the training step ---------------------------------------------------
    def step(self) -> None:
        """Masked optimizer step, then whatever structure change is due."""
        if self.optimizer is None:
            raise ValueError(f"method '{self.name}' was built without an optimizer; pass the "
                             f"torch.optim.Optimizer of the model to step() with it")
        step = self.state.step + 1
        self.before_step(step)
        params, masks = self._step_operands()
        mask_gradients_(params, masks)
        self.optimizer.step()
        # inactive weights and their state are 0 here (commit/apply_masks keep it so):
        # SGD/Adam/AdamW leave them 0, any other optimizer gets masked again
        if not preserves_zeros(self.optimizer):
            mask_parameters_(params, masks)
        self.state.step = step
        self.after_step(step)

    def _step_operands(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The sparse parameters and ``uint8`` views of their masks, in ``names`` order.

        Rebuilt only when a mask or parameter object is replaced (commit, load,
        slimming): building the lists and views every step costs a few µs, noticeable
        on small models."""
        current, params = self.state.masks, self.params
        cached = self.__dict__.get("_step_cache")
        if cached is None or any(current[n] is not m or params[n] is not p
                                 for n, m, p in zip(self.names, cached[2], cached[0])):
            masks = [current[n] for n in self.names]
            cached = ([params[n] for n in self.names], [byte_view(m) for m in masks], masks)
            self._step_cache = cached
        return cached[0], cached[1]

    def before_step(self, step: int) -> None:
        return None

    def after_step(self, step: int) -> None:
        return None

    def calibrate(self, batches, loss_fn) -> None:
        """Methods with ``needs_data`` choose masks from data here (e.g. SNIP)."""
        return None

    # ---- mask changes ---------------------------------------------------------
    def apply_masks(self) -> None:
        """Zero inactive weights and their optimizer state (after init or load)."""
        for n in self.names:
            p, m = self.params[n], self.state.masks[n]
            with torch.no_grad():
                p.mul_(m)
            zero_optimizer_state_(self.optimizer, p, ~m)

    def commit(self, new_masks: Dict[str, torch.Tensor], grow_init: str = "zero",
               after_prune: Optional[Dict[str, torch.Tensor]] = None,
               record: bool = True) -> Dict[str, float]:
        """Install new masks: store dormant values of pruned weights, initialise grown
        ones (``zero``, ``dormant`` value, or ``keep`` what the parameter holds), zero the
        optimizer state of both, record IoU/survival/exploration for dynamic methods."""
        assert grow_init in GROW_INITS
        before = {n: self.state.masks[n] for n in new_masks}
        for n, new in new_masks.items():
            old, p = before[n], self.params[n]
            changed = old ^ new  # pruned | grown, in one pass
            with torch.no_grad():
                if self.keeps_dormant:
                    d = self.state.dormant[n]
                    d.copy_(torch.where(old & changed, p, d))
                    if grow_init == "dormant":
                        p.copy_(torch.where(new & changed, d, p))
                # "zero": keep only what stays active (grown start at 0); else keep the new mask
                p.mul_(old & new if grow_init == "zero" else new)
            zero_optimizer_state_(self.optimizer, p, changed)
            self.state.masks[n] = new
        if self.is_global:
            for n, m in new_masks.items():
                self.state.targets[n] = count_true(m)
        out: Dict[str, float] = {}
        # record=False: the caller records its own metrics (IEE prunes and grows at different steps)
        if self.dynamic and record:
            out = mask_metrics.record_update(self.state, before, after_prune, new_masks)
        return out

    # ---- drop / grow helpers shared by dynamic methods -------------------------
    def drop_counts(self, fraction: float) -> Dict[str, int]:
        """Ω per layer: ⌊fraction · active⌋ (one total under ``global``)."""
        if self.is_global:
            total = sum(self.state.targets.values())
            return {"*": int(math.floor(fraction * total))}
        return {n: int(math.floor(fraction * self.state.targets[n])) for n in self.names}

    def prune(self, scores: Dict[str, torch.Tensor], counts: Dict[str, int],
              masks: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        masks = masks if masks is not None else self.state.masks
        if self.is_global:
            return global_prune({n: scores[n] for n in self.names}, {n: masks[n] for n in self.names}, counts["*"])
        return {n: self.structure.prune(scores[n], masks[n], counts[n]) for n in self.names}

    def grow(self, scores: Dict[str, torch.Tensor], counts: Dict[str, int],
             masks: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if self.is_global:
            return global_grow({n: scores[n] for n in self.names}, {n: masks[n] for n in self.names}, counts["*"])
        return {n: self.structure.grow(scores[n], masks[n], counts[n]) for n in self.names}

    def update_fraction(self, step: int) -> float:
        return update_fraction(self.config.fraction_schedule, step, self.config.alpha, self.t_end)

    @property
    def t_end(self) -> int:
        return int(self.config.end_fraction * self.config.total_steps)

    def update_due(self, step: int) -> bool:
        cfg = self.config
        return step % cfg.update_interval == 0 and step < self.t_end

    # ---- reporting --------------------------------------------------------------
    def log(self, record: Dict[str, Any]) -> None:
        self._metrics.append(record)

    def pop_metrics(self) -> List[Dict[str, Any]]:
        """Method-specific records since the last call (one per structure update)."""
        out, self._metrics = self._metrics, []
        return out

    def checksum(self) -> int:
        return mask_checksum(self.state.masks)

    def density(self) -> float:
        return self.state.density()

    def layer_densities(self) -> Dict[str, float]:
        return self.state.layer_densities()

    def live_masks(self) -> Dict[str, torch.Tensor]:
        """Where parameters may be non-zero right now (after every optimizer step every
        entry outside these masks is exactly 0.0). Methods that temporarily train inactive
        weights (IEE's Reactivate & Explore) widen it."""
        return self.state.masks

    def step_flops(self, zeta_sparse: float, zeta_dense: float) -> float:
        """Training FLOPs per sample of the step just taken (``state.step``), given the
        forward FLOPs of the sparse model that step ran (ζ_P) and of the dense one (ζ_D).
        Default: sparse forward + backward ≈ 3·ζ_P (IEE appendix §3; dense: ζ_P = ζ_D)."""
        return 3.0 * zeta_sparse

    def expected_counts(self) -> Dict[str, int]:
        """The active count each layer must hold right now (tests check it exactly)."""
        return dict(self.state.targets)

    # ---- harness hooks (no-ops here) --------------------------------------------
    @contextlib.contextmanager
    def evaluation(self):
        """Context for scoring the model: inside it the model computes the sparse model
        the method stands for (IEE hides Θ_P during Reactivate & Explore); everything is
        restored bit-identically on exit."""
        yield

    def prepare_model(self, sd: Dict[str, Any]) -> None:
        """Before a checkpoint's model weights are loaded: reshape the fresh model the way
        the checkpointed run had (channel methods that slimmed it). ``sd``: the method's
        state_dict from the checkpoint."""
        return None

    def replaces_parameters(self) -> bool:
        """Whether training will swap the model's Parameter objects (in-training
        slimming), which a wrapper holding them (DDP) does not survive."""
        return False

    def summary(self, measure: bool = False, **kwargs: Any) -> Dict[str, Any]:
        """Method-specific figures for ``summary.json`` (channel methods: latency,
        throughput, FLOPs, parameters); empty by default."""
        return {}

    # ---- persistence ------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "method": self.name,
            "config": dataclasses.asdict(self.config),
            "state": self.state.state_dict(),
            "generator": self.generator.get_state(),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        if not isinstance(sd, dict) or "state" not in sd:
            raise ValueError("not a regrow method state_dict (expected keys method, config, state)")
        if sd.get("method") != self.name:
            raise ValueError(f"state_dict is for method '{sd.get('method')}', not '{self.name}'")
        self.state.load_state_dict(sd["state"])
        self.generator.set_state(sd["generator"])
        self.load_extra_state(sd.get("extra", {}))
        self.apply_masks()

    def extra_state(self) -> Dict[str, Any]:
        return {}

    def load_extra_state(self, extra: Dict[str, Any]) -> None:
        return None


def method_class(name: str, structure: Optional[str] = None) -> type:
    """The registered class that runs method ``name`` with ``structure``: the variant the
    class declares for that structure in ``variants``, else the class itself."""
    cls = METHODS.get(name)
    variant = dict(cls.variants).get(structure)
    return cls if variant is None else METHODS.get(variant)


class DropGrowMethod(SparseMethod, abc.ABC):
    """Every ΔT steps until T_end: drop ⌊α_t·|Θ_K|⌋ smallest-|w| active weights per layer,
    grow as many inactive ones by ``grow_scores`` (SET, RigL, DST-EE), new weights 0.

    The grow scores are read in ``before_step`` so gradient-based growth sees the
    dense gradient of the update step; the update itself runs after the optimizer step.
    """

    Config = DynamicConfig
    needs_total_steps = True
    dynamic = True

    def __init__(self, *args: Any, **kwargs: Any):
        self._grow_scores: Optional[Dict[str, torch.Tensor]] = None
        super().__init__(*args, **kwargs)

    @abc.abstractmethod
    def grow_scores(self, step: int) -> Dict[str, torch.Tensor]:
        """Scores over every sparse weight; the highest inactive ones are grown."""

    def before_step(self, step: int) -> None:
        if self.update_due(step):
            self._grow_scores = self.grow_scores(step)

    def after_step(self, step: int) -> None:
        if self._grow_scores is None:
            return
        scores, self._grow_scores = self._grow_scores, None
        fraction = self.update_fraction(step)
        counts = self.drop_counts(fraction)
        drop_scores = {n: CRITERIA.get("magnitude")(self.params[n]) for n in self.names}
        after_prune = self.prune(drop_scores, counts)
        new = self.grow(scores, counts, after_prune)
        record = self.commit(new, grow_init="zero", after_prune=after_prune)
        self.log({"step": step, "event": "update", "fraction": fraction, **record,
                  "density": self.state.density()})
