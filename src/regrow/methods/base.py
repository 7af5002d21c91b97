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
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import metrics as mask_metrics
from ..criteria import CRITERIA
from ..distributions import DISTRIBUTIONS, check_density, layer_counts
from ..modules import (  # noqa: F401  (SPARSE_MODULES, sparse_parameters, unwrap: re-exported)
    SPARSE_MODULES, check_in_optimizer, find_sparse_weights, from_canonical, sparse_parameters,
    to_canonical, unwrap, warn_user,
)
from ..optim import byte_view, mask_gradients_, mask_parameters_, preserves_zeros, zero_optimizer_state_
from ..registry import Registry
from ..schedules import FRACTION_SCHEDULES, update_fraction
from ..sharding import (
    check_current, check_shardable, full, full_dict, global_select, select_layers, shard_like,
)
from ..state import SparseState, count_true, mask_checksum
from ..structures import global_grow, global_prune, global_topk, make_structure

METHODS: "Registry[type]" = Registry("method", stamp_name=True)  # sets each class's name

GROW_INITS = ("zero", "dormant", "keep")


@dataclass(frozen=True)
class RunFacts:
    """What a training run knows that a method may take options from (see
    :meth:`SparseMethod.run_options`): optimizer steps in the run and per epoch, and one
    sample's input shape."""

    total_steps: Optional[int] = None
    epoch_steps: Optional[int] = None
    input_shape: Optional[Tuple[int, ...]] = None


@dataclass
class SparsityConfig:
    """Fields every method shares.

    density: fraction of sparse weights kept, in (0, 1]; ``None`` means 0.1, or N/M
        for the ``nm`` structure (where any other value is an error).
    distribution: ``uniform`` | ``erk`` | ``global``.
    structure: ``unstructured`` | ``nm`` (with ``n``, ``m``) | ``fanin`` (every output
        neuron keeps the same number of inputs; per-layer counts rounded to a multiple of
        the layer's outputs).
    neuron_ablation: with ``fanin``, SRigL's neuron ablation (Lasby et al. 2024, §3.3): at
        every grow a neuron with fewer than max(1, ⌊gamma_sal · k⌋) salient weights loses
        all of them and its budget moves to the others (see
        :class:`regrow.structures.FanIn`); the last sparse layer is never ablated.
        ``None`` (default): on for ``fanin`` with methods that regrow, as in SRigL (never
        worse than plain fan-in on MNIST-1D, +2.6 points for IEE at density 0.05:
        benchmarks/RESULTS.md); ``False``: every neuron keeps exactly k.
    gamma_sal: SRigL's γ_sal in (0, 1] (0.3 in the paper).
    dense_first_last: keep the first and last sparse layer dense.
    include / exclude: fnmatch patterns on parameter names, matched against every name
        of a tied tensor; ``include`` replaces the default (every Conv/Linear/HF Conv1D
        weight that is neither frozen nor tied to an embedding, see
        :func:`regrow.modules.find_sparse_weights`), ``exclude`` removes tensors from it.
    total_steps: optimizer steps in the whole run (needed by scheduled methods).
    seed: seeds the method's own generator (identical on every rank).
    """

    density: Optional[float] = None
    distribution: str = "erk"
    structure: str = "unstructured"
    n: int = 2
    m: int = 4
    neuron_ablation: Optional[bool] = None
    gamma_sal: float = 0.3
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


