"""Parameter discovery (regrow.modules): layer types and their input dimension, tied and
shared tensors, frozen weights, clear errors, N:M along the true input dimension."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import regrow
from regrow import modules
from regrow.modules import find_sparse_weights, layer_input_dim, sparse_parameters

from conftest import TinyMLP


class Transposed(nn.Module):
    """A Linear stored as ``[in, out]`` (as HF's Conv1D) declaring its input dimension."""

    regrow_input_dim = 0

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) / d_in ** 0.5)

    def forward(self, x):
        return x @ self.weight


class TiedLM(nn.Module):
    """Embedding, a hidden Linear, and a decoder sharing the embedding table."""

    def __init__(self, vocab: int = 12, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, ids):
        return self.decoder(torch.relu(self.hidden(self.embed(ids))))


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def nm_legal(mask: torch.Tensor, dim: int, n: int = 2, m: int = 4) -> bool:
    return bool((mask.movedim(dim, -1).reshape(-1, m).sum(1) == n).all())


# ---- where the names live --------------------------------------------------------
def test_old_import_paths_still_work():
    from regrow.methods import sparse_parameters as from_methods
    from regrow.methods.base import SPARSE_MODULES, unwrap

    assert from_methods is sparse_parameters
    assert SPARSE_MODULES is modules.SPARSE_MODULES and unwrap is modules.unwrap


@pytest.mark.slow
def test_importing_regrow_does_not_import_transformers():
    code = "import sys, regrow, regrow.modules, regrow.cost; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layer_input_dims():
    assert layer_input_dim(nn.Linear(4, 8)) == 1
    assert layer_input_dim(nn.Conv2d(4, 8, 3)) == 1
    assert layer_input_dim(nn.Conv1d(4, 8, 3)) == 1
    assert layer_input_dim(Transposed(4, 8)) == 0
    assert layer_input_dim(nn.LayerNorm(4)) is None
    assert layer_input_dim(nn.Embedding(4, 8)) is None


def test_hf_conv1d_is_a_sparse_layer_with_input_dim_0():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    layer = pytorch_utils.Conv1D(8, 4)   # nf=8 outputs, nx=4 inputs: weight [4, 8]
    assert tuple(layer.weight.shape) == (4, 8)
    assert layer_input_dim(layer) == 0
    found = find_sparse_weights(nn.Sequential(layer))
    assert list(found) == ["0.weight"] and found["0.weight"].input_dim == 0


def test_default_is_unchanged_on_plain_models():
    net = TinyMLP()
    found = no_warnings(find_sparse_weights, net)
    assert list(found) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert all(w.input_dim == 1 and len(w.aliases) == 1 for w in found.values())
    assert list(sparse_parameters(net, include=["fc*.bias"])) == ["fc1.bias", "fc2.bias", "fc3.bias"]


# ---- tied and shared tensors -----------------------------------------------------
def test_weight_tied_to_an_embedding_stays_dense_with_a_warning_naming_both():
    model = TiedLM()
    with pytest.warns(UserWarning, match=r"'decoder\.weight' is the same tensor as embedding 'embed\.weight'"):
        found = find_sparse_weights(model)
    assert list(found) == ["hidden.weight"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="embed.weight"):
        sp = regrow.create("static", model, opt, density=0.25)
    assert all(p is not model.embed.weight for p in sp.params.values())
    assert int(torch.count_nonzero(model.embed.weight)) == model.embed.weight.numel()


@pytest.mark.parametrize("pattern, name", [("decoder.weight", "decoder.weight"), ("dec*", "decoder.weight"),
                                           ("embed.weight", "embed.weight")])
def test_include_matches_every_alias_of_a_tied_tensor(pattern, name):
    model = TiedLM()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_sparse_weights(model, include=[pattern])
    assert list(found) == [name]   # keyed by the name the pattern matched
    w = found[name]
    assert w.param is model.embed.weight and w.aliases == ("embed.weight", "decoder.weight")
    # naming the decoder sparsifies the embedding table too: say so; naming the table is explicit
    said = [str(c.message) for c in caught]
    assert said == ([] if name == "embed.weight" else
                    ["'decoder.weight' is the same tensor as embedding 'embed.weight': include= sparsifies both"])


