"""HALP (regrow.methods.halp) and the channel-mask base (regrow.methods.channel)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import regrow
from regrow.methods import METHODS
from regrow.structured.latency import LatencyTable, device_name, model_layers
from regrow.methods.channel import bn_taylor
from test_groups import TinyRes

X = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(2))
OPTS = dict(input_shape=(3, 8, 8), cost="flops", latency_target=0.4, prune_steps=2, prune_interval=2)


def make(seed=0, opt_cls=torch.optim.SGD, **kw):
    torch.manual_seed(seed)
    m = TinyRes()
    opt = opt_cls(m.parameters(), lr=0.05, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
    return m, opt, regrow.create("halp", m, opt, **{**OPTS, **kw})


def train(m, opt, meth, steps):
    m.train()
    for _ in range(steps):
        F.cross_entropy(m(X), Y).backward()
        meth.step()
        opt.zero_grad()


def check_all_or_nothing(m, meth, opt):
    mods = dict(m.named_modules())
    for g in meth.groups:
        ch = meth.channels[g.name]
        for mem in g.members:
            mod = mods[mem.module]
            w = mod.weight.detach()
            idx = torch.tensor(mem.idxs, device=w.device)
            root = torch.tensor(mem.root, device=ch.device)
            dead, live = idx[~ch[root]].to(w.device), idx[ch[root]].to(w.device)
            assert (w.index_select(mem.dim, dead) == 0).all(), mem
            assert (w.index_select(mem.dim, live) != 0).any(), mem
            if mem.dim == 0:
                for t in [mod.bias, getattr(mod, "running_mean", None), getattr(mod, "running_var", None)]:
                    if t is not None:
                        assert (t.detach()[dead] == 0).all(), mem
                for t in opt.state.get(mod.weight, {}).values():
                    if torch.is_tensor(t) and t.shape == w.shape:
                        assert (t.index_select(0, dead) == 0).all()


def test_registered_channel_method():
    assert "halp" in METHODS and METHODS.get("halp").structures == ("channel",)


def test_prunes_to_target_with_exponential_schedule_all_or_nothing():
    m, opt, meth = make()
    dense = meth.dense_cost
    train(m, opt, meth, 2)
    rec = meth.pop_metrics()
    assert len(rec) == 1 and rec[0]["prune_step"] == 1
    assert rec[0]["target"] == pytest.approx(dense * 0.4 ** 0.5)
    assert rec[0]["predicted_cost"] <= rec[0]["target"] + 1e-9
    train(m, opt, meth, 2)
    rec = meth.pop_metrics()
    assert rec[0]["target"] == pytest.approx(0.4 * dense)
    assert meth.predicted_cost() <= 0.4 * dense + 1e-9
    before = meth.counts()
    train(m, opt, meth, 3)  # fine-tuning: structure frozen, still exactly masked
    assert meth.counts() == before and meth.pop_metrics() == []
    check_all_or_nothing(m, meth, opt)
    assert all(c >= 1 for c in meth.counts().values())
    exp = meth.expected_counts()
    live = meth.live_masks()
    assert all(int(live[n].sum()) == exp[n] for n in exp)
    assert all((meth.params[n].detach()[~live[n]] == 0).all() for n in exp)


def test_adam_state_is_zeroed_too():
    m, opt, meth = make(opt_cls=torch.optim.Adam)
    train(m, opt, meth, 5)
    check_all_or_nothing(m, meth, opt)


def test_bn_taylor_golden():
    m = TinyRes()
    groups = {g.name: g for g in regrow.create("halp", m, None, **OPTS).groups}
    g = groups["a"]
    with torch.no_grad():
        m.bna.weight.copy_(torch.arange(8.0))
        m.bna.bias.fill_(1.0)
    m.bna.weight.grad = torch.full((8,), 2.0)
    m.bna.bias.grad = torch.full((8,), -3.0)
    assert bn_taylor(g, dict(m.named_modules())).tolist() == [abs(2 * i - 3) for i in range(8)]


def test_importance_accumulates_in_state_and_resets_after_prune():
    m, opt, meth = make()
    train(m, opt, meth, 1)
    acc = {k: v.clone() for k, v in meth.state.buffers["importance"].items()}
    assert any(v.sum() > 0 for v in acc.values())
    train(m, opt, meth, 1)  # step 2 prunes and resets
    assert all(v.sum() == 0 for v in meth.state.buffers["importance"].values())


def test_resume_is_bit_identical():
    m, opt, meth = make()
    train(m, opt, meth, 3)
    sd_m, sd_o, sd = copy.deepcopy(m.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(meth.state_dict())
    train(m, opt, meth, 4)
    m2, opt2, meth2 = make(seed=5)
    m2.load_state_dict(sd_m)
    opt2.load_state_dict(sd_o)
    meth2.load_state_dict(sd)
    train(m2, opt2, meth2, 4)
    assert meth2.checksum() == meth.checksum()
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_slim_after_last_step_and_resume_of_a_slimmed_run():
    m, opt, meth = make(slim_after=True)
    n_before = sum(p.numel() for p in m.parameters())
    train(m, opt, meth, 4)
    assert meth.slimmed and any(r["event"] == "slim" for r in meth.pop_metrics())
    assert sum(p.numel() for p in m.parameters()) < n_before
    assert all(c.all() for c in meth.channels.values())
    train(m, opt, meth, 2)  # trains on the smaller tensors, optimizer state carried over
    sd_m, sd_o, sd = copy.deepcopy(m.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(meth.state_dict())
    train(m, opt, meth, 2)
    m2, opt2, meth2 = make(seed=3, slim_after=True)
    meth2.prepare_model(sd)  # slim the fresh model before its weights are loaded
    m2.load_state_dict(sd_m)
    opt2.load_state_dict(sd_o)
    meth2.load_state_dict(sd)
    train(m2, opt2, meth2, 2)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kw, match", [
    ({"latency_target": 0.0}, "latency_target must be .* in \\(0, 1\\)"),
    ({"latency_target": 1.0}, "latency_target"),
    ({"latency_target": 1e-6}, "below the cost .* smallest structure"),
    ({"latency_ms": -1.0}, "latency_ms must be > 0"),
    ({"latency_ms": 5.0}, "latency_ms needs cost='latency'"),
    ({"input_shape": ()}, "needs input_shape"),
    ({"cost": "energy"}, "cost must be one of latency, flops"),
    ({"prune_steps": 0}, "prune_steps must be a positive integer"),
    ({"total_steps": 3}, "exceeds total_steps 3"),
    ({"structure": "unstructured"}, "structure must be one of channel"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def covering_table(tmp_path, drop=None):
    m = TinyRes()
    t = LatencyTable(device_name(torch.device("cpu")), torch.__version__)
    for layer in model_layers(m, torch.zeros(1, 3, 8, 8)):
        if layer.name == drop:
            continue
        gi = [1, layer.c_in]
        go = [1, layer.c_out]
        t.add_entry(layer, 1, gi, go, [[ci * co * 1e-3 for co in go] for ci in gi])
    path = tmp_path / "t.json"
    t.save(str(path))
    return str(path)


def test_latency_table_cost_and_errors(tmp_path):
    path = covering_table(tmp_path)
    m, opt, meth = make(cost="latency", latency_table=path, latency_target=0.5)
    train(m, opt, meth, 4)
    assert meth.predicted_cost() <= 0.5 * meth.dense_cost + 1e-9
    with pytest.raises(ValueError, match=r"latency_ms .* must be below the dense model's predicted latency"):
        make(cost="latency", latency_table=path, latency_ms=1e6)
    m, opt, meth = make(cost="latency", latency_table=path, latency_ms=0.6 * meth.dense_cost)
    assert meth.budget == pytest.approx(0.6 * meth.dense_cost)
    with pytest.raises(ValueError, match="does not cover layer 'e'"):
        make(cost="latency", latency_table=covering_table(tmp_path, drop="e"))
    with pytest.raises(FileNotFoundError):
        make(cost="latency", latency_table=str(tmp_path / "nope.json"))


def test_summary_figures():
    m, opt, meth = make()
    train(m, opt, meth, 4)
    s = meth.summary(measure=True, batch_size=2, repeats=1)
    assert s["predicted"] <= s["budget"] < s["predicted_dense"]
    assert s["macs"] < s["macs_dense"] and s["params"] < s["params_dense"]
    # cost='flops' is MACs in millions
    assert s["predicted"] == pytest.approx(s["macs"] / 1e6)
    assert s["predicted_dense"] == pytest.approx(s["macs_dense"] / 1e6)
    assert s["latency_ms"] > 0 and s["throughput"] > 0 and s["speedup"] > 0
