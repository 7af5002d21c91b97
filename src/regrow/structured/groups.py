"""Channel groups: sets of coupled channels that must be pruned together.

A group is what HALP (Shen et al. 2022, §3) and IEE's structured setting (IEE
appendix §4) prune as one unit: the output channels of a conv, its BatchNorm, the
input channels of every conv/linear reading them, and everything tied to them by
residual additions or depthwise convolutions. Torch-Pruning's dependency graph
(Fang et al. 2023, "DepGraph") finds them by tracing the model once; here each group
is turned into plain data (module names and index maps), so masks, costs and
slimming never need the tracing objects again.

The stem conv (the first conv/linear) and the classifier (the last one) never lose
output channels: any group that contains their outputs is left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

CONV = (nn.Conv1d, nn.Conv2d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d)
SUPPORTED = CONV + BN + (nn.Linear,)


@dataclass(frozen=True)
class Member:
    """One coupled tensor dimension of a group.

    module: FQN of a Conv/Linear/BatchNorm module; kind: ``conv`` | ``dwconv`` |
    ``linear`` | ``bn``; dim: 0 for output channels (BN features), 1 for input
    channels; idxs[i] is an index along ``dim`` that belongs to group channel root[i]
    (a flatten before a Linear maps one channel to several input features).
    """

    module: str
    kind: str
    dim: int
    idxs: Tuple[int, ...]
    root: Tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels, named after the conv whose outputs root them."""

    name: str
    size: int
    members: Tuple[Member, ...]

    @property
    def bns(self) -> List[str]:
        """BatchNorm layers whose γ/β give the group's importance (IEE appendix Eq. 2)."""
        return [m.module for m in self.members if m.kind == "bn"]

    @property
    def producers(self) -> List[str]:
        """Conv/Linear layers whose output channels are this group's channels."""
        return [m.module for m in self.members if m.dim == 0 and m.kind != "bn"]

    @property
    def consumers(self) -> List[str]:
        return [m.module for m in self.members if m.dim == 1]


def _kind(mod: nn.Module) -> str:
    if isinstance(mod, CONV):
        return "dwconv" if is_depthwise(mod) else "conv"
    if isinstance(mod, nn.Linear):
        return "linear"
    return "bn"


def is_depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, CONV) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels


def check_supported(model: nn.Module) -> None:
    """Raise ValueError naming the first module that channel masks/slimming can't handle."""
    for name, mod in model.named_modules():
        own = list(mod.parameters(recurse=False))
        if isinstance(mod, SUPPORTED):
            if isinstance(mod, CONV) and mod.groups > 1 and not is_depthwise(mod):
                raise ValueError(
                    f"unsupported layer '{name}': grouped conv with groups={mod.groups} "
                    f"(only groups=1 and depthwise convs are supported for channel sparsity)"
                )
            if isinstance(mod, BN) and not mod.affine:
                raise ValueError(f"unsupported layer '{name}': BatchNorm without affine γ/β "
                                 "(channel importance needs them)")
            continue
        if own:
            raise ValueError(
                f"unsupported layer '{name}' ({type(mod).__name__}) holds parameters; channel "
                f"sparsity supports Conv1d/Conv2d, Linear and BatchNorm1d/2d layers"
            )


def prunable_layers(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if isinstance(m, CONV + (nn.Linear,))]


