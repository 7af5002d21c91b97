"""regrow.export / regrow.load_export (regrow.deploy.api): equal outputs for every format on
an MLP, a tiny GPT-2 (HF Conv1D) and a conv net; the weights_only round trip; clear errors."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import regrow
from regrow.deploy import SparseLinear, sparse_layers
from regrow.deploy.api import layer_view

from conftest import TinyMLP


def _gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


class PointwiseNet(nn.Module):
    """3×3 conv (stays dense), strided 1×1 conv, 1×1 conv, linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pw1 = nn.Conv2d(8, 16, 1, stride=2)
        self.pw2 = nn.Conv2d(16, 8, 1, bias=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.pw2(torch.relu(self.pw1(torch.relu(self.conv(x))))))
        return self.fc(x.mean((2, 3)))


def _masked(model, k_frac=0.25, seed=0):
    """Zero all but a constant fan-in k of every exportable layer (and the 3×3 conv)."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, mod in model.named_modules():
        view = layer_view(name, mod)
        if view is None and not isinstance(mod, nn.Conv2d):
            continue
        w = view.weight if view is not None else mod.weight.detach().reshape(mod.weight.shape[0], -1)
        out, inn = w.shape
        k = max(1, int(k_frac * inn))
        idx = torch.rand(out, inn, generator=g).argsort(1)[:, :k]
        m = torch.zeros(out, inn, dtype=torch.bool).scatter_(1, idx, True)
        full = m.t() if type(mod).__name__ == "Conv1D" else m.reshape(mod.weight.shape)
        with torch.no_grad():
            mod.weight.mul_(full)
        masks[f"{name}.weight"] = full
    return masks


CASES = {
    "mlp": (lambda: TinyMLP(16, 32, 4), lambda: torch.randn(3, 16)),
    "gpt2": (_gpt2, lambda: torch.randint(0, 50, (2, 8))),
    "pointwise": (PointwiseNet, lambda: torch.randn(2, 3, 9, 9)),
}


def _forced(model, masks, kernel="ebag", fmt="csr"):
    """Injected timings that make every sparse layer take ``fmt:kernel`` at batch 1."""
    return {l.name: {"dense": {1: 1.0}, f"{fmt}:{kernel}": {1: 0.5}} for l in sparse_layers(model, masks)}


def _out(model, x):
    with torch.no_grad():
        y = model(x)
    return y.logits if hasattr(y, "logits") else y


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt,kernel", [("sparse", "ebag"), ("sparse", "spmm"), ("fanin", "ebag"),
                                        ("fanin", "mv")])
def test_every_format_equals_masked_model_and_round_trips(case, fmt, kernel, tmp_path):
    build, inputs = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    fresh = copy.deepcopy(model)
    masks = _masked(model)
    x = inputs()
    timings = _forced(model, masks, kernel, "csr" if fmt == "sparse" else "fanin")
    path = str(tmp_path / "m.pt")
    res = regrow.export(model, path, format=fmt, example=x[:1], timings=timings, masks=masks)
    replaced = {n for n, m in res.model.named_modules() if isinstance(m, SparseLinear)}
    assert replaced == set(timings) and replaced
    if case == "pointwise":
        assert replaced == {"pw1", "pw2", "fc"}          # the 3×3 conv stays a conv
    if case == "gpt2":
        assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"} <= replaced
    torch.testing.assert_close(_out(res.model, x), _out(model, x), rtol=1e-5, atol=1e-5)
    # the file: plain tensors only, and the loader rebuilds the model from an instance
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == fmt and set(payload["layers"]) == replaced
    loaded = regrow.load_export(path, model=fresh)
    torch.testing.assert_close(_out(loaded, x), _out(model, x), rtol=1e-5, atol=1e-5)
    report = json.loads(open(path + ".json").read())
    assert {l["layer"] for l in report["layers"]} == replaced
    assert all({"density", "dense_ms", "sparse_ms", "chosen"} <= set(l) for l in report["layers"])
    assert report["bytes_export"] > 0 and report["bytes_dense"] > 0
    if case == "gpt2":   # 8 bytes per kept weight at 25% density: half of dense (plus embeddings)
        assert report["bytes_export"] < 0.8 * report["bytes_dense"]


def test_measured_choice_on_mlp_reports_every_layer(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8)).eval()
    masks = _masked(model, 0.1)
    res = regrow.export(model, str(tmp_path / "m.pt"), format="sparse", input_shape=(64,),
                        batch_sizes=[1, 32], repeats=2)
    assert [l["layer"] for l in res.layers] == ["0", "2"]
    for l in res.layers:
        assert set(l["dense_ms"]) == {"1", "32"} and l["chosen"] in ("dense", "csr", "bsr4", "bsr8", "bsr16")
        assert abs(l["density"] - float(masks[l["layer"] + ".weight"].float().mean())) < 1e-6
    x = torch.randn(5, 64)
    torch.testing.assert_close(_out(res.model, x), _out(model, x), rtol=1e-5, atol=1e-5)


def test_injected_timings_decide_per_layer():
    torch.manual_seed(0)
    model = TinyMLP(16, 32, 4).eval()
    _masked(model)
    timings = {"fc1": {"dense": {1: 1.0}, "csr:mv": {1: 2.0}},      # slower: stays dense
               "fc2": {"dense": {1: 1.0}, "csr:mv": {1: 0.2}},
               "fc3": {"dense": {1: 1.0}, "csr:spmm": {1: 0.9}}}
    res = regrow.export(model, format="sparse", input_shape=(16,), timings=timings)
    kinds = {n: type(m).__name__ for n, m in res.model.named_children()}
    assert kinds == {"fc1": "Linear", "fc2": "SparseLinear", "fc3": "SparseLinear"}
    assert res.model.fc2.kernels == [(1, "mv")] and res.model.fc3.kernels == [(1, "spmm")]
    assert [l["chosen"] for l in res.layers] == ["dense", "csr", "csr"]
    with pytest.raises(ValueError, match="timings lack layer 'fc1'"):
        regrow.export(model, format="sparse", input_shape=(16,), timings={"fc2": timings["fc2"]})


def test_clear_errors(tmp_path):
    dense = TinyMLP(16, 32, 4)
    with pytest.raises(ValueError, match="nothing to export"):
        regrow.export(dense, format="sparse", input_shape=(16,))
    with pytest.raises(ValueError, match="format must be one of slim, sparse, nm, fanin"):
        regrow.export(dense, format="coo", input_shape=(16,))
    with pytest.raises(ValueError, match="batch_sizes"):
        regrow.export(dense, format="sparse", input_shape=(16,), batch_sizes=[0])
    with pytest.raises(ValueError, match="example .* or input_shape"):
        regrow.export(dense, format="sparse")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            regrow.export(dense, format="nm", input_shape=(16,))
    uneven = TinyMLP(16, 32, 4)
    with torch.no_grad():
        uneven.fc2.weight[:, :8] = 0.0
        uneven.fc2.weight[0, :20] = 0.0      # neuron 0 keeps 12 inputs, the rest 24
    with pytest.raises(ValueError, match="'fc2' has between 12 and 24 inputs .* not a constant k"):
        regrow.export(uneven, format="fanin", input_shape=(16,))
    with pytest.raises(FileNotFoundError):
        regrow.load_export(tmp_path / "none.pt")
    torch.save({"some": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a regrow export file"):
        regrow.load_export(tmp_path / "other.pt")
    model = TinyMLP(16, 32, 4).eval()
    _masked(model)
    regrow.export(model, str(tmp_path / "m.pt"), format="sparse", input_shape=(16,),
                  timings=_forced(model, None))
    with pytest.raises(ValueError, match="no model builder"):
        regrow.load_export(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="replaces layer 'fc1'"):
        regrow.load_export(tmp_path / "m.pt", model=nn.Sequential(nn.Linear(16, 4)))


def test_trained_fanin_run_exports_condensed_with_method_masks():
    torch.manual_seed(0)
    model = TinyMLP(16, 32, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    meth = regrow.create("rigl", model, opt, density=0.25, structure="fanin", total_steps=20,
                         update_interval=2, distribution="uniform", neuron_ablation=False)
    for step in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
        meth.step()
    res = regrow.export(model, format="fanin", input_shape=(16,), masks=meth.state.masks,
                        timings=_forced(model, meth.state.masks, "ebag", "fanin"))
    for name in ("fc1", "fc2", "fc3"):
        mod = res.model.get_submodule(name)
        assert mod.kind == "fanin" and mod.col.shape[1] == meth.state.targets[f"{name}.weight"] // mod.out_features


def test_slim_format_round_trips_weights_only(tmp_path):
    from test_slim import random_masked
    from regrow.train.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", (3, 8, 8), 10).eval()
    fresh = copy.deepcopy(model)
    groups, channels = random_masked(model, (3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    path = str(tmp_path / "slim.pt")
    res = regrow.export(model, path, format="slim", example=x[:1], groups=groups, channels=channels,
                        builder={"model": "resnet20", "input_shape": [3, 8, 8], "num_classes": 10})
    assert res.bytes_export < res.bytes_dense
    torch.load(path, weights_only=True)
    for loaded in (regrow.load_export(path, model=fresh), regrow.load_export(path)):
        assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())
        torch.testing.assert_close(_out(loaded, x), _out(model, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="needs channels"):
        regrow.export(model, format="slim", example=x[:1])


def test_loader_rejects_out_of_range_indices(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP(16, 32, 4).eval()
    fresh = copy.deepcopy(model)
    _masked(model)
    path = str(tmp_path / "m.pt")
    regrow.export(model, path, format="sparse", input_shape=(16,), timings=_forced(model, None))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc2.col"][0] = 10_000
    torch.save(payload, path)
    with pytest.raises(ValueError, match="'fc2': stored indices are out of range"):
        regrow.load_export(path, model=fresh)


def test_fanin_run_with_neuron_ablation_exports_and_round_trips(tmp_path):
    # SRigL's neuron ablation leaves empty rows (ablated neurons) and q / q + 1 inputs on
    # the others: the condensed export pads to q + 1 and equals the masked model
    torch.manual_seed(0)
    model = TinyMLP(16, 32, 4)
    fresh = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    meth = regrow.create("rigl", model, opt, density=0.1, structure="fanin", total_steps=20,
                         update_interval=2, distribution="uniform", neuron_ablation=True, gamma_sal=1.0)
    for step in range(14):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
        meth.step()
    rows = {n: m.sum(1) for n, m in meth.state.masks.items()}
    assert any(bool((r == 0).any()) for r in rows.values()), "no neuron was ablated"
    assert bool((rows["fc3.weight"] > 0).all())       # the last layer keeps every neuron
    model.eval()
    x = torch.randn(5, 16)
    path = str(tmp_path / "f.pt")
    for kernel in ("ebag", "mv"):
        res = regrow.export(model, path, format="fanin", input_shape=(16,), masks=meth.state.masks,
                            timings=_forced(model, meth.state.masks, kernel, "fanin"))
        for name in ("fc1", "fc2", "fc3"):
            r = rows[f"{name}.weight"]
            assert res.model.get_submodule(name).col.shape == (int((r > 0).sum()), int(r.max()))
        torch.testing.assert_close(_out(res.model, x), _out(model, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_out(res.model, x[:1]), _out(model, x[:1]), rtol=1e-5, atol=1e-5)
    loaded = regrow.load_export(path, model=fresh)
    torch.testing.assert_close(_out(loaded, x), _out(model, x), rtol=1e-5, atol=1e-5)
