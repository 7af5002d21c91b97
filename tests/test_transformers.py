"""regrow on Hugging Face transformers models built from tiny configs (nothing is
downloaded): tied embeddings stay dense, GPT-2's Conv1D projections are sparse with N:M
blocks along their true input dimension, and RigL, IEE and 2:4 train end to end with
exact densities and a bit-identical resume."""
from __future__ import annotations

import io
import warnings

import pytest
import torch

import regrow

transformers = pytest.importorskip("transformers")
Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D

VOCAB, SEQ, HIDDEN = 100, 16, 32
TIED = r"same tensor as embedding"


def tiny_bert(seed: int = 0):
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=SEQ, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return transformers.BertForMaskedLM(cfg)


def tiny_gpt2(seed: int = 0):
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=HIDDEN, n_layer=2, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg)


MODELS = {"bert": tiny_bert, "gpt2": tiny_gpt2}


def lm_loss(model, step: int) -> torch.Tensor:
    ids = torch.randint(1, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(step))
    return model(input_ids=ids, labels=ids).loss


def build(model, method: str, match: str = TIED, **opts):
    """The method on ``model`` with AdamW, checking the tied-embedding warning is given."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    with pytest.warns(UserWarning, match=match):
        sp = regrow.create(method, model, opt, **opts)
    return opt, sp


def nm_violations(mask: torch.Tensor, dim: int, n: int = 2, m: int = 4) -> int:
    return int((mask.movedim(dim, -1).reshape(-1, m).sum(1) != n).sum())


def check_invariants(sp, nm: bool) -> None:
    """Exact counts per layer, zeros outside the live masks, N:M along the input dim."""
    expected, live = sp.expected_counts(), sp.live_masks()
    for n, mask in sp.state.masks.items():
        p = sp.params[n]
        assert mask.shape == p.shape
        assert int(mask.sum()) == expected[n], n
        assert not bool(p[~live[n]].any()), f"{n}: inactive weights are not 0.0"
        if nm and expected[n] * 2 == p.numel():   # IEE between prune and grow holds fewer
            assert nm_violations(mask, sp.input_dims[n]) == 0, n


# ---- discovery ---------------------------------------------------------------------
def test_bert_tied_decoder_and_embeddings_stay_dense():
    model = tiny_bert()
    emb = model.bert.embeddings.word_embeddings.weight
    nonzero = int(torch.count_nonzero(emb))
    opt, sp = build(model, "rigl", match=r"'cls\.predictions\.decoder\.weight' is the same tensor as "
                                         r"embedding 'bert\.embeddings\.word_embeddings\.weight'",
                    density=0.1, total_steps=8, update_interval=2)
    assert all(p is not emb for p in sp.params.values())
    assert "bert.encoder.layer.0.attention.self.query.weight" in sp.names
    assert "bert.encoder.layer.1.output.dense.weight" in sp.names
    assert not any("embeddings" in n for n in sp.names)
    for step in range(1, 5):
        lm_loss(model, step).backward()
        sp.step()
        opt.zero_grad()
    # nothing masked: at most the padding row, 0 at init (the tied decoder trains it), is 0
    assert int(torch.count_nonzero(emb)) >= nonzero >= emb.numel() - HIDDEN
    assert sp.density() == pytest.approx(0.1, abs=1e-3)


def test_gpt2_conv1d_projections_are_sparse_lm_head_dense():
    model = tiny_gpt2()
    _, sp = build(model, "static", match=r"'lm_head\.weight' is the same tensor as embedding "
                                          r"'transformer\.wte\.weight'", density=0.1)
    projections = [f"transformer.h.{i}.{m}.weight" for i in range(2)
                   for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert sp.names == projections
    assert set(sp.input_dims.values()) == {0}
    wte = model.transformer.wte.weight
    assert int(torch.count_nonzero(wte)) == wte.numel()
    assert sp.density() == pytest.approx(0.1, abs=1e-3)


def test_gpt2_include_matches_the_lm_head_alias():
    model = tiny_gpt2()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="include= sparsifies both"):
        sp = regrow.create("static", model, opt, density=0.1, include=["lm_head.weight"])
    assert sp.names == ["lm_head.weight"] and sp.params["lm_head.weight"] is model.transformer.wte.weight
    assert sp.input_dims == {"lm_head.weight": 1}   # nn.Linear [vocab, hidden]
    nonzero = int(torch.count_nonzero(model.transformer.wte.weight))
    assert nonzero == round(0.1 * VOCAB * HIDDEN)


@pytest.mark.parametrize("include", [(), ("*.c_attn.weight", "*.c_fc.weight")])
def test_gpt2_two_four_blocks_run_along_the_input_dimension(include):
    model = tiny_gpt2()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tied lm_head warning, tested above
        sp = regrow.create("asp", model, opt, include=include)
    blocks = 0
    for n in sp.names:
        mask = sp.state.masks[n]
        assert isinstance(model.get_submodule(n.rsplit(".", 1)[0]), Conv1D)
        assert nm_violations(mask, 0) == 0, n        # [in, out]: blocks along dim 0
        blocks += mask.numel() // 4
    # 2 layers x (c_attn [32, 96] + c_fc [32, 128], and c_proj [32, 32] + [128, 32] by default)
    assert len(sp.names) == (4 if include else 8) and blocks == (3584 if include else 6144)


@pytest.mark.parametrize("method,opts", [
    ("rigl", {"update_interval": 2}), ("iee", {"H": 2, "J": 1, "Q": 2}),
    ("rigl", {"update_interval": 2, "neuron_ablation": True, "gamma_sal": 1.0}),
], ids=["rigl", "iee", "rigl-ablation"])
def test_gpt2_fanin_counts_inputs_along_the_input_dimension(method, opts):
    # Conv1D stores [in, out]: every output neuron is a column, its inputs run along dim 0
    model = tiny_gpt2()
    opt, sp = build(model, method, density=0.2, structure="fanin", distribution="uniform",
                    total_steps=20, **opts)
    ablation = sp.config.neuron_ablation
    seen_ablated = False
    for step in range(1, 15):
        lm_loss(model, step).backward()
        sp.step()
        opt.zero_grad()
        check_invariants(sp, nm=False)
        expected = sp.expected_counts()
        for n, mask in sp.state.masks.items():
            if expected[n] != sp.state.targets[n]:
                continue                       # IEE between prune and grow holds fewer
            per_out = mask.sum(0)              # inputs of each output neuron
            k = sp.state.targets[n] // mask.shape[1]
            assert sp.state.targets[n] == k * mask.shape[1], n
            if not ablation or n == sp.names[-1]:
                assert torch.all(per_out == k), f"step {step}: {n} fan-ins {per_out.unique().tolist()}"
            else:
                alive = per_out[per_out > 0]
                assert int(alive.max()) - int(alive.min()) <= 1, n
                seen_ablated |= alive.numel() < per_out.numel()
    assert seen_ablated or not opts.get("neuron_ablation")
    # the condensed export counts along the same dimension and equals the masked model
    from regrow.deploy import SparseLinear, sparse_layers
    model.eval()
    timings = {l.name: {"dense": {1: 1.0}, "fanin:ebag": {1: 0.5}} for l in sparse_layers(model, sp.state.masks)}
    ids = torch.randint(1, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(99))
    res = regrow.export(model, format="fanin", example=ids[:1], masks=sp.state.masks, timings=timings)
    fanin = {n: m for n, m in res.model.named_modules() if isinstance(m, SparseLinear)}
    assert len(fanin) == len(sp.names)
    with torch.no_grad():
        torch.testing.assert_close(res.model(input_ids=ids).logits, model(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_gpt2_frozen_weight_is_skipped_and_untouched():
    model = tiny_gpt2()
    frozen = model.transformer.h[0].mlp.c_fc.weight
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with pytest.warns(UserWarning) as caught:
        sp = regrow.create("rigl", model, opt, density=0.1, total_steps=8, update_interval=2)
    assert any("frozen" in str(w.message) and "transformer.h.0.mlp.c_fc.weight" in str(w.message)
               for w in caught)
    assert "transformer.h.0.mlp.c_fc.weight" not in sp.names
    for step in range(1, 5):
        lm_loss(model, step).backward()
        sp.step()
        opt.zero_grad()
    assert torch.equal(frozen, before)


def test_flops_count_gpt2_conv1d_layers():
    from regrow.cost import layer_flops

    model = tiny_gpt2()
    flops = layer_flops(model, torch.zeros(1, SEQ, dtype=torch.long))
    for i in range(2):
        w = model.transformer.h[i].mlp.c_fc.weight
        assert flops[f"transformer.h.{i}.mlp.c_fc.weight"] == 2.0 * w.numel() * SEQ


# ---- training end to end -------------------------------------------------------------
STEPS, SPLIT = 16, 8
RUNS = {
    "rigl": ("rigl", {"density": 0.1, "total_steps": STEPS, "update_interval": 2}),
    "iee": ("iee", {"density": 0.1, "total_steps": STEPS, "H": 2, "J": 1, "Q": 2}),
    "rigl-2:4": ("rigl", {"structure": "nm", "total_steps": STEPS, "update_interval": 2, "alpha": 0.5}),
    "iee-2:4": ("iee", {"structure": "nm", "total_steps": STEPS, "H": 2, "J": 1, "Q": 2}),
    "asp-2:4": ("asp", {}),
}


def train(arch: str, run: str, resume_at=None):
    """STEPS steps of ``run``, checking the invariants after each; with ``resume_at``, save
    model, optimizer and sparsity state after that step, rebuild everything in the normal
    order (model, optimizer, method from a different seed), load all three and go on."""
    method, opts = RUNS[run]
    nm = opts.get("structure") == "nm" or method == "asp"
    model = MODELS[arch]()
    opt, sp = build(model, method, **opts)
    check_invariants(sp, nm)
    events = []
    for step in range(1, STEPS + 1):
        lm_loss(model, step).backward()
        sp.step()
        opt.zero_grad()
        check_invariants(sp, nm)
        events += [r["event"] for r in sp.pop_metrics()]
        if step == resume_at:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "sparsity": sp.state_dict()}, buf)
            buf.seek(0)
            ckpt = torch.load(buf, weights_only=True)
            model = MODELS[arch](seed=1)
            opt, sp = build(model, method, **opts)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sp.load_state_dict(ckpt["sparsity"])
            check_invariants(sp, nm)
    return model, sp, events


@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("arch", list(MODELS))
def test_train_and_resume_bit_identical(arch, run):
    model, sp, events = train(arch, run)
    if sp.dynamic:   # the structure really changed during the run
        assert {"update"} <= set(events) or {"prune", "grow"} <= set(events)
    if run == "rigl":
        total = sum(p.numel() for p in sp.params.values())
        assert sum(sp.expected_counts().values()) == round(0.1 * total)
    resumed, sp2, _ = train(arch, run, resume_at=SPLIT)
    ref = model.state_dict()
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, ref[k]), k
    for n, m in sp.state.masks.items():
        assert torch.equal(sp2.state.masks[n], m), n
    assert sp2.state.step == sp.state.step == STEPS