def find_groups(model: nn.Module, example_inputs, ignore: Sequence[str] = (),
                require_bn: bool = True) -> List[ChannelGroup]:
    """Trace ``model`` on ``example_inputs`` and return its prunable channel groups.

    ignore: module names whose output channels must stay (the stem and the classifier
    are always added). require_bn: drop groups with no BatchNorm (their importance,
    Taylor on BN, is undefined); they stay dense.
    """
    import torch_pruning as tp

    check_supported(model)
    layers = prunable_layers(model)
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no Conv/Linear layer to prune")
    modules = dict(model.named_modules())
    for n in ignore:
        if n not in modules:
            raise ValueError(f"ignore names unknown module '{n}'")
    fixed = {layers[0], layers[-1], *ignore}
    was_training = model.training
    model.eval()
    try:
        # eval mode: tracing must not move BN running statistics (autograd is needed to trace)
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        names = {m: n for n, m in modules.items()}
        out: List[ChannelGroup] = []
        for g in dg.get_all_groups(ignored_layers=[modules[n] for n in fixed],
                                   root_module_types=CONV + (nn.Linear,)):
            members: Dict[Tuple[str, int], Dict[int, int]] = {}
            for item in g:
                mod = item.dep.target.module
                if not isinstance(mod, nn.Module) or mod not in names:
                    if isinstance(mod, nn.Parameter):
                        raise ValueError("unsupported layer: a bare nn.Parameter is coupled to channels "
                                         f"of '{names.get(g[0].dep.target.module)}'")
                    continue  # element-wise ops, reshapes, concat: no parameters
                if not isinstance(mod, SUPPORTED):
                    raise ValueError(f"unsupported layer '{names[mod]}' ({type(mod).__name__}) is "
                                     f"coupled to channels of '{names[g[0].dep.target.module]}'")
                dim = 0 if (dg.is_out_channel_pruning_fn(item.dep.handler) or isinstance(mod, BN)
                            or is_depthwise(mod)) else 1
                index_map = members.setdefault((names[mod], dim), {})
                for i, r in zip(item.idxs, item.root_idxs):
                    index_map.setdefault(int(i), int(r))
            root_name = names[g[0].dep.target.module]
            size = len(g[0].idxs)
            mem = tuple(
                Member(n, _kind(modules[n]), d, tuple(sorted(ix)), tuple(ix[i] for i in sorted(ix)))
                for (n, d), ix in sorted(members.items())
            )
            grp = ChannelGroup(root_name, size, mem)
            if require_bn and not grp.bns:
                continue
            if size <= 1:
                continue
            out.append(grp)
    finally:
        model.train(was_training)
    out.sort(key=lambda gr: layers.index(gr.name) if gr.name in layers else len(layers))
    return out


def dim_keeps(model: nn.Module, groups: Sequence[ChannelGroup],
              channels: Dict[str, torch.Tensor]) -> Dict[str, List[Optional[torch.Tensor]]]:
    """Per module, a bool keep-vector for dim 0 and dim 1 (``None``: untouched),
    the AND of every group's channel mask mapped through the member index maps."""
    modules = dict(model.named_modules())
    keeps: Dict[str, List[Optional[torch.Tensor]]] = {}
    for g in groups:
        cm = channels[g.name]
        for m in g.members:
            mod = modules[m.module]
            w = mod.weight
            k = keeps.setdefault(m.module, [None, None])
            if k[m.dim] is None:
                k[m.dim] = torch.ones(w.shape[m.dim], dtype=torch.bool, device=w.device)
            idx = torch.tensor(m.idxs, device=w.device, dtype=torch.long)
            root = torch.tensor(m.root, device=cm.device, dtype=torch.long)
            k[m.dim][idx] &= cm[root].to(w.device)
    return keeps


def masked_tensors(model: nn.Module, keeps: Dict[str, List[Optional[torch.Tensor]]]):
    """Yield (fqn, tensor, mask) for every parameter/BN statistic a channel mask touches."""
    modules = dict(model.named_modules())
    for name, (k0, k1) in keeps.items():
        mod = modules[name]
        w = mod.weight
        mask = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        view = [1] * w.dim()
        if k0 is not None:
            mask &= k0.view([-1] + view[1:])
        if k1 is not None and w.dim() > 1:
            v = list(view)
            v[1] = -1
            mask &= k1.view(v)
        yield f"{name}.weight", w, mask
        vec = k0 if k0 is not None else torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
        if getattr(mod, "bias", None) is not None:
            yield f"{name}.bias", mod.bias, vec
        if isinstance(mod, BN) and mod.running_mean is not None:
            yield f"{name}.running_mean", mod.running_mean, vec
            yield f"{name}.running_var", mod.running_var, vec


def group_summary(groups: Sequence[ChannelGroup]) -> List[Dict[str, object]]:
    """JSON-ready description of the groups (for logs and the export JSON)."""
    return [
        {"group": g.name, "channels": g.size, "bns": g.bns, "producers": g.producers,
         "consumers": g.consumers}
        for g in groups
    ]