class Pristine:
    """What a method's constructor is about to change (sparse weights, their optimizer
    state, channel statistics), kept until the first optimizer step so that
    ``load_state_dict`` gives the same continuation whether the model and optimizer
    were restored before or after the method was built.

    A tensor is put back only if nothing wrote to it since construction (its autograd
    version counter, and for optimizer state its identity, are unchanged): a model or
    optimizer loaded after construction keeps what was loaded."""

    def __init__(self, tensors: Dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer]):
        self.optimizer = optimizer
        self.values = {n: t.detach().clone() for n, t in tensors.items()}
        self.tensors = dict(tensors)
        self.opt_values: Dict[str, Dict[str, torch.Tensor]] = {}
        if optimizer is not None:
            for n, t in tensors.items():
                st = optimizer.state.get(t, {})
                vals = {k: v.detach().clone() for k, v in st.items() if torch.is_tensor(v)}
                if vals:
                    self.opt_values[n] = vals
        self.versions: Dict[str, int] = {}
        self.opt_seen: Dict[str, Dict[str, Tuple[torch.Tensor, int]]] = {}

    def seal(self) -> None:
        """Record what the finished constructor left (versions, state tensor identities)."""
        self.versions = {n: t._version for n, t in self.tensors.items()}
        if self.optimizer is not None:
            for n in self.opt_values:
                st = self.optimizer.state.get(self.tensors[n], {})
                self.opt_seen[n] = {k: (v, v._version) for k, v in st.items() if torch.is_tensor(v)}

    def restore(self) -> None:
        """Undo the constructor's writes to every tensor nobody has written since."""
        with torch.no_grad():
            for n, t in self.tensors.items():
                if self.versions.get(n) == t._version:
                    t.copy_(self.values[n])
            for n, vals in self.opt_values.items():
                st = self.optimizer.state.get(self.tensors[n], {})
                for k, v in vals.items():
                    seen = self.opt_seen.get(n, {}).get(k)
                    cur = st.get(k)
                    if seen is not None and cur is seen[0] and cur._version == seen[1]:
                        cur.copy_(v)


class _MethodMeta(abc.ABCMeta):
    """Runs ``_constructed`` once the whole constructor chain has finished (the optimizer
    hooks attach to a method that is completely built)."""

    def __call__(cls, *args: Any, **kwargs: Any):
        obj = super().__call__(*args, **kwargs)
        obj._constructed()
        return obj


