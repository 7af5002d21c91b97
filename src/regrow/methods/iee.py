"""IEE, Iterative Exploitation and Exploration (Sun et al. 2025, "Advancing Weight and
Channel Sparsification with Enhanced Saliency", §3.1 and Algorithm 1), for
unstructured and N:M weight sparsity.

Every ΔT = H + J + Q iterations until T_end, with Θ_K the active weights and Θ_P
the exploration space (every inactive weight):

1. Importance Estimation: train Θ_K for H iterations, score I(Θ_K) (Eq. 1).
2. Prune: Θ_K ← Θ_K − ArgTopK(−I(Θ_K), Ω_t), the pruned weights join Θ_P keeping
   their values as dormant ("MRU") values (Eq. 2). Ω_t = ⌊α_t·|Θ_K|⌋ per layer (one
   global ranking under the ``global`` distribution), α_t = α/2·(1 + cos(π t / T_end)).
3. Accuracy Improvement: train the reduced Θ_K for J iterations (Eq. 1).
4. Reactivate & Explore: every weight of Θ_P comes back at its dormant value and
   min_{Θ_P} Σ ℓ(f(Θ_P ∪ Θ_K; x), y) is trained for Q iterations with Θ_K frozen
   (Eq. 3); score I(Θ_P).
5. Grow: Θ_K ← Θ_K + ArgTopK(I(Θ_P), Ω_t) keeping their explored values (Eq. 4); the
   rest of Θ_P goes dormant again at its current values.

Iterations follow Algorithm 1 (i counts optimizer steps from 1): the prune happens at
the start of iteration i with (i + J + Q) mod ΔT = 0, Reactivate & Explore starts at
(i + Q) mod ΔT = 0 and the grow happens at i mod ΔT = 0, for T = ⌊T_end / ΔT⌋ IEE
steps, so that every structure change is over by T_end. "Start of iteration i" is
right after optimizer step i − 1 (``after_step``), so iteration i already trains the
new structure, as in Algorithm 1. The first Importance Estimation stage therefore
has H − 1 iterations and every later one H. After T_end: plain sparse training.

Freezing Θ_K means: its values and its optimizer state (per-element moments and
per-parameter scalars such as Adam's ``step``) are bit-identical before and after
the stage. The gradient of Θ_K is zeroed, Θ_K's values are restored from a snapshot
after every step (momentum or weight decay would otherwise move them) and its
optimizer state at the end of the stage. Parameters outside the sparse set (biases,
normalisation) belong to the selected architecture too and are frozen by dropping
their gradient for the stage (the optimizer skips them). BatchNorm running
statistics keep tracking the data. The snapshot lives in ``SparseState.buffers``
only for the stage's duration, so a resume in the middle of any stage is exact.

Weights that have never been active have no most-recently-used value; with a random
initial mask they explore from 0 (``unused_init=zero``, default) or from their value at
construction (``weights``); from a pretrained model they explore from pretrained values.

N:M: Prune removes the Ω_t lowest-scored active weights of the layer wherever they
are, Grow refills every block to exactly N from the explored candidates.

Ablations of Table 4, one field each: ``freeze``, ``J`` (0 removes Accuracy
Improvement), ``grow_init`` (``dormant`` = MRU | ``zero``), ``grow_by``
(``criterion`` | ``random``), and H/J/Q.

Budget-aware options (issue 15, not in the paper; the defaults are the paper's method):
``lr_clock="trained"`` runs the LR schedule on Θ_K's own clock, which stands still
during the frozen Reactivate & Explore iterations (:func:`iee_lr_step`);
``explore_lr`` scales Θ_P's LR during Reactivate & Explore (every inactive weight trains
at once there: ≈ 1/d times as many as in a sparse step); ``budget_aware=True`` is the
preset of what measured better at short budgets: the trained clock and the Taylor
criterion (the paper's criterion for channels, here for weights too); ``stages="budget"``
sets H = J = k, Q = ⌊k/2⌋ from the run's length (:func:`budget_stages`). Each Grow records
``new_grown_fraction`` (the share of the grown weights that were not active before the
step's Prune); when most of the first half of the IEE steps grow back < 10% new weights,
IEE warns once.
"""
from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from .. import metrics as mask_metrics
from ..criteria import CRITERIA
from ..modules import warn_user
from ..optim import mask_gradients_, mask_parameters_, preserves_zeros, zero_optimizer_state_
from .base import METHODS, DynamicConfig, SparseMethod

# keys in SparseState.counters / buffers
PHASE = "iee.phase"              # "exploit" | "reduced" (after prune) | "explore"
OMEGA = "iee.omega"              # Ω_t per layer ({"*": Ω_t} under global) of the current step
FRACTION = "iee.fraction"        # α_t of the current step
KEPT = "iee.kept"                # per-layer |Θ_K| between prune and grow
CYCLES_DONE = "iee.cycles_done"
LOW_YIELD = "iee.low_yield"      # IEE steps so far whose Grow returned < LOW_NEW_FRACTION new weights
SNAP_SCALARS = "iee.snap.scalars"  # non-tensor optimizer state during R&E
BEFORE = "iee.before"            # Θ_K before this step's prune (IoU after grow)
SCORE = "iee.score"              # accumulated gradient-based scores
SNAP = "iee.snap."               # prefix: "iee.snap.param", "iee.snap.opt.<key>"
SNAP_PARAM = SNAP + "param"
SNAP_OPT = SNAP + "opt."

