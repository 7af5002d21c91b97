"""Physical slimming and export (regrow.structured.slim, `regrow export`)."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision

import regrow
from regrow.structured.groups import dim_keeps, find_groups, masked_tensors
from regrow.structured.slim import export, kept_indices, pickle_modules, portable, slim_, slim_copy
from regrow.train.models import build_model
from test_groups import TinyRes


def random_masked(m, shape, seed=0):
    """Random BN statistics/affine, random channel masks applied like a channel method does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    groups = find_groups(m, torch.zeros((1,) + shape))
    ch = {}
    for grp in groups:
        c = torch.rand(grp.size, generator=g) < 0.6
        c[int(torch.randint(grp.size, (1,), generator=g))] = True
        ch[grp.name] = c
    with torch.no_grad():
        for _, t, mk in masked_tensors(m, dim_keeps(m, groups, ch)):
            t.mul_(mk)
    return groups, ch


@pytest.mark.parametrize("name, shape", [
    ("resnet20", (3, 16, 16)), ("mobilenet_v1", (3, 16, 16)), ("vgg16", (3, 32, 32)),
    ("wrn22_2", (3, 8, 8)), ("tv:mobilenet_v2", (3, 32, 32)),
])
def test_masked_and_slimmed_agree(name, shape):
    m = build_model(name, shape, 10).eval()
    groups, ch = random_masked(m, shape)
    slim, kept = slim_copy(m, groups, ch)
    x = torch.randn((2,) + shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = m(x), slim(x)
    assert ref.abs().max() > 1e-3  # not a trivially zero network
    assert (ref - out).abs().max() <= 1e-4
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in m.parameters())
    assert all(len(v["out"]) == int(ch[g.name].sum()) for g in groups for mem in g.members
               if mem.dim == 0 for v in [kept[mem.module]])


def test_torchvision_resnet18_after_halp_training_agrees():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None, num_classes=10)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    meth = regrow.create("halp", m, opt, input_shape=(3, 16, 16), cost="flops", latency_target=0.5,
                         prune_steps=1, prune_interval=1)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for _ in range(2):
        F.cross_entropy(m(x), y).backward()
        meth.step()
        opt.zero_grad()
    m.eval()
    slim, _ = slim_copy(m, meth.groups, meth.channels)
    with torch.no_grad():
        assert (m(x) - slim(x)).abs().max() <= 1e-4


def test_slim_in_place_carries_optimizer_state():
    m = TinyRes()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(m(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
    opt.step()
    mom = opt.state[m.e.weight]["momentum_buffer"].clone()
    groups = find_groups(m, torch.zeros(1, 3, 8, 8))
    ch = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    ch["e"][[0, 5]] = False
    slim_(m, kept_indices(m, groups, ch), opt)
    keep = [i for i in range(12) if i not in (0, 5)]
    assert m.e.weight.shape == (10, 16, 3, 3) and m.e.out_channels == 10 and m.bne.num_features == 10
    assert m.fc.weight.shape == (5, 10) and m.fc.in_features == 10
    assert torch.equal(opt.state[m.e.weight]["momentum_buffer"], mom[keep])
    assert any(p is m.e.weight for grp in opt.param_groups for p in grp["params"])
    assert sum(p.numel() for grp in opt.param_groups for p in grp["params"]) == sum(p.numel() for p in m.parameters())
    F.cross_entropy(m(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
    opt.step()  # trains on the smaller tensors


def test_export_is_portable_and_equal(tmp_path, monkeypatch):
    m = build_model("resnet20", (3, 16, 16), 10).eval()
    groups, ch = random_masked(m, (3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    out = tmp_path / "slim.pt"
    info = export(m, groups, ch, x[:1], str(out))
    assert info["max_abs_diff"] <= 1e-4 and info["params_slim"] < info["params_dense"]
    kept = json.loads((tmp_path / "slim.pt.json").read_text())
    assert set(kept["groups"]) == {g.name for g in groups}
    assert not any(mod.startswith("regrow") for mod in pickle_modules(portable(slim_copy(m, groups, ch)[0], x[:1])))
    for name in [k for k in sys.modules if k == "regrow" or k.startswith("regrow.")]:
        monkeypatch.setitem(sys.modules, name, None)  # unpickling must not need regrow
    loaded = torch.load(str(out), weights_only=False)
    with torch.no_grad():
        assert (loaded(x) - m(x)).abs().max() <= 1e-4


def test_cli_export_from_run_dir(tmp_path):
    from regrow.cli import main
    from regrow.train import checkpoint as ckpt
    from regrow.train import config as C

    cfg = C.build({"method": "halp", "model": "resnet20", "data": "synthetic",
                   "synthetic": {"shape": [3, 8, 8], "num_classes": 10}, "out": str(tmp_path / "run")})
    torch.manual_seed(0)
    m = build_model("resnet20", (3, 8, 8), 10)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    meth = regrow.create("halp", m, opt, input_shape=(3, 8, 8), cost="flops", latency_target=0.5,
                         prune_steps=1, prune_interval=1)
    F.cross_entropy(m(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,))).backward()
    meth.step()
    ckpt.save(tmp_path / "run" / "checkpoint.pt", {
        "model": m.state_dict(), "optimizer": opt.state_dict(), "method": meth.state_dict(),
        "rng": ckpt.rng_state(), "loop": {}, "config": cfg.to_dict()})
    out = tmp_path / "model.pt"
    assert main(["export", str(tmp_path / "run"), "--slim", "--out", str(out)]) == 0
    loaded = torch.load(str(out), weights_only=False)
    x = torch.randn(2, 3, 8, 8)
    m.eval()
    with torch.no_grad():
        assert (loaded(x) - m(x)).abs().max() <= 1e-4
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in m.parameters())
    assert main(["export", str(tmp_path / "nowhere"), "--slim", "--out", str(out)]) == 2
