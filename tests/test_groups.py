"""Channel groups (regrow.structured.groups): coupling found by tracing, plain data."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from regrow.structured.groups import dim_keeps, find_groups, masked_tensors


class TinyRes(nn.Module):
    """stem -> residual block (8) -> downsampling residual block (16, 1x1 shortcut) -> conv e (12) -> fc."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.a, self.bna = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b, self.bnb = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c, self.bnc = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16)
        self.d, self.bnd = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.s, self.bns = nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16)
        self.e, self.bne = nn.Conv2d(16, 12, 3, padding=1, bias=True), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bnb(self.b(torch.relu(self.bna(self.a(x))))))
        x = torch.relu(self.bns(self.s(x)) + self.bnd(self.d(torch.relu(self.bnc(self.c(x))))))
        x = torch.relu(self.bne(self.e(x)))
        return self.fc(x.mean((2, 3)))


def by_name(groups):
    return {g.name: g for g in groups}


def test_tiny_residual_coupling():
    m = TinyRes()
    groups = by_name(find_groups(m, torch.zeros(1, 3, 8, 8)))
    # the stem's group (stem, bn0, b, the block's add) is never pruned
    assert set(groups) == {"a", "c", "d", "e"} or set(groups) == {"a", "c", "s", "e"}
    res = next(g for g in groups.values() if "s" in g.producers)
    assert sorted(res.producers) == ["d", "s"]
    assert sorted(res.bns) == ["bnd", "bns"]
    assert res.consumers == ["e"] and res.size == 16
    assert groups["a"].producers == ["a"] and groups["a"].bns == ["bna"] and groups["a"].consumers == ["b"]
    assert groups["e"].consumers == ["fc"] and groups["e"].size == 12
    for g in groups.values():
        for mem in g.members:
            assert sorted(mem.root) == list(range(g.size)) and len(mem.idxs) == g.size


def test_torchvision_resnet18_residual_coupling():
    m = torchvision.models.resnet18(weights=None, num_classes=10)
    groups = by_name(find_groups(m, torch.zeros(1, 3, 32, 32)))
    assert len(groups) == 11  # 8 block-internal groups + the residual streams of layers 2–4
    assert all("conv1" not in g.producers for g in groups.values())  # stem group (with layer1) excluded
    assert all("fc" not in g.producers for g in groups.values())
    g2 = next(g for g in groups.values() if "layer2.0.downsample.0" in g.producers)
    assert sorted(g2.producers) == ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"]
    assert sorted(g2.bns) == ["layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2"]
    assert sorted(g2.consumers) == ["layer2.1.conv1", "layer3.0.conv1", "layer3.0.downsample.0"]
    g4 = next(g for g in groups.values() if "layer4.0.downsample.0" in g.producers)
    assert "fc" in g4.consumers and g4.size == 512
    inner = groups["layer1.0.conv1"]
    assert (inner.producers, inner.bns, inner.consumers) == (["layer1.0.conv1"], ["layer1.0.bn1"], ["layer1.0.conv2"])


def test_mobilenet_v2_depthwise_joins_its_expansion_group():
    m = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    groups = by_name(find_groups(m, torch.zeros(1, 3, 32, 32)))
    g = groups["features.2.conv.1.0"]
    kinds = {mem.module: mem.kind for mem in g.members}
    assert kinds["features.2.conv.1.0"] == "dwconv" and kinds["features.2.conv.0.0"] == "conv"
    assert sorted(g.bns) == ["features.2.conv.0.1", "features.2.conv.1.1"]
    assert g.consumers == ["features.2.conv.2"]


def test_masks_from_channels_golden():
    m = TinyRes()
    groups = find_groups(m, torch.zeros(1, 3, 8, 8))
    ch = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    ch["e"][[1, 4]] = False
    masks = {n: mk for n, _, mk in masked_tensors(m, dim_keeps(m, groups, ch))}
    assert masks["e.weight"].shape == (12, 16, 3, 3)
    assert not masks["e.weight"][[1, 4]].any() and masks["e.weight"][[0, 2, 3, 5]].all()
    assert masks["e.bias"].tolist() == [i not in (1, 4) for i in range(12)]
    assert masks["bne.weight"].tolist() == masks["bne.running_var"].tolist() == masks["e.bias"].tolist()
    assert masks["fc.weight"].shape == (5, 12)
    assert not masks["fc.weight"][:, [1, 4]].any() and masks["fc.weight"][:, 0].all()
    assert masks["fc.bias"].all()  # the classifier's outputs are never masked


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.mid = nn.Conv2d(8, 8, 3, groups=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.mid(self.bn(self.c1(x))).mean((2, 3)))


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.scale = Scale()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.scale(self.c1(x)).mean((2, 3)))


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(8, 1, 1))

    def forward(self, x):
        return x * self.w


@pytest.mark.parametrize("model, name", [(Grouped, "'mid'"), (Custom, "'scale'")])
def test_unsupported_layer_is_named(model, name):
    with pytest.raises(ValueError, match=f"unsupported layer {name}"):
        find_groups(model(), torch.zeros(1, 3, 8, 8))


def test_bn_without_affine_is_refused():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match="unsupported layer '1'.*affine"):
        find_groups(m, torch.zeros(1, 3, 8, 8))


def test_tracing_leaves_bn_statistics_and_mode_alone():
    m = TinyRes().train()
    before = m.bna.running_mean.clone()
    find_groups(m, torch.randn(2, 3, 8, 8))
    assert m.training and torch.equal(m.bna.running_mean, before)