STAGES = ("estimate", "improve", "explore", "train")
# how H, J, Q are set: as given, or from the run's length (budget_stages)
STAGE_RULES = ("given", "budget")
# what ``budget_aware=True`` sets (issue 15): Θ_K's own LR clock, and Taylor |g ⊙ w| summed
# over each stage as the criterion, under which explored never-active weights can outrank
# the pruned ones (with magnitude, short runs grew back what they pruned)
BUDGET_AWARE = {"lr_clock": "trained", "criterion": "taylor"}
# the short-budget stage length of budget_stage_length: H = J = Q = max(MIN_STAGE, round(T / STEPS_PER_STAGE) // 2)
STEPS_PER_STAGE = 186
MIN_STAGE = 5
# an IEE step whose grown weights are < 10% new (not active before its prune) explored in
# vain; when most of the first half of the IEE steps do, the run says so (issue 15: median
# 0.07 on Fashion-MNIST at 3 epochs, where IEE trailed RigL by 1.5 points; 0.17–0.86 where it
# drew level or won)
LOW_NEW_FRACTION = 0.1


def budget_stage_length(total_steps: Optional[int]) -> int:
    """A short-budget H = J = Q for a run of ``total_steps`` optimizer steps (pass it as
    ``H=J=Q=budget_stage_length(T)``): max(5, ⌊round(T / 186) / 2⌋), i.e. ΔT ≈ T / 124
    (about 93 IEE steps before T_end = 0.75·T) and never stages shorter than 5 iterations.

    Not in the paper (its H = J = Q = 100/150 give 244/834 IEE steps in runs of
    98k/500k iterations). It is the configuration measured best on MNIST-1D/cnn1d from
    10 to 160 epochs (benchmarks/RESULTS.md, issue 15: half the stage of the sweep's
    k = max(10, round(T/186)), with the trained LR clock): 5, 5, 5, 6, 13 iterations at
    10, 20, 40, 80, 160 epochs of 31 steps. Longer stages lost most at short budgets,
    where few IEE steps fit. It is MNIST-1D's rule, not a general one: on Fashion-MNIST the
    best stages were *longer* than the sweep's k (2k on LeNet-5, 4k on LeNet-300-100, at 3–8
    epochs), this rule lost 0.04–0.25 points to the paper's stages on LeNet-300-100 and
    diverged on one LeNet-5 seed of three at 3 epochs (H = J = Q = 5, lr 0.05). The
    blow-up is in Reactivate & Explore (all of Θ_P trains at once at Θ_K's LR);
    ``explore_lr=0.1`` prevents it there but costs short stages 2–6 points on MNIST-1D. A
    task's ``new_grown_fraction`` (in the grow records) says which way to go: short stages
    where it is high at the paper's stages (0.36–0.73 on MNIST-1D), longer ones where Grow
    mostly returns the weights it pruned (0.08–0.21 on Fashion-MNIST at 3–8 epochs). All
    of this was measured with the magnitude criterion; with ``budget_aware=True`` (Taylor)
    these short stages led RigL at every MNIST-1D budget and came within 0.4 points of it on
    Fashion-MNIST LeNet-5 at 3–40 epochs (RESULTS.md, issue 15, sections 7 and 8); there,
    longer exploitation stages, H = J = 2·k with Q = k (:func:`budget_stages`,
    ``stages="budget"``, the recommended setting), froze Θ_K in 15% of the run instead of
    25% and closed the gap at 3 epochs (section 9), at the price of 0.3–3 points on
    MNIST-1D. Without ``total_steps`` it is the floor, 5."""
    if total_steps is None:
        return MIN_STAGE
    return max(MIN_STAGE, round(int(total_steps) / STEPS_PER_STAGE) // 2)


def budget_stages(total_steps: int) -> Tuple[int, int, int]:
    """The budget-aware stages (``stages="budget"``): H = J = k, Q = ⌊k/2⌋ with
    k = max(10, round(T / 186)) for a run of T optimizer steps, so ΔT ≈ T / 74 (about 55
    IEE steps before T_end = 0.75·T) and Θ_K is frozen in Q / ΔT = 20% of the iterations
    before T_end (15% of the run), against 33% (25%) with H = J = Q. The short stage
    ⌊k/2⌋ is :func:`budget_stage_length`.

    Not in the paper (its H = J = Q = 100/150 on runs of 98k/500k iterations). Measured
    with ``budget_aware=True`` on three tasks, 3 seeds (benchmarks/RESULTS.md, issue 15,
    section 9): within 0.2 points of RigL or better at 23 of 24 (task, budget, density)
    cells, MNIST-1D/cnn1d at 10–160 epochs (+0.9 to +17.7), Fashion-MNIST LeNet-5 at 3–40
    epochs and LeNet-300-100 at 3–20 epochs, at densities 0.1 and 0.05; the miss is
    LeNet-5 at 20 epochs, 0.05 (−0.31 ± 0.07 over 5 seeds). Even stages H = J = Q = ⌊k/2⌋ met 19 of the 24:
    at 3 epochs on LeNet-5 they froze Θ_K for 25% of a run that under-fits (−0.29 ± 0.08
    over 16 seeds, against −0.04 ± 0.07 here), though they were 0.3–3 points better on
    MNIST-1D, where both lead RigL by far."""
    k = max(2 * MIN_STAGE, round(int(total_steps) / STEPS_PER_STAGE))
    return k, k, k // 2


def iee_cycles(total_steps: int, end_fraction: float, H: int, J: int, Q: int) -> int:
    """T, the number of IEE steps: ⌊T_end / ΔT⌋ with T_end = ⌊end_fraction · total_steps⌋."""
    return int(end_fraction * total_steps) // (H + J + Q)


def iee_events(i: int, H: int, J: int, Q: int, cycles: int) -> Tuple[str, ...]:
    """Structure changes at the start of iteration ``i`` (Algorithm 1, lines 5–14), in order.

    prune: (i + J + Q) mod ΔT = 0; reactivate: (i + Q) mod ΔT = 0; grow: i mod ΔT = 0;
    each only for the first ``cycles`` IEE steps. With J = 0 prune and reactivate fall
    on the same iteration and both happen (prune first).
    """
    dt = H + J + Q
    out = []
    if i >= H and (i - H) % dt == 0 and (i - H) // dt < cycles:
        out.append("prune")
    if i >= H + J and (i - H - J) % dt == 0 and (i - H - J) // dt < cycles:
        out.append("reactivate")
    if i >= dt and i % dt == 0 and i // dt <= cycles:
        out.append("grow")
    return tuple(out)


def iee_frozen_before(i: int, H: int, J: int, Q: int, cycles: int) -> int:
    """How many of the iterations 1 … i − 1 are Reactivate & Explore iterations (Θ_K
    frozen): Q per finished IEE step plus the part of the current one already past
    H + J; the same count as summing ``iee_stage(j) == "explore"`` over j < i."""
    dt = H + J + Q
    done = min(i // dt, cycles)
    n = done * Q
    if i // dt < cycles:
        n += max(0, i % dt - (H + J))
    return n


def iee_lr_step(step: int, total_steps: int, H: int, J: int, Q: int, cycles: int) -> float:
    """The schedule step of optimizer step ``step`` (0-based, iteration i = step + 1) on
    Θ_K's clock (``lr_clock="trained"``): the clock advances only in iterations that
    train Θ_K, and there T / (T − cycles·Q) times faster (cycles·Q: every frozen
    iteration of the run), so that Θ_K's trained steps cover the whole schedule and it
    ends where the user's schedule ends:

        s_K = (step − F(step + 1)) · T / (T − cycles·Q),   F = :func:`iee_frozen_before`.

    During Reactivate & Explore s_K stands still, so Θ_P explores at the LR Θ_K had when
    it was frozen and Θ_K resumes where it stopped, instead of losing the (early,
    high-LR) part of the schedule that passed while it was frozen."""
    frozen_total = cycles * Q
    return (step - iee_frozen_before(step + 1, H, J, Q, cycles)) * total_steps / (total_steps - frozen_total)


def iee_stage(i: int, H: int, J: int, Q: int, cycles: int) -> str:
    """The stage iteration ``i`` trains in: ``estimate`` (Θ_K, H), ``improve`` (reduced Θ_K,
    J), ``explore`` (Θ_P with Θ_K frozen, Q) or ``train`` (plain sparse training after the
    last IEE step)."""
    dt = H + J + Q
    if i // dt >= cycles:
        return "train"
    r = i % dt
    if r < H:
        return "estimate"
    if r < H + J:
        return "improve"
    return "explore"


def _needs_grad(criterion: str) -> bool:
    try:
        CRITERIA.get(criterion)(torch.zeros(1), None, torch.Generator())
    except ValueError:
        return True
    return False


@dataclass
class IEEConfig(DynamicConfig):
    """IEE's options (paper defaults: H = J = Q = 100 on CIFAR-10, 150 on ImageNet).

    H, J, Q: iterations of Importance Estimation, Accuracy Improvement, Reactivate &
        Explore; ΔT = H + J + Q. ``update_interval`` is always derived from them (a value
        passed in is replaced by H + J + Q: set H, J, Q to change ΔT).
    stages: ``given`` (H, J, Q as set) or ``budget``: H, J, Q from the run's length,
        :func:`budget_stages` (H = J = k, Q = ⌊k/2⌋, k = max(10, round(T / 186))),
        replacing the values given. With ``budget_aware=True`` it is the configuration
        measured against RigL across budgets (issue 15); needs ``total_steps``.
    alpha: Ω_0, the initial update fraction, decayed by ``fraction_schedule`` until T_end.
    criterion: any registered criterion, used for both prune and grow; gradient-based
        ones (gradient, taylor) are summed over the stage's iterations.
    freeze: freeze Θ_K during Reactivate & Explore.
    grow_init: ``dormant`` (grown weights keep their explored, MRU-initialised values)
        or ``zero``.
    grow_by: ``criterion`` or ``random`` (SET-like growth among the explored weights).
    init: ``random`` mask, or ``criterion`` top-k of the weights at construction
        (start from a pretrained dense model).
    unused_init: with ``init=random``, the value a weight that has never been active
        starts Reactivate & Explore from: ``zero`` (it has no most-recently-used value)
        or ``weights`` (its random value at construction). On MNIST-1D/cnn1d at 10% ERK
        ``zero`` is clearly better (benchmarks/RESULTS.md): random init values are as
        large as trained weights, so magnitude growth picks them for their size. With
        ``init=criterion`` the weights outside the first mask were used in pre-training
        and explore from their pretrained values whatever this says.
    lr_clock: ``step`` (the paper: the LR schedule follows the optimizer step) or
        ``trained``: Θ_K's LR follows the steps that train it (:func:`iee_lr_step`); the
        frozen Reactivate & Explore steps no longer burn its high-LR phase. Used through
        :meth:`IEE.lr_step`, which regrow's training loop calls; a loop of your own
        evaluates its schedule at ``method.lr_step(step)``.
    explore_lr: Θ_P's learning rate during Reactivate & Explore as a multiple of the
        step's LR (1.0: the paper). Θ_P is every inactive weight, (1 − d)/d times as many as
        Θ_K at density d, and all of it starts training at once: a unit's pre-activation
        moves by Σ_j x_j·Δw_j over its trained inputs, so one step at the sparse model's LR
        moves the function up to about 1/d times as far as a step of sparse training
        (on Fashion-MNIST/LeNet-5 at d = 0.1 and lr 0.05 a short-stage run blew up there,
        benchmarks/RESULTS.md, issue 15). Scaling by about d keeps the step comparable.
        Applied by the method from the optimizer's step hooks (:meth:`step_lr_scale`), so
        it acts in any training loop; needs ``freeze`` (otherwise Θ_K shares the step).
    budget_aware: the preset of what measured better at short budgets (benchmarks/RESULTS.md,
        issue 15): ``True`` sets ``lr_clock="trained"`` and ``criterion="taylor"``, whatever
        those say. ``False`` (default) leaves every option as given. Taylor |g ⊙ w| summed
        over each stage lets explored never-active weights (which start from 0) outrank the
        weights just pruned; with magnitude, short runs grew back what they had pruned
        (``new_grown_fraction`` 0.08 vs 0.42 on Fashion-MNIST at 3 epochs). With Taylor,
        IEE gained up to 10 points on MNIST-1D and 0.7–2 on Fashion-MNIST at 3 epochs. At
        20–40 epochs on Fashion-MNIST magnitude with the same stages was 0.15–0.4 better
        at density 0.1 (0.6 on LeNet-300-100 at 0.05) but 0.26–1.1 worse on LeNet-5 at 0.05
        (at 20 epochs it grew back the pruned weights), so the preset keeps Taylor at any
        length; it stays off by default (the paper's method). It needs gradients: with
        ``init="criterion"`` the weights' ``.grad`` must be filled when the method is built.
        It does not choose H, J, Q: pair it with ``stages="budget"`` (what was measured,
        :func:`budget_stages`) or give your own. Nor does it set ``explore_lr``: it helps
        paper-length stages and hurts short ones.
    """

    update_interval: Optional[int] = None
    H: int = 100
    J: int = 100
    Q: int = 100
    criterion: str = "magnitude"
    freeze: bool = True
    grow_init: str = "dormant"
    grow_by: str = "criterion"
    init: str = "random"
    unused_init: str = "zero"
    lr_clock: str = "step"
    explore_lr: float = 1.0
    budget_aware: bool = False
    stages: str = "given"


class IEECycle(SparseMethod):
    """The IEE cycle (Algorithm 1), one template for every unit of sparsity: the event
    schedule, Θ_K frozen bit-exactly during Reactivate & Explore, the evaluation view,
    the prune/grow bookkeeping and records, and the training cost. Unstructured/N:M IEE
    (:class:`IEE`) and channel IEE (:class:`regrow.methods.iee_channel.ChannelIEE`) fill
    in the selection hooks:

    * :meth:`accumulate_scores` (every Importance Estimation and Reactivate & Explore
      iteration, while ``.grad`` is dense);
    * :meth:`select_prune` (choose and install the reduced Θ_K; returns Ω_t),
    * :meth:`grow_scores`, :meth:`select_grow` and :meth:`install_grown`,
    * :meth:`update_record` (the state figures logged with each prune and grow).
    """

    needs_total_steps = True
    keeps_dormant = True
    dynamic = True
    # the message's hint when no IEE step fits the run
    no_cycle_hint: str = "lower H, J, Q or train longer"
    # the advice when exploration keeps growing back what was pruned
    low_exploration_hint: str = "train longer, or use RigL for a run this short"

    def validate_config(self) -> None:
        cfg = self.config
        if not isinstance(cfg.budget_aware, bool):
            raise ValueError(f"budget_aware must be true or false, got {cfg.budget_aware!r}")
        for field, low in (("H", 1), ("J", 0), ("Q", 1)):
            v = getattr(cfg, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{field} must be an integer >= {low}, got {v!r}")
        if cfg.budget_aware:
            cfg = dataclasses.replace(cfg, **BUDGET_AWARE)
        if cfg.stages not in STAGE_RULES:
            raise ValueError(f"stages must be one of {', '.join(STAGE_RULES)}; got {cfg.stages!r}")
        if cfg.stages == "budget":
            ts = cfg.total_steps
            if isinstance(ts, bool) or not isinstance(ts, int) or ts <= 0:
                raise ValueError(f"stages='budget' sets H, J, Q from total_steps, which must be a positive "
                                 f"integer (the optimizer steps of the run); got {ts!r}")
            H, J, Q = budget_stages(ts)
            cfg = dataclasses.replace(cfg, H=H, J=J, Q=Q)
        # ΔT is H + J + Q; a shared update_interval (a compare grid passes one to every
        # dynamic method) does not apply to IEE and is replaced
        self.config = dataclasses.replace(cfg, update_interval=cfg.H + cfg.J + cfg.Q)
        super().validate_config()
        cfg = self.config
        for field, allowed in (("grow_init", ("dormant", "zero")), ("grow_by", ("criterion", "random")),
                               ("init", ("random", "criterion")), ("unused_init", ("zero", "weights")),
                               ("lr_clock", ("step", "trained"))):
            if getattr(cfg, field) not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(allowed)}; got {getattr(cfg, field)!r}")
        if not isinstance(cfg.freeze, bool):
            raise ValueError(f"freeze must be true or false, got {cfg.freeze!r}")
        lr = cfg.explore_lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"explore_lr must be a number > 0 (a multiple of the step's LR), got {lr!r}")
        if lr != 1.0 and not cfg.freeze:
            raise ValueError(f"explore_lr = {lr} needs freeze=true: without the freeze Θ_K trains in the "
                             f"same Reactivate & Explore steps and would get the scaled LR too")
        if cfg.lr_clock == "trained" and not cfg.freeze:
            warnings.warn("lr_clock='trained' does nothing with freeze=false: Θ_K trains in every "
                          "iteration, so its clock is the step", stacklevel=3)
        if _needs_grad(cfg.criterion) and cfg.H < 2:
            raise ValueError(
                f"criterion '{cfg.criterion}' is summed over the Importance Estimation stage, whose "
                f"first instance has H − 1 iterations: H must be >= 2, got {cfg.H}"
            )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.cycles = iee_cycles(cfg.total_steps, cfg.end_fraction, cfg.H, cfg.J, cfg.Q)
        if self.cycles < 1:
            raise ValueError(
                f"no IEE step fits: T_end = {self.t_end} steps (end_fraction {cfg.end_fraction:.4g} × "
                f"total_steps {cfg.total_steps}) is shorter than ΔT = H + J + Q = {cfg.update_interval}; "
                f"{self.no_cycle_hint}"
            )
        self._accumulates = _needs_grad(cfg.criterion)
        self._others = self._dense_parameters()
        self.state.counters.setdefault(PHASE, "exploit")
        self.state.counters.setdefault(CYCLES_DONE, 0)
        self.init_cycle_state()
        self._run_events(1)  # H = 1: the first prune comes before iteration 1

    def _dense_parameters(self) -> List[torch.Tensor]:
        """Parameters outside the sparse set (biases, normalisation): frozen with Θ_K."""
        ids = {id(p) for p in self.params.values()}
        return [p for p in self.model.parameters() if id(p) not in ids]

    # ---- hooks the units fill in --------------------------------------------------
    def init_cycle_state(self) -> None:
        """Extra state the unit keeps for the cycle (called once, after the masks exist)."""

    @abc.abstractmethod
    def accumulate_scores(self) -> None:
        """Add this iteration's importance (the gradient is still dense)."""

    @abc.abstractmethod
    def select_prune(self, fraction: float) -> Any:
        """Choose the reduced Θ_K for update fraction α_t and install it (pruned values
        become dormant); return Ω_t (what :meth:`select_grow` gets back), and put the
        record fields of the choice in ``self._choice``."""

    @abc.abstractmethod
    def grow_scores(self) -> Dict[str, torch.Tensor]:
        """I(Θ_P), read at the end of Reactivate & Explore."""

    @abc.abstractmethod
    def select_grow(self, scores: Dict[str, torch.Tensor], omega: Any, kept: Dict[str, torch.Tensor]) -> Any:
        """Choose what grows back (Ω_t of the explored units, by ``scores``) on top of
        ``kept``, Θ_K's masks; record fields in ``self._choice``."""

    @abc.abstractmethod
    def install_grown(self, selection: Any) -> None:
        """Install the masks of Θ_K + the grown units (grown values by ``grow_init``)."""

    def update_record(self) -> Dict[str, Any]:
        """The state figures logged with each prune and grow."""
        return {"density": self.state.density(), "layer_density": self.state.layer_densities()}

    # ---- schedule ------------------------------------------------------------
    def stage(self, i: int) -> str:
        cfg = self.config
        return iee_stage(i, cfg.H, cfg.J, cfg.Q, self.cycles)

    def lr_step(self, step: int) -> float:
        """The LR schedule's step for optimizer step ``step``: ``step`` itself (the paper),
        or Θ_K's clock with ``lr_clock="trained"`` (:func:`iee_lr_step`)."""
        cfg = self.config
        if cfg.lr_clock == "step" or not cfg.freeze:
            return step
        return iee_lr_step(step, cfg.total_steps, cfg.H, cfg.J, cfg.Q, self.cycles)

    def step_lr_scale(self) -> float:
        """``explore_lr`` during Reactivate & Explore (only Θ_P has a gradient then), 1 otherwise."""
        return float(self.config.explore_lr) if self.phase == "explore" else 1.0

    def loss_spike_hint(self, step: int) -> str:
        # the loss of step i shows the update of step i − 1
        if "explore" not in (self.stage(step), self.stage(max(1, step - 1))):
            return ""
        return (f"it is in Reactivate & Explore, where every inactive weight trains at once at the step's LR "
                f"(explore_lr = {self.config.explore_lr:g}); if the run does not recover, set explore_lr "
                f"below 1 (0.1 stopped such a blow-up, benchmarks/RESULTS.md)")

    @property
    def phase(self) -> str:
        return self.state.counters[PHASE]

    # ---- masks -----------------------------------------------------------------
    def live_masks(self) -> Dict[str, torch.Tensor]:
        """Θ_K, or every weight (Θ_K ∪ Θ_P) during Reactivate & Explore."""
        if self.state.counters.get(PHASE) == "explore":
            return {n: torch.ones_like(m) for n, m in self.state.masks.items()}
        return self.state.masks

    def _explored(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(tensor, Θ_K mask) pairs that hold explored values during Reactivate & Explore."""
        return [(self.params[n], self.state.masks[n]) for n in self.names]

    @contextlib.contextmanager
    def evaluation(self):
        """The model scores Θ_K only: during Reactivate & Explore the explored weights Θ_P
        are live (they are not part of the sparse model), so they are zeroed for the
        duration and their exact values restored afterwards."""
        if self.state.counters.get(PHASE) != "explore":
            yield
            return
        pairs = self._explored()
        saved = [t.detach().clone() for t, _ in pairs]
        with torch.no_grad():
            for t, m in pairs:
                t.mul_(m)
        try:
            yield
        finally:
            with torch.no_grad():
                for (t, _), v in zip(pairs, saved):
                    t.copy_(v)

    def expected_counts(self) -> Dict[str, int]:
        """|Θ_K| per layer: target − Ω_t between Prune and Grow, the target otherwise."""
        if self.state.counters.get(PHASE) in ("reduced", "explore"):
            return dict(self.state.counters[KEPT])
        return dict(self.state.targets)

    def apply_masks(self) -> None:
        # after a load in the middle of Reactivate & Explore, Θ_P is live: keep it
        live = self.live_masks()
        for n in self.names:
            p, m = self.params[n], live[n]
            with torch.no_grad():
                p.mul_(m)
            zero_optimizer_state_(self.optimizer, p, ~m)

    # ---- the training step --------------------------------------------------------
    def mask_step_gradients(self) -> None:
        if self.phase != "explore":
            super().mask_step_gradients()
        elif self.config.freeze:
            # Reactivate & Explore: only Θ_P trains; Θ_K and the dense parameters are
            # frozen (no gradient: the optimizer skips them)
            mask_gradients_([self.params[n] for n in self.names], [~self.state.masks[n] for n in self.names])
            for p in self._others:
                p.grad = None

    def restore_after_update(self) -> None:
        if self.phase != "explore":
            params, masks = self._step_operands()
            mask_parameters_(params, masks, nonfinite=not preserves_zeros(self.optimizer))
        elif self.config.freeze:
            snap = self.state.buffers[SNAP_PARAM]
            with torch.no_grad():
                for n in self.names:
                    p = self.params[n]
                    p.copy_(torch.where(self.state.masks[n], snap[n], p))

    def before_step(self, step: int) -> None:
        # scores summed over Importance Estimation (for Prune) and over Reactivate &
        # Explore (for Grow), read while .grad is still dense
        if self._accumulates and self.stage(step) in ("estimate", "explore"):
            self.accumulate_scores()

    def after_step(self, step: int) -> None:
        self._run_events(step + 1)

    def _run_events(self, i: int) -> None:
        cfg = self.config
        for event in iee_events(i, cfg.H, cfg.J, cfg.Q, self.cycles):
            getattr(self, "_" + event)(i)

    # ---- the structure changes -------------------------------------------------------
    def _prune(self, i: int) -> None:
        """Prune (Eq. 2): Θ_K ← Θ_K − the Ω_t least important, chosen by :meth:`select_prune`."""
        fraction = self.update_fraction(i)
        before = dict(self.state.masks)
        self._choice: Dict[str, Any] = {}
        omega = self.select_prune(fraction)
        record = mask_metrics.record_prune(self.state, before, self.state.masks)
        self.state.buffers[BEFORE] = {n: m.clone() for n, m in before.items()}
        self.state.counters[OMEGA] = omega
        self.state.counters[FRACTION] = fraction
        self.state.counters[KEPT] = {n: int(torch.count_nonzero(self.state.masks[n])) for n in self.names}
        self.state.counters[PHASE] = "reduced"
        self.log({"step": self.state.step, "event": "prune", "fraction": fraction, **self._choice, **record,
                  **self.update_record()})

    def _reactivate(self, i: int) -> None:
        """Reactivate & Explore starts: Θ_P back at its dormant (MRU) values; with the
        freeze, a snapshot of Θ_K's values and optimizer state."""
        opt = self.optimizer
        for n in self.names:
            p, m, d = self.params[n], self.state.masks[n], self.state.dormant[n]
            with torch.no_grad():
                p.copy_(torch.where(m, p, d))   # Θ_P back at its MRU values
            zero_optimizer_state_(opt, p, ~m)
        if self.config.freeze:
            bufs = self.state.buffers
            bufs[SNAP_PARAM] = {n: self.params[n].detach().clone() for n in self.names}
            scalars: Dict[str, Dict[str, object]] = {}
            for n in self.names:
                for key, v in (opt.state.get(self.params[n], {}) if opt is not None else {}).items():
                    if torch.is_tensor(v):
                        bufs.setdefault(SNAP_OPT + str(key), {})[n] = v.detach().clone()
                    else:
                        scalars.setdefault(n, {})[str(key)] = copy.deepcopy(v)
            self.state.counters[SNAP_SCALARS] = scalars
        self.state.counters[PHASE] = "explore"

    def _restore_frozen_state(self) -> None:
        """Θ_K's optimizer state back to its snapshot from the start of the stage."""
        opt, bufs = self.optimizer, self.state.buffers
        scalars = self.state.counters.pop(SNAP_SCALARS, {})
        for key in [k for k in bufs if k.startswith(SNAP_OPT)]:
            snaps = bufs[key]
            name = key[len(SNAP_OPT):]
            for n, snap in snaps.items():
                p = self.params[n]
                st = opt.state.get(p, {})
                if name not in st or not torch.is_tensor(st[name]):
                    continue
                v = st[name]
                snap = snap.to(v.device)
                with torch.no_grad():
                    if v.shape == p.shape:
                        v.copy_(torch.where(self.state.masks[n].to(v.device), snap, v))
                    else:
                        v.copy_(snap)  # per-parameter scalar (Adam's step)
        if opt is not None:
            for n, vals in scalars.items():
                st = opt.state.get(self.params[n])
                if st is not None:
                    for key, v in vals.items():
                        st[key] = v
        for key in [k for k in bufs if k.startswith(SNAP)]:
            del bufs[key]   # frees the snapshot

    def _grow(self, i: int) -> None:
        """Grow (Eq. 4): Θ_K ← Θ_K + the Ω_t most important explored units, chosen by
        :meth:`select_grow`; the rest of Θ_P goes dormant at its explored values."""
        scores = self.grow_scores()
        if self.config.freeze:
            self._restore_frozen_state()
        kept = dict(self.state.masks)
        omega = self.state.counters.pop(OMEGA)
        fraction = self.state.counters.pop(FRACTION)
        self._choice = {}
        selection = self.select_grow(scores, omega, kept)
        for n in self.names:
            p, d = self.params[n], self.state.dormant[n]
            with torch.no_grad():
                d.copy_(torch.where(kept[n], d, p))   # Θ_P goes dormant at its explored values
        self.state.counters[PHASE] = "exploit"
        self.install_grown(selection)
        for n in self.names:   # explored, not grown: inactive again, with zero state
            zero_optimizer_state_(self.optimizer, self.params[n], ~self.state.masks[n])
        before = self.state.buffers.pop(BEFORE)
        record = mask_metrics.record_grow(self.state, before, kept, dict(self.state.masks))
        self.state.counters.pop(KEPT)
        self.state.counters[CYCLES_DONE] += 1
        self.log({"step": self.state.step, "event": "grow", "fraction": fraction, **self._choice, **record,
                  **self.update_record()})
        self._check_exploration(record.get("new_grown_fraction"))

    def _check_exploration(self, new_fraction: Optional[float]) -> None:
        """Warn once, half-way through the IEE steps (runs of ≥ 4), when most of them grew
        back what they had pruned: exploration found little, yet its frozen iterations
        cost Θ_K training. Silent otherwise."""
        counters = self.state.counters
        if new_fraction is not None and new_fraction < LOW_NEW_FRACTION:
            counters[LOW_YIELD] = counters.get(LOW_YIELD, 0) + 1
        done, half = counters[CYCLES_DONE], (self.cycles + 1) // 2
        low = counters.get(LOW_YIELD, 0)
        if self.cycles < 4 or done != half or 2 * low <= half:
            return
        warn_user(
            f"{self.name}: in {low} of the first {half} IEE steps Grow brought back mostly the weights Prune "
            f"had removed (< {LOW_NEW_FRACTION:.0%} of the grown weights new, metric new_grown_fraction): "
            f"exploration is finding little in this run, while its frozen Reactivate & Explore iterations "
            f"cost the active weights training; {self._low_exploration_advice()}")
        self.log({"step": self.state.step, "event": "low_exploration", "low_new_steps": low, "of_steps": half})

    def _low_exploration_advice(self) -> str:
        if self.config.criterion == "magnitude":
            # magnitude favours the pruned weights' MRU values over explored ones from 0
            return ("set budget_aware=True with stages='budget' (the Taylor criterion, under which explored "
                    "weights can outrank the pruned ones, and stages set from the run's length; with them IEE "
                    "went from 86.99 to 88.35 on Fashion-MNIST at 3 epochs, RigL 88.51: benchmarks/RESULTS.md), "
                    "or " + self.low_exploration_hint)
        return self.low_exploration_hint

    # ---- cost --------------------------------------------------------------------------
    def step_flops(self, zeta_sparse: float, zeta_dense: float) -> float:
        """IEE appendix §3: 3·ζ_P in Importance Estimation, Accuracy Improvement and after
        T_end; 2·ζ_P + ζ_D in Reactivate & Explore (dense forward, sparse gradients of the
        frozen Θ_K). Without freezing every weight trains there: 3·ζ_D."""
        if self.stage(self.state.step) == "explore":
            return 2.0 * zeta_sparse + zeta_dense if self.config.freeze else 3.0 * zeta_dense
        return 3.0 * zeta_sparse

    def step_flops_physical(self, zeta_sparse: float, zeta_dense: float) -> float:
        """As :meth:`step_flops` except in Reactivate & Explore, where Θ_P is live: the
        forward pass runs every weight (ζ_D), activation gradients flow through every
        live weight (ζ_D), and the weight gradients of Θ_P are computed (ζ_D − ζ_P with
        Θ_K frozen, ζ_D without): 3·ζ_D − ζ_P per sample, not the appendix's 2·ζ_P + ζ_D."""
        if self.stage(self.state.step) == "explore":
            return 3.0 * zeta_dense - zeta_sparse if self.config.freeze else 3.0 * zeta_dense
        return 3.0 * zeta_sparse


@METHODS.register("iee")
class IEE(IEECycle):
    """IEE for unstructured and N:M sparsity (see the module docstring): the cycle of
    :class:`IEECycle` over single weights, scored by ``criterion`` (magnitude by
    default; gradient-based ones summed over each stage), Ω_t per layer
    (Prune: Θ_K ← Θ_K − ArgTopK(−I(Θ_K), Ω_t), Grow: Θ_K ← Θ_K + ArgTopK(I(Θ_P), Ω_t))."""

    Config = IEEConfig
    variants = (("channel", "iee_channel"),)  # --method iee --structure channel

    def init_cycle_state(self) -> None:
        cfg = self.config
        if cfg.init == "random" and cfg.unused_init == "zero":
            for n, d in self.state.dormant.items():
                d.mul_(self.state.masks[n])   # never-active weights have no MRU value: 0
        if self._accumulates:
            self.state.buffers[SCORE] = {n: torch.zeros_like(p, dtype=torch.float32)
                                         for n, p in self.params.items()}

    def initial_masks(self, targets):
        if self.config.init == "random":
            return super().initial_masks(targets)
        crit = CRITERIA.get(self.config.criterion)
        needs_grad = _needs_grad(self.config.criterion)
        scores = {}
        for n, p in self.params.items():
            if needs_grad and p.grad is None:
                raise ValueError(
                    f"init='criterion' with criterion '{self.config.criterion}' needs gradients in "
                    f"'{n}'.grad when the method is built; use init='random' or criterion='magnitude'"
                )
            scores[n] = crit(p, p.grad, self.generator)
        return self.select(scores, targets)

    # ---- scores --------------------------------------------------------------------------
    def accumulate_scores(self) -> None:
        crit = CRITERIA.get(self.config.criterion)
        self.stage_scores(SCORE, {n: crit(p, p.grad, self.generator).float()
                                  for n, p in self.params.items() if p.grad is not None})

    def _scores(self, which: str) -> Dict[str, torch.Tensor]:
        if which == "grow" and self.config.grow_by == "random":
            rnd = CRITERIA.get("random")
            return {n: rnd(self.params[n], None, self.generator) for n in self.names}
        if self._accumulates:
            acc = self.state.buffers[SCORE]
            out = {n: acc[n].clone() for n in self.names}
            for t in acc.values():
                t.zero_()
            return out
        crit = CRITERIA.get(self.config.criterion)
        return {n: crit(self.params[n], self.params[n].grad, self.generator) for n in self.names}

    def grow_scores(self) -> Dict[str, torch.Tensor]:
        return self._scores("grow")

    # ---- selection: per-layer (or global) top-k of single weights ---------------------
    def select_prune(self, fraction: float) -> Dict[str, int]:
        counts = self.drop_counts(fraction)
        after = self.prune(self._scores("prune"), counts, dict(self.state.masks))
        targets = dict(self.state.targets)
        self.commit(after, record=False)       # pruned values -> dormant, zero state
        self.state.targets = targets           # |Θ_K| shrinks for this IEE step only
        return counts

    def select_grow(self, scores, omega, kept):
        return self.grow(scores, omega, kept)

    def install_grown(self, selection: Dict[str, torch.Tensor]) -> None:
        self.commit(selection, grow_init=self.config.grow_init, record=False)
