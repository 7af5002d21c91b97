"""Soft channel masks: the base of latency-constrained channel methods (HALP, IEE).

Units are channel groups (:mod:`regrow.structured.groups`). The channel-level masks
live in ``SparseState.buffers["channels"]`` (one bool vector per group); from them
every touched tensor gets an ordinary per-parameter bool mask in
``SparseState.masks`` (conv/linear out-rows and in-columns, conv biases, BN γ and β),
so the shared machinery of :class:`~regrow.methods.base.SparseMethod` keeps a masked
channel's parameters and optimizer state exactly zero after every step, all members of
a group together. BN running statistics of masked channels are zeroed too, so the
masked model and the physically slimmed one compute the same function.

Importance is Taylor on BatchNorm (Molchanov et al. 2019; IEE appendix Eq. 2):
I_j = Σ_{BN members} |g_γj·γ_j + g_βj·β_j|, accumulated over the scoring iterations in
``SparseState.buffers["importance"]``. Selection is HALP's latency-saliency knapsack
(:mod:`regrow.knapsack`) over a latency table or a FLOPs model
(:mod:`regrow.structured.latency`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .. import knapsack
from ..state import SparseState
from ..structured.groups import ChannelGroup, dim_keeps, find_groups, masked_tensors
from ..structured.latency import (
    COSTS, CostGraph, CostModel, LatencyTable, build_table, count_macs, measure_model, model_layers,
)
from ..structured.slim import kept_indices, slim_, slim_copy
from .base import Pristine, RunFacts, SparseMethod, SparsityConfig


@dataclass
class ChannelConfig(SparsityConfig):
    """Fields of channel (latency-constrained) methods.

    input_shape: one sample's shape, e.g. (3, 32, 32): the model is traced on it.
    cost: ``latency`` (a table measured on this device) | ``flops`` (MACs, device-free).
    latency_table: path of a table from ``regrow latency-table``; ``None`` measures the
        missing entries now (slow on CPU) and, with ``latency_cache``, stores them there.
    latency_batch: the batch size the table is measured at.
    latency_target: target as a fraction of the dense model's cost, in (0, 1).
    latency_ms: target in absolute milliseconds (or MMACs with cost='flops') instead.
    min_channels: channels every group keeps at least.
    bins: budget bins of the knapsack's dynamic programme.
    """

    structure: str = "channel"
    input_shape: Tuple[int, ...] = ()
    cost: str = "latency"
    latency_table: Optional[str] = None
    latency_cache: Optional[str] = None
    latency_batch: int = 1
    table_points: int = 8
    latency_target: Optional[float] = 0.5
    latency_ms: Optional[float] = None
    min_channels: int = 1
    bins: int = 1000


def bn_taylor(group: ChannelGroup, modules: Dict[str, nn.Module]) -> torch.Tensor:
    """Taylor importance on BatchNorm (IEE appendix Eq. 2, HALP §3.2):
    I_j = Σ_{BN ∈ group} |∂L/∂γ_j · γ_j + ∂L/∂β_j · β_j| — stateless; zero without gradients."""
    first = modules[group.bns[0]].weight
    out = torch.zeros(group.size, dtype=torch.float32, device=first.device)
    for m in group.members:
        if m.kind != "bn":
            continue
        bn = modules[m.module]
        if bn.weight.grad is None or bn.bias.grad is None:
            continue
        idx = torch.tensor(m.idxs, device=out.device)
        root = torch.tensor(m.root, device=out.device)
        s = (bn.weight.grad.detach() * bn.weight.detach() + bn.bias.grad.detach() * bn.bias.detach()).abs()
        out.index_add_(0, root, s[idx].float())
    return out


class ChannelMethod(SparseMethod):
    """A method whose units are channel groups; subclasses decide channel masks."""

    Config = ChannelConfig
    structures = ("channel",)

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 config: Any = None, example_inputs: Optional[torch.Tensor] = None, **overrides: Any):
        self._example_inputs = example_inputs   # read by setup_parameters
        super().__init__(model, optimizer, config, **overrides)

    def setup_parameters(self) -> None:
        """Trace the model's channel groups on one sample; ``params`` are every tensor a
        channel mask touches (BatchNorm statistics go to ``stats``); then the cost model
        and the budget Ψ."""
        self.example = self._example(self._example_inputs)
        self._example_inputs = None
        self._build_structure()
        self._pristine = Pristine({**self.params, **self.stats}, self.optimizer)
        self.setup_costs()

    def initial_state(self) -> SparseState:
        channels = self.initial_channels()
        masks, stats = self._derive(channels)
        targets = {n: int(m.sum()) for n, m in masks.items()}
        dormant = {n: p.detach().clone() for n, p in self.params.items()} if self.keeps_dormant else {}
        self._stat_masks = stats
        return SparseState(masks=masks, targets=targets, dormant=dormant,
                           buffers={"channels": channels, "importance": self._zero_importance()})

    @classmethod
    def run_options(cls, run: RunFacts) -> Dict[str, Any]:
        out = super().run_options(run)
        if run.input_shape is not None:   # the model is traced on one sample
            out["input_shape"] = tuple(run.input_shape)
        return out

    # ---- configuration -----------------------------------------------------------
    def validate_config(self) -> None:
        super().validate_config()
        cfg = self.config
        if cfg.cost not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(COSTS)}; got {cfg.cost!r}")
        if cfg.latency_ms is not None:
            if cfg.latency_ms <= 0:
                raise ValueError(f"latency_ms must be > 0, got {cfg.latency_ms!r}")
        elif cfg.latency_target is None or not 0 < cfg.latency_target < 1:
            raise ValueError(f"latency_target must be a fraction of the dense latency in (0, 1), "
                             f"got {cfg.latency_target!r} (or give latency_ms)")
        for f in ("min_channels", "bins", "latency_batch", "table_points"):
            v = getattr(cfg, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f} must be a positive integer, got {v!r}")
        if cfg.table_points < 2:
            raise ValueError(f"table_points must be ≥ 2, got {cfg.table_points}")
        shape = tuple(cfg.input_shape or ())
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"input_shape must be positive integers, e.g. [3, 32, 32]; got {cfg.input_shape!r}")
        self.config = dataclasses.replace(self.config, input_shape=shape)

    def _example(self, example_inputs) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if example_inputs is not None:
            return example_inputs[:1].to(device)
        if not self.config.input_shape:
            raise ValueError(f"method '{self.name}' needs input_shape (one sample's shape, e.g. "
                             "[3, 32, 32]) to trace the model's channel groups")
        return torch.zeros((1,) + self.config.input_shape, device=device)

    def _build_structure(self) -> None:
        self.groups: List[ChannelGroup] = find_groups(self.model, self.example)
        if not self.groups:
            raise ValueError(f"model {type(self.model).__name__} has no prunable channel group "
                             "(every group touches the stem, the classifier, or has no BatchNorm)")
        self.modules = dict(self.model.named_modules())
        ones = {g.name: torch.ones(g.size, dtype=torch.bool, device=self.example.device) for g in self.groups}
        keeps = dim_keeps(self.model, self.groups, ones)
        self.params: Dict[str, torch.Tensor] = {}
        self.stats: Dict[str, torch.Tensor] = {}
        for fqn, t, _ in masked_tensors(self.model, keeps):
            (self.params if isinstance(t, nn.Parameter) else self.stats)[fqn] = t
        self.names = list(self.params)
        self.layers = model_layers(self.model, self.example)
        self.graph = CostGraph(self.layers, self.groups)

    def setup_costs(self) -> None:
        """Cost model, dense cost and the budget Ψ; errors name the bad target or table."""
        cfg = self.config
        table = None
        if cfg.cost == "latency":
            device = self.example.device
            if cfg.latency_table is not None:
                table = LatencyTable.load(cfg.latency_table, device)
            else:
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    # timings differ between ranks, and so would the masks
                    raise ValueError("under torch.distributed give latency_table (a table built "
                                     "beforehand with `regrow latency-table`) or use cost='flops'")
                table = None
                if cfg.latency_cache is not None:
                    try:
                        table = LatencyTable.load(cfg.latency_cache, device)
                    except FileNotFoundError:
                        table = None
                table = build_table(self.layers, cfg.latency_batch, device, cfg.table_points, table=table,
                                    model=self.model, input_shape=tuple(self.example.shape[1:]))
                if cfg.latency_cache is not None:
                    table.save(cfg.latency_cache)
        self.cost = CostModel(self.layers, cfg.cost, table, cfg.latency_batch)
        full = {g.name: g.size for g in self.groups}
        self.dense_cost = self.graph.predict(self.cost, full)
        if cfg.latency_ms is not None:
            if cfg.cost != "latency":
                raise ValueError("latency_ms needs cost='latency'; with cost='flops' give latency_target")
            if cfg.latency_ms >= self.dense_cost:
                raise ValueError(f"latency_ms {cfg.latency_ms} must be below the dense model's predicted "
                                 f"latency {self.dense_cost:.4g} ms on this device")
            self.budget = float(cfg.latency_ms)
        else:
            self.budget = float(cfg.latency_target) * self.dense_cost
        smallest = self.graph.predict(self.cost, {g.name: min(cfg.min_channels, g.size) for g in self.groups})
        if self.budget < smallest:
            raise ValueError(f"latency target {self.budget:.4g} is below the cost {smallest:.4g} of the "
                             f"smallest structure (min_channels={cfg.min_channels} per group); raise the target")

    def _zero_importance(self) -> Dict[str, torch.Tensor]:
        return {g.name: torch.zeros(g.size, dtype=torch.float32, device=self.example.device) for g in self.groups}

    def initial_channels(self) -> Dict[str, torch.Tensor]:
        """Every channel active (methods that start from a pretrained dense model)."""
        return {g.name: torch.ones(g.size, dtype=torch.bool, device=self.example.device) for g in self.groups}

    # ---- masks ---------------------------------------------------------------------
    @property
    def channels(self) -> Dict[str, torch.Tensor]:
        return self.state.buffers["channels"]

    def counts(self, channels: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, int]:
        channels = self.channels if channels is None else channels
        return {g: int(c.sum()) for g, c in channels.items()}

    def _derive(self, channels: Dict[str, torch.Tensor]):
        keeps = dim_keeps(self.model, self.groups, channels)
        masks, stats = {}, {}
        for fqn, t, m in masked_tensors(self.model, keeps):
            (masks if isinstance(t, nn.Parameter) else stats)[fqn] = m
        return masks, stats

    def mask_stats(self) -> None:
        with torch.no_grad():
            for n, m in self._stat_masks.items():
                self.stats[n].mul_(m)

    def apply_masks(self) -> None:
        self._stat_masks = self._derive(self.channels)[1]
        super().apply_masks()
        self.mask_stats()

    def restore_after_update(self) -> None:
        super().restore_after_update()
        self.mask_stats()

    def commit_channels(self, channels: Dict[str, torch.Tensor], grow_init: str = "zero",
                        after_prune: Optional[Dict[str, torch.Tensor]] = None,
                        record: bool = True) -> Dict[str, float]:
        """Install channel masks: per-parameter masks via :meth:`commit` (dormant values,
        optimizer state), BN statistics of pruned channels zeroed, of grown ones reset to
        (mean 0, var 1)."""
        old_stats = self._stat_masks
        masks, stats = self._derive(channels)
        ap = self._derive(after_prune)[0] if after_prune is not None else None
        out = self.commit(masks, grow_init=grow_init, after_prune=ap, record=record)
        for n, m in masks.items():
            self.state.targets[n] = int(m.sum())
        with torch.no_grad():
            for n, m in stats.items():
                if n.endswith("running_var"):  # never tracked: start from the identity
                    self.stats[n].masked_fill_(m & ~old_stats[n] & (self.stats[n] == 0), 1.0)
        self.state.buffers["channels"] = {g: c.clone() for g, c in channels.items()}
        self._stat_masks = stats
        self.mask_stats()
        return out

    # ---- importance and selection ---------------------------------------------------
    def accumulate_importance(self) -> None:
        """Add this step's Taylor-on-BN score to every group's accumulator (HALP/IEE),
        once the optimizer takes the step."""
        self.stage_scores("importance", {g.name: bn_taylor(g, self.modules) for g in self.groups})

    def reset_importance(self) -> None:
        self.state.buffers["importance"] = self._zero_importance()

    def predicted_cost(self, channels: Optional[Dict[str, torch.Tensor]] = None) -> float:
        return self.graph.predict(self.cost, self.counts(channels))

    def knapsack(self, importance: Dict[str, torch.Tensor], candidates: Dict[str, torch.Tensor],
                 base: Dict[str, torch.Tensor], budget: float, lo: Optional[Dict[str, int]] = None,
                 search: int = 6, counts: Optional[Dict[str, int]] = None) -> Dict[str, torch.Tensor]:
        """Channels = ``base`` ∪ the top-j ``candidates`` of each group by importance, j chosen
        by the exact knapsack so the predicted total cost stays ≤ ``budget``.

        Costs are C_g(|base_g| + j) = Σ_{layers with outputs in g} T^l(p_in, |base_g| + j)
        with p_in at the current counts (HALP's marginal costs R_j summed). That prices
        each layer's inputs at their current width, so after removing channels the real
        (re-predicted) cost is below what the knapsack saw and after adding channels it
        can be above. The budget the knapsack sees is therefore calibrated: ``search``
        more solves (doubling the slack, then bisecting) find the largest knapsack budget
        whose solution's re-predicted cost is still ≤ ``budget``."""
        prepared = []
        for g in self.groups:
            cand = candidates[g.name]
            imp = importance[g.name].detach().float().cpu()
            idx = torch.nonzero(cand.cpu()).squeeze(1)
            order = idx[torch.sort(imp[idx], descending=True, stable=True).indices]
            low = 0 if lo is None else min(lo[g.name], len(idx))
            js = np.arange(low, len(idx) + 1)
            values = knapsack.top_prefix_values(imp[order].numpy())[low:]
            prepared.append((g, order, low, js, values, int(base[g.name].sum())))
        counts = self.counts() if counts is None else dict(counts)
        items = [knapsack.Item(values, self.graph.group_costs(self.cost, counts, g.name, n_base + js), low)
                 for g, order, low, js, values, n_base in prepared]
        fixed = self.graph.fixed_cost(self.cost, counts)

        def solve_at(inner: float):
            chosen = knapsack.solve(items, inner - fixed, self.config.bins)
            out = {}
            for (g, order, low, js, values, n_base), j in zip(prepared, chosen):
                new = base[g.name].clone()
                new[order[:j].to(new.device)] = True
                out[g.name] = new
            return out, self.graph.predict(self.cost, self.counts(out))

        tol = budget * 1e-9
        floor = fixed + sum(float(np.min(it.costs)) for it in items)  # every item at its cheapest
        inner = budget
        out, real = solve_at(inner)
        for _ in range(8):  # over budget (channels were added): lower the knapsack's budget
            if real <= budget + tol:
                break
            inner = max(inner - (real - budget), floor)
            out, real = solve_at(inner)
        if real > budget + tol:
            raise ValueError(f"knapsack: no structure within the budget {budget:.4g} was found")
        best, ok, bad = out, inner, None
        for _ in range(max(0, search)):
            slack = budget - real
            if slack <= 1e-4 * budget:
                break
            trial = ok + 2 * slack if bad is None else (ok + bad) / 2
            try:
                out, r = solve_at(trial)
            except ValueError:
                bad = trial
                continue
            if r <= budget + tol:
                best, ok, real = out, trial, r
            else:
                bad = trial
        return best

    # ---- reporting and persistence --------------------------------------------------
    def kept_channels(self) -> Dict[str, List[int]]:
        return {g: torch.nonzero(c).squeeze(1).tolist() for g, c in self.channels.items()}

    def structure_record(self) -> Dict[str, Any]:
        return {"predicted_cost": self.predicted_cost(), "dense_cost": self.dense_cost,
                "budget": self.budget, "cost_kind": self.config.cost,
                "channels_kept": sum(self.counts().values()),
                "channels_total": sum(g.size for g in self.groups)}

    def _dense_figures(self) -> Dict[str, float]:
        full = {g.name: g.size for g in self.groups}
        return {"macs_dense": count_macs(self.layers, self.graph.active(full)),
                "params_dense": sum(p.numel() for p in self.model.parameters())}

    def replaces_parameters(self) -> bool:
        return bool(getattr(self.config, "slim_after", False))

    def summary(self, measure: bool = False, batch_size: int = 1, repeats: int = 10,
                reference: Optional[Any] = None) -> Dict[str, Any]:
        """Figures for ``summary.json``: predicted cost (dense and now), MACs and parameters
        of the dense and the slimmed model; with ``measure`` also latency (ms) and
        throughput (images/s) of both on this device and the measured speedup.

        Once the model was slimmed in place the dense figures are those recorded at the
        slimming, and the dense latency is measured on ``reference()`` (a callable giving
        a dense model of the same architecture; without it the dense latency is omitted)."""
        counters = self.state.counters
        if self.slimmed:
            dense_figures = counters.get("slim_dense", {})
            predicted = counters.get("slim_record", {}).get("predicted_cost")
        else:
            dense_figures, predicted = self._dense_figures(), self.predicted_cost()
        out: Dict[str, Any] = {
            "cost_kind": self.config.cost, "predicted_dense": self.dense_cost, "predicted": predicted,
            "budget": self.budget, **dense_figures,
            "macs": count_macs(self.layers, self.graph.active(self.counts())),
            "slimmed_in_training": self.slimmed,
        }
        slim, _ = slim_copy(self.model, self.groups, self.channels)
        out["params"] = sum(p.numel() for p in slim.parameters())
        if measure:
            x = torch.randn((batch_size,) + tuple(self.example.shape[1:]), device=self.example.device)
            dense_model = self.model if not self.slimmed else (reference() if reference is not None else None)
            if dense_model is None:
                out.update({"latency_ms": measure_model(slim, x, repeats=repeats)["latency_ms"]})
                return out
            dense = measure_model(dense_model, x, repeats=repeats)
            small = measure_model(slim, x, repeats=repeats)
            out.update({"latency_ms_dense": dense["latency_ms"], "latency_ms": small["latency_ms"],
                        "throughput_dense": dense["throughput_ips"], "throughput": small["throughput_ips"],
                        "speedup": dense["latency_ms"] / small["latency_ms"]})
        return out

    # ---- physical slimming during training ----------------------------------------
    @property
    def slimmed(self) -> bool:
        return "slimmed" in self.state.counters

    def slim_now(self) -> None:
        """Slim the model in place to the current channels (optimizer state carried onto
        the smaller tensors); the structure is frozen from here on."""
        kept = kept_indices(self.model, self.groups, self.channels)
        record = self.structure_record()
        self.state.counters["slim_dense"] = self._dense_figures()   # for summary() afterwards
        slim_(self.model, kept, self.optimizer)
        self._rebuild_after_slim(kept, record)
        self.log({"step": self.state.step, "event": "slim", **record})

    def _rebuild_after_slim(self, kept, record) -> None:
        counters = dict(self.state.counters)
        counters["slimmed"] = kept
        counters["slim_record"] = record
        step = self.state.step
        self._build_structure()
        # every channel of the slimmed model is kept (not the subclass's initial structure)
        channels = ChannelMethod.initial_channels(self)
        masks, stats = self._derive(channels)
        dormant = {n: p.detach().clone() for n, p in self.params.items()} if self.keeps_dormant else {}
        self.state = SparseState(masks=masks, targets={n: int(m.sum()) for n, m in masks.items()},
                                 step=step, dormant=dormant, counters=counters,
                                 buffers={"channels": channels, "importance": self._zero_importance()})
        self._stat_masks = stats

    def prepare_model(self, sd: Dict[str, Any]) -> None:
        """Before loading a checkpoint's model weights: if the run had slimmed its model,
        slim this (fresh) one the same way so the weights fit. Idempotent."""
        kept = sd.get("state", {}).get("counters", {}).get("slimmed")
        if kept is None or self.slimmed:
            return
        modules = dict(self.model.named_modules())
        name, k = next(iter(kept.items()))
        already = k.get("out") is not None and modules[name].weight.shape[0] == len(k["out"])
        if not already:
            slim_(self.model, kept, self.optimizer)
        self._rebuild_after_slim(kept, sd["state"]["counters"].get("slim_record", {}))

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        if isinstance(sd, dict) and "state" in sd:
            self.prepare_model(sd)
        super().load_state_dict(sd)
        dev = self.example.device
        for b in ("channels", "importance"):
            self.state.buffers[b] = {k: v.to(dev) for k, v in self.state.buffers[b].items()}
        self.apply_masks()