def test_exclude_matches_every_alias():
    model = TiedLM()
    found = no_warnings(find_sparse_weights, model, include=["*.weight"], exclude=["decoder.weight"])
    assert list(found) == ["hidden.weight"]


def test_a_shared_module_is_sparsified_once_and_consistently():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Linear(4, 8), shared, nn.ReLU(), shared, nn.Linear(8, 2))
    found = no_warnings(find_sparse_weights, model)
    assert list(found) == ["0.weight", "1.weight", "4.weight"]
    assert found["1.weight"].aliases == ("1.weight", "3.weight")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = regrow.create("rigl", model, opt, density=0.5, distribution="uniform", total_steps=20,
                       update_interval=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        model(torch.randn(5, 4, generator=g)).pow(2).mean().backward()
        sp.step()
        opt.zero_grad()
        mask = sp.state.masks["1.weight"]
        assert int(mask.sum()) == 32 and bool((shared.weight[~mask] == 0).all())
    assert any(r["event"] == "update" for r in sp.pop_metrics())


def test_a_tensor_shared_by_two_layers_gets_one_mask():
    a, b = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b)
    found = no_warnings(find_sparse_weights, model)
    assert list(found) == ["0.weight"] and found["0.weight"].aliases == ("0.weight", "2.weight")
    with pytest.raises(ValueError, match="2.weight"):
        find_sparse_weights(model, exclude=["2.weight"])   # excluded by its other name: nothing left


def test_layers_disagreeing_on_the_input_dimension_is_an_error():
    a, t = nn.Linear(8, 8, bias=False), Transposed(8, 8)
    t.weight = a.weight
    with pytest.raises(ValueError, match="disagree on its input dimension.*exclude="):
        find_sparse_weights(nn.Sequential(a, t))


# ---- frozen weights --------------------------------------------------------------
def test_frozen_weights_stay_dense_with_a_warning_and_untouched_by_training():
    torch.manual_seed(0)
    net = TinyMLP()
    net.fc2.weight.requires_grad_(False)
    before = net.fc2.weight.detach().clone()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    with pytest.warns(UserWarning, match=r"frozen weight\(s\).*fc2\.weight"):
        sp = regrow.create("rigl", net, opt, density=0.2, total_steps=20, update_interval=2)
    assert sp.names == ["fc1.weight", "fc3.weight"]
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        net(torch.randn(4, 16, generator=g)).pow(2).mean().backward()
        sp.step()
        opt.zero_grad()
    assert torch.equal(net.fc2.weight, before)
    assert any(r["event"] == "update" for r in sp.pop_metrics())


def test_include_can_name_a_frozen_weight():
    net = TinyMLP()
    net.fc2.weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="frozen.*include= names it"):
        found = find_sparse_weights(net, include=["fc2.weight"])
    assert list(found) == ["fc2.weight"]


# ---- errors -------------------------------------------------------------------------
def test_nothing_to_sparsify_says_what_was_found_and_why_it_was_dropped():
    model = TiedLM()
    model.hidden.weight.requires_grad_(False)
    with pytest.warns(UserWarning), pytest.raises(ValueError) as err:
        find_sparse_weights(model)
    msg = str(err.value)
    assert "nothing to sparsify" in msg and "found: hidden.weight, decoder.weight" in msg
    assert "decoder.weight = embed.weight" in msg and "frozen (requires_grad=False): hidden.weight" in msg
    with pytest.raises(ValueError, match=r"removed by exclude=\['fc\*'\]: fc1.weight, fc2.weight, fc3.weight"):
        find_sparse_weights(TinyMLP(), exclude=["fc*"])
    with pytest.raises(ValueError, match=r"include=\['nope'\].*found: none"):
        find_sparse_weights(TinyMLP(), include=["nope"])