def _scaler_skips(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` is a step ``torch.amp.GradScaler`` skips inside the
    optimizer: for optimizers that handle scaling themselves (``_step_supports_amp_scaling``:
    the fused Adam/AdamW/SGD) the scaler sets ``optimizer.found_inf`` and calls ``step()``
    anyway. Reading the flag syncs with the device once on such steps only."""
    found_inf = getattr(optimizer, "found_inf", None)
    return torch.is_tensor(found_inf) and bool(found_inf.item())


class SparseMethod(metaclass=_MethodMeta):
    """Base of all methods. Subclasses set ``name``/``Config`` and override hooks:

    * ``initial_masks(targets)`` — the starting masks (default: random at the targets);
    * ``before_step(step)`` — runs with dense gradients still in ``.grad``;
    * ``mask_step_gradients()`` / ``restore_after_update()`` — what is masked around the
      update (default: inactive gradients before, inactive weights after);
    * ``after_step(step)`` — runs after the masked optimizer step (structure updates).

    Built with an optimizer, the method attaches to its step hooks: every
    ``optimizer.step()`` is a sparse step, whoever calls it.
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
        self._init_step_contract()
        self.generator = torch.Generator().manual_seed(int(self.config.seed))
        self._metrics: List[Dict[str, Any]] = []
        self.setup_parameters()
        self.state = self.initial_state()
        self.apply_masks()
        if self.dynamic:
            mask_metrics.start_tracking(self.state)

    def setup_parameters(self) -> None:
        """Find what the method sparsifies: ``params`` (name → tensor), ``names``, each
        layer's input dimension, the structure; keep the undo record of the tensors the
        constructor writes. Channel methods trace channel groups instead."""
        cfg = self.config
        found = find_sparse_weights(self.model, cfg.include, cfg.exclude)
        self.params = {n: w.param for n, w in found.items()}
        # the weight dimension of each layer's input features: structures see every
        # weight as [out, in, ...] (see structure_topk), masks stay in its own layout
        self.input_dims: Dict[str, int] = {n: w.input_dim for n, w in found.items()}
        self.names: List[str] = list(self.params)
        check_in_optimizer(self.params, self.optimizer)
        self._pristine = Pristine(self.params, self.optimizer)
        self.structure = make_structure(cfg.structure, cfg.n, cfg.m, **self._structure_options())
        dense = set(self.dense_names())   # layers kept dense need not fit the structure
        for n in self.params:
            if n not in dense:
                self.structure.check(n, self._canonical_shape(n))

    def initial_state(self) -> SparseState:
        """The first :class:`SparseState`: per-layer targets, the initial masks and (for
        methods that keep them) dormant values."""
        targets = self.initial_targets()
        dormant = {n: p.detach().clone() for n, p in self.params.items()} if self.keeps_dormant else {}
        masks = self.initial_masks(targets)
        return SparseState(masks=masks, targets=targets, dormant=dormant)

    @classmethod
    def run_options(cls, run: RunFacts) -> Dict[str, Any]:
        """The options this method takes from the run it trains in; a harness (our train
        loop, the Lightning and HF integrations) fills those the user did not give.
        Default: ``total_steps``. Methods that need more declare it here (OptG: the epoch
        length; channel methods: the input shape to trace)."""
        return {} if run.total_steps is None else {"total_steps": int(run.total_steps)}

    def _init_step_contract(self) -> None:
        self._hook_handles: List[Any] = []
        self._grad_handles: List[Any] = []
        self._watched: Dict[str, torch.Tensor] = {}
        self._grads_masked = False
        self._staged: Dict[str, Dict[str, torch.Tensor]] = {}
        self._pristine: Optional[Pristine] = None
        self._unscaled_lrs: Optional[List[Any]] = None   # the groups' LRs while one step runs scaled
        self._skipping = False   # between the hooks of a step a fused optimizer skips (GradScaler)
        check_shardable(self.name, self.structures, self.model)
        self._sharding_checked = False

    def _constructed(self) -> None:
        """After the whole constructor: seal the undo record, attach to the optimizer."""
        if self._pristine is not None:
            self._pristine.seal()
        if self.optimizer is not None:
            self.attach()
        self.warn_if_idle()

    def warn_if_idle(self) -> None:
        """Warn when the configuration makes the method do nothing it promises (no
        structure update fits the run); silence would hide it."""
        return None

    def _resolve_neuron_ablation(self) -> None:
        """``neuron_ablation=None`` (default): on for ``fanin`` with a method that regrows
        (SRigL's setting; benchmarks/RESULTS.md, issue 13), off otherwise. An explicit
        ``True`` elsewhere is an error (another structure) or a warning (no regrowth)."""
        cfg = self.config
        given = cfg.neuron_ablation
        if given is None:
            on = cfg.structure == "fanin" and self.dynamic
        else:
            if not isinstance(given, bool):
                raise ValueError(f"neuron_ablation must be true, false or null (on for fanin), got {given!r}")
            if given and cfg.structure != "fanin":
                raise ValueError(f"neuron_ablation applies to structure 'fanin' only (SRigL's neuron "
                                 f"ablation); got structure {cfg.structure!r}")
            if given and not self.dynamic:
                warn_user(f"{self.name}: neuron_ablation does nothing: the method never regrows "
                          f"weights, and ablation happens at the grow of a structure update")
            on = given and self.dynamic
        if on:
            make_structure("fanin", ablation=True, gamma_sal=cfg.gamma_sal)   # checks gamma_sal
        self.config = dataclasses.replace(cfg, neuron_ablation=on)

    def _structure_options(self) -> Dict[str, Any]:
        """Options of the structure beyond N and M (fan-in's neuron ablation)."""
        cfg = self.config
        if getattr(cfg, "structure", None) == "fanin" and getattr(cfg, "neuron_ablation", False):
            return {"ablation": True, "gamma_sal": cfg.gamma_sal}
        return {}

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
        self._resolve_neuron_ablation()
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
            dense = set(self.dense_names())
            return {n: math.prod(s) if n in dense else self.structure.count(s, cfg.density)
                    for n, s in shapes.items()}
        counts = layer_counts(cfg.distribution, shapes, cfg.density, self.dense_names())
        if cfg.structure == "fanin":   # k per output neuron: a multiple of the outputs
            counts = {n: self.structure.round_count(self._canonical_shape(n), c) for n, c in counts.items()}
        return counts

    def _canonical_shape(self, name: str) -> Tuple[int, ...]:
        """The weight's shape as [out, in, ...] (HF Conv1D stores [in, out])."""
        return tuple(to_canonical(self.params[name], self._dim(name)).shape)

    def initial_masks(self, targets: Dict[str, int]) -> Dict[str, torch.Tensor]:
        """Random masks at the targets (globally ranked under ``global``)."""
        scores = {n: CRITERIA.get("random")(p, None, self.generator) for n, p in self.params.items()}
        return self.select(scores, targets)

    def select(self, scores: Dict[str, torch.Tensor], targets: Dict[str, int]) -> Dict[str, torch.Tensor]:
        """Top-scored masks at ``targets`` per layer, or at their total under ``global``.
        Under FSDP2 the same choice, made on whole layers (:mod:`regrow.sharding`)."""
        if self.is_global:
            dense = set(self.dense_names())
            sparse = [n for n in scores if n not in dense]
            k = sum(targets[n] for n in sparse)
            # FSDP2: chosen across the shards without gathering (None: not sharded)
            masks = global_select("topk", scores, None, k, {n: self.params[n] for n in sparse})
            if masks is None:
                masks = global_topk(full_dict({n: scores[n] for n in sparse}), k)
            masks.update({n: torch.ones_like(full(scores[n]), dtype=torch.bool) for n in dense})
            masks = {n: shard_like(masks[n], self.params[n]) for n in scores}
            for n, m in masks.items():
                targets[n] = count_true(m)
            return masks
        # FSDP2: each rank selects some layers whole and scatters their rows (regrow.sharding)
        return select_layers(lambda n, s, _: torch.ones_like(s, dtype=torch.bool) if targets[n] >= s.numel()
                             else self.structure_topk(n, s, targets[n]), list(scores), scores, None, self.params)

    # The structure's per-layer operations on one weight, run on its [out, in, ...] view
    # so that N:M blocks lie along the true input dimension (HF Conv1D stores [in, out]);
    # the mask comes back in the parameter's layout. Every per-layer structure call goes
    # through these three.
    def _dim(self, name: str) -> int:
        # channel methods build their parameters themselves, without input_dims
        return self.__dict__.get("input_dims", {}).get(name, 1)

    def structure_topk(self, name: str, scores: torch.Tensor, k: int) -> torch.Tensor:
        d = self._dim(name)
        return from_canonical(self.structure.topk(to_canonical(scores, d), k), d)

    def structure_prune(self, name: str, scores: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
        d = self._dim(name)
        return from_canonical(self.structure.prune(to_canonical(scores, d), to_canonical(mask, d), count), d)

    def structure_grow(self, name: str, scores: torch.Tensor, mask: torch.Tensor, count: int,
                       keep_scores: Optional[torch.Tensor] = None) -> torch.Tensor:
        d = self._dim(name)
        if getattr(self.structure, "ablation", False):
            # fan-in neuron ablation: ``keep_scores`` rank a neuron's kept weights when its
            # target shrinks; the last sparse layer's outputs are the model's (SRigL never
            # ablates it)
            ks = None if keep_scores is None else to_canonical(keep_scores, d)
            new = self.structure.grow(to_canonical(scores, d), to_canonical(mask, d), count,
                                      keep_scores=ks, ablate=name != self.names[-1])
            return from_canonical(new, d)
        return from_canonical(self.structure.grow(to_canonical(scores, d), to_canonical(mask, d), count), d)

    # ---- the step contract ------------------------------------------------------
    # Whoever calls ``optimizer.step()`` (``sparsity.step()``, ``scaler.step(optimizer)``,
    # Lightning, HF Trainer, Accelerate), the optimizer's step hooks run the method:
    # before the update :meth:`mask_gradients` reads what the method needs from the
    # dense gradient and masks it; after the update :meth:`_finish_step` zeroes what
    # must be zero, advances the step and runs any structure change that is due. A step
    # the optimizer never takes (GradScaler found inf/NaN) runs neither hook, so it
    # changes nothing and advances nothing. A fused optimizer (``Adam(fused=True)``, HF
    # Trainer's default AdamW) is called anyway, with the scaler's ``found_inf`` set on it,
    # and skips the update itself: the hooks see the flag and do nothing either.
    def step(self) -> None:
        """``optimizer.step()``: the masked update plus whatever structure change is due
        (the same as calling the optimizer directly; with AMP call
        ``scaler.step(optimizer)`` instead)."""
        if self.optimizer is None:
            raise ValueError(f"method '{self.name}' was built without an optimizer; pass the "
                             f"torch.optim.Optimizer of the model to step() with it")
        self.optimizer.step()

    def mask_gradients(self) -> None:
        """Make ``.grad`` what the optimizer will apply: first the method reads what it
        needs from the dense gradient (growth scores at an update step, accumulated
        importance), then inactive gradients are masked. Runs once per backward pass:
        the optimizer's pre-step hook calls it unless it already ran (e.g. through
        :meth:`clip_grad_norm_`). Call it yourself before inspecting or clipping the
        applied gradient by other means."""
        if self._grads_masked:
            return
        if not self._sharding_checked:   # once: the model was not sharded under the method
            check_current(self.model, self.params)
            self._sharding_checked = True
        self._staged = {}
        self.before_step(self.state.step + 1)
        self.mask_step_gradients()
        self._grads_masked = True

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0, **kwargs: Any) -> torch.Tensor:
        """Clip the gradient that is applied: :meth:`mask_gradients` first (growth criteria
        still see the dense gradient), then ``torch.nn.utils.clip_grad_norm_`` over the
        model's parameters. Returns the total norm of the masked gradient, as torch does.
        Under AMP call ``scaler.unscale_(optimizer)`` before it."""
        self.mask_gradients()
        params = [p for p in self.model.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type, **kwargs)

    def mask_step_gradients(self) -> None:
        """Zero the gradients the coming update must not apply (default: inactive weights)."""
        params, masks = self._step_operands()
        mask_gradients_(params, masks)

    def restore_after_update(self) -> None:
        """Right after the optimizer's update: inactive weights back to exactly 0.0 (a
        no-op that is skipped for optimizers that provably keep them there)."""
        if not preserves_zeros(self.optimizer):
            params, masks = self._step_operands()
            mask_parameters_(params, masks, nonfinite=True)

    def step_lr_scale(self) -> float:
        """A factor on every parameter group's learning rate for the coming optimizer step
        only (1.0: none). The pre-step hook multiplies the LRs by it and the post-step hook
        puts the exact values back, so schedulers, checkpoints and logs never see the
        scaled value. IEE's ``explore_lr`` uses it for Reactivate & Explore, where every
        other parameter is frozen."""
        return 1.0

    def loss_spike_hint(self, step: int) -> str:
        """What to tell a user whose training loss jumped at optimizer step ``step``
        (1-based), if the method knows a likely cause; empty if not."""
        return ""

    def stage_scores(self, buffer: str, values: Dict[str, torch.Tensor]) -> None:
        """Add ``values`` to ``state.buffers[buffer]`` once the optimizer takes the step
        (scores read from a gradient the GradScaler then rejects must not count)."""
        staged = self._staged.setdefault(buffer, {})
        for n, v in values.items():
            staged[n] = staged[n] + v if n in staged else v

    def _pre_step_hook(self, optimizer, args, kwargs):
        # args[0] is the optimizer itself (torch passes the bound call's arguments)
        if _scaler_skips(optimizer):
            self._skipping = True   # not taken: the post-step hook must not finish it
            return None
        scale = self.step_lr_scale()
        if scale != 1.0:
            self._unscaled_lrs = [g["lr"] for g in optimizer.param_groups]
            for g in optimizer.param_groups:
                g["lr"] = g["lr"] * scale
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self.mask_gradients()
            return None
        # optimizer.step(closure) (Lightning, LBFGS): the closure runs the backward pass
        # inside step(), after this hook; mask what it computed before the update
        def masked_closure():
            loss = closure()
            self.mask_gradients()
            return loss
        if "closure" in kwargs:
            return args, {**kwargs, "closure": masked_closure}
        return (args[0], masked_closure, *args[2:]), kwargs

    def _post_step_hook(self, optimizer, args, kwargs) -> None:
        if self._skipping:
            self._skipping = False
            return
        if self._unscaled_lrs is not None:
            for g, lr in zip(optimizer.param_groups, self._unscaled_lrs):
                g["lr"] = lr
            self._unscaled_lrs = None
        self._finish_step()

    def _finish_step(self) -> None:
        step = self.state.step + 1
        self.restore_after_update()
        for buffer, values in self._staged.items():
            acc = self.state.buffers[buffer]
            for n, v in values.items():
                acc[n] += v.to(acc[n].device, acc[n].dtype)
        self._staged = {}
        self._grads_masked = False
        self._pristine = None   # a step was taken: the construction can no longer be undone
        self.state.step = step
        self.after_step(step)

    def _new_gradient(self, param: torch.Tensor) -> None:
        # a backward pass wrote new gradients: what mask_gradients read is stale
        self._grads_masked = False

    def attach(self, optimizer: Optional[torch.optim.Optimizer] = None) -> "SparseMethod":
        """Run this method from ``optimizer``'s step hooks (done at construction when an
        optimizer is given). Every sparse weight must be in the optimizer, and an
        optimizer drives one method at a time."""
        if optimizer is not None:
            self.optimizer = optimizer
        opt = self.optimizer
        if opt is None:
            raise ValueError(f"method '{self.name}' needs the model's torch.optim.Optimizer to attach to")
        if self._hook_handles:
            return self
        held = getattr(opt, "_regrow_method", None)
        if held is not None and held is not self:
            raise ValueError(
                f"this optimizer already drives regrow method '{held.name}'; call .detach() on "
                f"it before building another method on the same optimizer")
        check_in_optimizer(self.params, opt)
        self._hook_handles = [opt.register_step_pre_hook(self._pre_step_hook),
                              opt.register_step_post_hook(self._post_step_hook)]
        self._watch_gradients()
        opt._regrow_method = self
        return self

    def detach(self) -> None:
        """Stop running from the optimizer's step hooks (the masks stay as they are)."""
        for h in self._hook_handles + self._grad_handles:
            h.remove()
        self._hook_handles, self._grad_handles = [], []
        if self.optimizer is not None and getattr(self.optimizer, "_regrow_method", None) is self:
            del self.optimizer._regrow_method

    def _watch_gradients(self) -> None:
        """(Re)register the hooks that tell a new backward pass from a repeated step."""
        for h in self._grad_handles:
            h.remove()
        self._grad_handles = [p.register_post_accumulate_grad_hook(self._new_gradient)
                              for p in self.params.values() if p.requires_grad]
        self._watched = dict(self.params)

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
            if self._hook_handles and any(self._watched.get(n) is not p for n, p in params.items()):
                self._watch_gradients()   # slimming replaced the Parameters
        return cached[0], cached[1]

    def before_step(self, step: int) -> None:
        """Read the dense gradient of optimizer step ``step`` (before masking); keep only
        what :meth:`after_step` consumes, or :meth:`stage_scores` sums, so a skipped step counts nothing."""
        return None

    def after_step(self, step: int) -> None:
        """After optimizer step ``step``: structure changes that are due."""
        return None

    def lr_step(self, step: int) -> float:
        """The step at which a training loop evaluates its LR schedule for optimizer step
        ``step`` (0-based). The identity: only a method whose weights sit out some steps
        (IEE's ``lr_clock="trained"``) moves it; regrow's loop calls it, a loop of your own
        evaluates its schedule at ``method.lr_step(step)`` to get the same behaviour."""
        return step

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
    def updatable_names(self) -> List[str]:
        """Layers whose structure changes: not the dense ones (``dense_first_last``, or any
        layer whose target is all of it), which have nothing inactive to grow."""
        if self.is_global:
            dense = set(self.dense_names())
            return [n for n in self.names if n not in dense]
        return [n for n in self.names if self.state.targets[n] < self.params[n].numel()]

    def drop_counts(self, fraction: float) -> Dict[str, int]:
        """Ω per layer: ⌊fraction · active⌋ (one total over the sparse layers under
        ``global``); dense layers keep every weight."""
        sparse = self.updatable_names()
        if self.is_global:
            return {"*": int(math.floor(fraction * sum(self.state.targets[n] for n in sparse)))}
        return {n: int(math.floor(fraction * self.state.targets[n])) if n in sparse else 0
                for n in self.names}

    def _select(self, kind: str, scores: Dict[str, torch.Tensor], counts: Dict[str, int],
                masks: Dict[str, torch.Tensor],
                keep_scores: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        if self.is_global:
            sparse = self.updatable_names()
            fn = global_prune if kind == "prune" else global_grow
            # FSDP2: chosen across the shards without gathering (None: not sharded)
            out = global_select(kind, scores, masks, counts["*"], {n: self.params[n] for n in sparse})
            if out is None:
                out = fn({n: full(scores[n]) for n in sparse}, {n: full(masks[n]) for n in sparse}, counts["*"])
            return {n: shard_like(out[n], self.params[n]) if n in out else masks[n].clone() for n in self.names}
        sparse = set(self.updatable_names())
        if kind == "grow" and keep_scores is not None:
            # fan-in neuron ablation also ranks kept weights: whole layers of them (gathered
            # in the same order on every rank under FSDP2, before the layers are dealt out)
            keep = {n: full(keep_scores[n]) for n in self.names if n in sparse}
            fn = lambda n, s, m: self.structure_grow(n, s, m, counts[n], keep[n])  # noqa: E731
        else:
            select = self.structure_prune if kind == "prune" else self.structure_grow
            fn = lambda n, s, m: select(n, s, m, counts[n])  # noqa: E731
        out = select_layers(fn, [n for n in self.names if n in sparse], scores, masks, self.params)
        return {n: out[n] if n in sparse else masks[n].clone() for n in self.names}

    def prune(self, scores: Dict[str, torch.Tensor], counts: Dict[str, int],
              masks: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Drop ``counts`` lowest-scored active weights (per layer, or ``counts["*"]`` over
        the sparse layers under ``global``)."""
        return self._select("prune", scores, counts, masks if masks is not None else self.state.masks)

    def grow(self, scores: Dict[str, torch.Tensor], counts: Dict[str, int],
             masks: Dict[str, torch.Tensor],
             keep_scores: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Activate ``counts`` highest-scored inactive weights (as :meth:`prune`).
        ``keep_scores`` (the prune's scores) rank kept weights where a structure drops some
        of them at the grow (fan-in's neuron ablation); default: ``scores``."""
        return self._select("grow", scores, counts, masks, keep_scores)

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

    def step_flops_physical(self, zeta_sparse: float, zeta_dense: float) -> float:
        """Training FLOPs per sample the step just taken physically needs with sparse
        kernels (forward, activation gradients and weight gradients over exactly the
        weights that are live or updated). The same as :meth:`step_flops` unless the
        paper's accounting leaves something out (IEE's Reactivate & Explore)."""
        return self.step_flops(zeta_sparse, zeta_dense)

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
        """Everything needed to resume bit-exactly: method name, config, the
        :class:`SparseState`, the method's random generator and its extra state. Save
        it beside the model's and the optimizer's state_dict."""
        return {
            "method": self.name,
            "config": dataclasses.asdict(self.config),
            "state": self.state.state_dict(),
            "generator": self.generator.get_state(),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. The model and optimizer may be restored
        before or after the method was built: the continuation is the same."""
        if not isinstance(sd, dict) or "state" not in sd:
            raise ValueError("not a regrow method state_dict (expected keys method, config, state)")
        if sd.get("method") != self.name:
            raise ValueError(f"state_dict is for method '{sd.get('method')}', not '{self.name}'")
        if self._pristine is not None:
            # model/optimizer restored before this method was built: undo what the
            # constructor's fresh masks zeroed in them
            self._pristine.restore()
            self._pristine = None
        self._grads_masked, self._staged = False, {}
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


class DropGrowMethod(SparseMethod):
    """Every ΔT steps until T_end: drop ⌊α_t·|Θ_K|⌋ smallest-|w| active weights per layer,
    grow as many inactive ones by ``grow_scores`` (SET, RigL, DST-EE), new weights 0.

    The grow scores are read in ``before_step`` so gradient-based growth sees the
    dense gradient of the update step; the update itself runs after the optimizer step.
    """

    Config = DynamicConfig
    needs_total_steps = True
    dynamic = True
    # growth reads the dense gradient of every weight at update steps (RigL, DST-EE): that
    # step's weight gradient is dense, ζ_D instead of ζ_P (see step_flops)
    needs_dense_grad: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any):
        self._grow_scores: Optional[Dict[str, torch.Tensor]] = None
        super().__init__(*args, **kwargs)

    @abc.abstractmethod
    def grow_scores(self, step: int) -> Dict[str, torch.Tensor]:
        """Scores over every sparse weight; the highest inactive ones are grown."""

    def drop_scores(self, step: int) -> Dict[str, torch.Tensor]:
        """Scores over every sparse weight; the lowest active ones are dropped (|w|)."""
        magnitude = CRITERIA.get("magnitude")
        return {n: magnitude(self.params[n]) for n in self.names}

    def dense_gradient_scores(self) -> Dict[str, torch.Tensor]:
        """|∂L/∂w| of every sparse weight, read before masking (0 where a layer got no
        gradient this step: every candidate ties, broken by index)."""
        grad = CRITERIA.get("gradient")
        return {n: grad(p, p.grad) if p.grad is not None else torch.zeros_like(p)
                for n, p in self.params.items()}

    def step_flops(self, zeta_sparse: float, zeta_dense: float) -> float:
        """3·ζ_P per sample (sparse forward, backward ≈ 2× forward); with ``needs_dense_grad``
        2·ζ_P + ζ_D at an update step (RigL §4.4, IEE appendix §3): averaged over ΔT − 1 plain
        steps and one update step, (3·ζ_P·(ΔT − 1) + 2·ζ_P + ζ_D)/ΔT."""
        if self.needs_dense_grad and self.update_due(self.state.step):
            return 2.0 * zeta_sparse + zeta_dense
        return 3.0 * zeta_sparse

    def warn_if_idle(self) -> None:
        cfg = self.config
        if self.dynamic and cfg.update_interval >= self.t_end:
            warn_user(
                f"{self.name}: no structure update will happen: update_interval (ΔT) = "
                f"{cfg.update_interval} steps is not below T_end = {self.t_end} (end_fraction "
                f"{cfg.end_fraction} × total_steps {cfg.total_steps}), so the mask stays the random "
                f"initial one; lower update_interval or raise end_fraction")

    def before_step(self, step: int) -> None:
        if self.update_due(step):
            self._grow_scores = self.grow_scores(step)

    def _keeps_by_drop(self) -> bool:
        # only fan-in's neuron ablation removes kept weights at the grow; the drop scores rank them
        return bool(getattr(self.structure, "ablation", False))

    def after_step(self, step: int) -> None:
        if self._grow_scores is None:
            return
        scores, self._grow_scores = self._grow_scores, None
        fraction = self.update_fraction(step)
        counts = self.drop_counts(fraction)
        drop = self.drop_scores(step)
        after_prune = self.prune(drop, counts)
        if self._keeps_by_drop():
            new = self.grow(scores, counts, after_prune, keep_scores=drop)
        else:   # the plain call: subclasses overriding grow(scores, counts, masks) keep working
            new = self.grow(scores, counts, after_prune)
        record = self.commit(new, grow_init="zero", after_prune=after_prune)
        self.log({"step": step, "event": "update", "fraction": fraction, **record,
                  "density": self.state.density()})