def test_a_sparse_weight_missing_from_the_optimizer_is_named():
    net = TinyMLP()
    opt = torch.optim.SGD([net.fc1.weight, net.fc3.weight], lr=0.1)
    with pytest.raises(ValueError, match=r"not in the optimizer: fc2\.weight.*exclude=\['fc2.weight'\]"):
        regrow.create("static", net, opt)
    regrow.create("static", net, opt, exclude=["fc2.weight"])   # the remedy it names works


# ---- N:M along the declared input dimension ------------------------------------------
class TransposedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Transposed(8, 12)    # weight [8, 12]: blocks of 4 along dim 0 (8 inputs)
        self.b = Transposed(12, 4)    # weight [12, 4]: dim 1 (4) would also divide, dim 0 is right
        self.c = nn.Linear(4, 8)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("method, opts", [
    ("static", {}),
    ("asp", {}),
    ("rigl", {"total_steps": 30, "update_interval": 2, "alpha": 0.5}),
    ("iee", {"total_steps": 30, "H": 2, "J": 1, "Q": 2}),
])
def test_nm_blocks_run_along_each_layers_input_dimension(method, opts):
    torch.manual_seed(0)
    net = TransposedNet()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sp = regrow.create(method, net, opt, structure="nm", **opts)
    assert sp.input_dims == {"a.weight": 0, "b.weight": 0, "c.weight": 1}
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        net(torch.randn(6, 8, generator=g)).pow(2).mean().backward()
        sp.step()
        opt.zero_grad()
        for n, mask in sp.state.masks.items():
            assert mask.shape == sp.params[n].shape and mask.is_contiguous()
            assert int(mask.sum()) == sp.expected_counts()[n]
            if sp.expected_counts()[n] == mask.numel() // 2:   # between IEE's prune and grow it is not
                assert nm_legal(mask, sp.input_dims[n]), n
    if method in ("rigl", "iee"):
        assert any(r["event"] in ("update", "grow") for r in sp.pop_metrics())


def test_nm_divisibility_is_checked_along_the_input_dimension():
    net = nn.Sequential(Transposed(6, 8))   # 8 outputs divide by 4, 6 inputs do not
    with pytest.raises(ValueError, match=r"input dimension of '0.weight' to be divisible by m=4, "
                                         r"but it is 6 \(shape \(8, 6\) as \[out, in, \.\.\.\]\)"):
        regrow.create("static", net, None, structure="nm")


@settings(max_examples=25, deadline=None)
@given(out_blocks=st.integers(1, 3), in_blocks=st.integers(1, 3), seed=st.integers(0, 2 ** 16),
       ties=st.booleans())
def test_a_transposed_layer_gets_the_transposed_mask(out_blocks, in_blocks, seed, ties):
    """ASP (magnitude 2:4) on a weight stored [in, out] picks exactly the transpose of the
    mask it picks for the same weight stored [out, in], ties included."""
    d_in, d_out = 4 * in_blocks, 4 * out_blocks
    w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed))
    if ties:
        w = w.round()
    lin, tr = nn.Linear(d_in, d_out, bias=False), Transposed(d_in, d_out)
    with torch.no_grad():
        lin.weight.copy_(w)
        tr.weight.copy_(w.t())
    m_lin = regrow.create("asp", lin, None).state.masks["weight"]
    m_tr = regrow.create("asp", nn.Sequential(tr), None).state.masks["0.weight"]
    assert torch.equal(m_tr, m_lin.t())


def test_excluding_a_tied_or_frozen_weight_silences_its_warning():
    model = TiedLM()
    model.hidden.weight.requires_grad_(False)
    model.extra = nn.Linear(8, 8)
    found = no_warnings(find_sparse_weights, model, exclude=["decoder.weight", "hidden.*"])
    assert list(found) == ["extra.weight"]


def test_warnings_point_at_the_callers_line():
    model = TiedLM()
    with pytest.warns(UserWarning) as caught:
        regrow.create("static", model, None)
    assert caught[0].filename == __file__
