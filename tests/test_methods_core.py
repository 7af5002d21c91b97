"""Golden behaviour of the baseline methods: dense, static, SNIP, SET, RigL, GMP."""
from __future__ import annotations


import pytest
import torch
from torch import nn
from torch.nn import functional as F

import regrow
from conftest import TinyMLP, TinyNet, tiny_batch, tiny_loss

B = torch.bool


def eight(method_name, **cfg):
    """A Linear(4→2) without bias: exactly one 8-element sparse tensor, '0.weight'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: only the update moves things
    base = dict(density=0.5, distribution="uniform", total_steps=100, update_interval=1,
                alpha=0.5, fraction_schedule="constant", seed=7)
    base.update(cfg)
    method = regrow.create(method_name, model, opt, **base)
    return model, opt, method


def set_state(model, method, weights, mask, grad):
    p = model[0].weight
    with torch.no_grad():
        p.copy_(torch.tensor(weights).view(2, 4))
    method.state.masks["0.weight"] = torch.tensor(mask, dtype=B).view(2, 4)
    p.grad = torch.tensor(grad).view(2, 4)
    return p


W = [0.5, -0.1, 0.0, 0.5, 0.0, 0.0, 0.0, -0.5]
MASK = [1, 1, 0, 1, 0, 0, 0, 1]
G = [0.3, 0.1, -0.6, 0.1, 0.6, -0.6, 0.05, 0.4]


def test_rigl_golden_drop_and_grow():
    model, opt, method = eight("rigl")
    p = set_state(model, method, W, MASK, G)
    method.step()
    # drop 2 = ⌊0.5·4⌋ smallest |w| among active {0,1,3,7}: 0.1 at 1, then the 0.5-tie -> index 0
    # grow 2 largest |g| among inactive {0,1,2,4,5,6}: the 0.6-tie at 2, 4, 5 -> indices 2 and 4
    assert method.state.masks["0.weight"].view(-1).int().tolist() == [0, 0, 1, 1, 1, 0, 0, 1]
    # grown start at 0
    assert torch.equal(p.detach().view(-1), torch.tensor([0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, -0.5]))
    mom = opt.state[p]["momentum_buffer"].view(-1)
    assert mom[[0, 1, 2, 4]].tolist() == [0.0] * 4  # pruned and grown: zero state
    assert mom[3].item() == pytest.approx(0.1) and mom[7].item() == pytest.approx(0.4)
    rec = method.pop_metrics()
    assert len(rec) == 1 and rec[0]["n_pruned"] == 2 and rec[0]["n_grown"] == 2
    assert rec[0]["iou_grow"] == pytest.approx(2 / 6)


def test_set_golden_drop_and_random_grow():
    model, opt, method = eight("set")
    p = set_state(model, method, W, MASK, G)
    method.step()
    # the draws come from torch's generator: replay them rather than hard-code them (the
    # init draws U(0,1) once, the update a second time), so a torch release that changes
    # its random stream changes the expectation with it
    g = torch.Generator().manual_seed(7)
    rand = regrow.criteria.CRITERIA.get("random")
    rand(torch.empty(8), None, g)
    draw = rand(torch.empty(8), None, g).view(-1).tolist()
    # same drop as RigL (indices 0 and 1); grow the 2 highest draws among inactive
    # {0,1,2,4,5,6}, ties by lowest index; a just-dropped weight that comes straight back
    # keeps its value, any other grown weight starts at 0
    grown = sorted([0, 1, 2, 4, 5, 6], key=lambda i: (-draw[i], i))[:2]
    mask = [int(i in (3, 7) or i in grown) for i in range(8)]
    assert method.state.masks["0.weight"].view(-1).int().tolist() == mask
    values = [W[i] if MASK[i] and mask[i] else 0.0 for i in range(8)]
    assert torch.equal(p.detach().view(-1), torch.tensor(values))


def test_updates_follow_interval_cosine_fraction_and_end():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = regrow.create("rigl", model, opt, density=0.5, distribution="uniform", total_steps=100,
                           update_interval=25, alpha=0.3)
    steps = []
    for step in range(1, 101):
        tiny = torch.randn(4, 10)
        model(tiny).pow(2).sum().backward()
        method.step()
        opt.zero_grad()
        for rec in method.pop_metrics():
            steps.append((rec["step"], rec["n_pruned"], rec["fraction"]))
    # T_end = 75: updates at 25 and 50 only; α_25 = 0.15·(1+cos(π/3)) = 0.225 -> ⌊0.225·50⌋ = 11
    # α_50 = 0.15·(1+cos(2π/3)) = 0.075 -> ⌊3.75⌋ = 3
    assert [s for s, _, _ in steps] == [25, 50]
    assert [n for _, n, _ in steps] == [11, 3]
    assert steps[0][2] == pytest.approx(0.225)
    assert int(method.state.masks["0.weight"].sum()) == 50


def test_gmp_cubic_schedule_and_magnitude_pruning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = regrow.create("gmp", model, opt, density=0.1, distribution="uniform", total_steps=100,
                           update_interval=25)
    counts = {}
    for step in range(1, 101):
        model(torch.randn(4, 10)).pow(2).sum().backward()
        p = model[0].weight
        old = method.state.masks["0.weight"].clone()
        # what plain SGD makes of the active weights before the update prunes them
        stepped = torch.where(old, p.detach() - 0.01 * p.grad, torch.tensor(0.0)).abs()
        method.step()
        opt.zero_grad()
        new = method.state.masks["0.weight"]
        if not torch.equal(old, new):
            counts[step] = int(new.sum())
            assert not (new & ~old).any()  # no regrowth
            assert stepped[new].min() >= stepped[old & ~new].max()  # the largest |w| survive
    # d_t = 1 − 0.9·(1 − (1 − t/75)³): t=25 -> 0.36667 -> 37, t=50 -> 0.13333 -> 14, t=75 -> 10
    assert counts == {25: 37, 50: 14, 75: 10}
    assert method.expected_counts() == {"0.weight": 10}


def test_snip_keeps_top_connection_sensitivity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = regrow.create("snip", model, opt, density=0.25, distribution="uniform", calibration_batches=2)
    w0 = model[0].weight.detach().clone()
    batches = [(torch.randn(5, 6, generator=torch.Generator().manual_seed(i)),) for i in range(3)]
    score = torch.zeros_like(w0)
    for (x,) in batches[:2]:
        w = w0.clone().requires_grad_(True)
        (x @ w.t() + model[0].bias.detach()).pow(2).sum().backward()
        score += (w.grad * w0).abs()
    with pytest.raises(ValueError, match="calibrate"):
        method.step()
    method.calibrate(iter(batches), lambda m, b: m(b[0]).pow(2).sum())
    expected = torch.zeros(18, dtype=B)
    expected[torch.sort(score.view(-1), descending=True, stable=True).indices[:round(0.25 * 18)]] = True
    assert torch.equal(method.state.masks["0.weight"].view(-1), expected)
    assert torch.all(model[0].weight.detach()[~expected.view(3, 6)] == 0)
    assert model[0].weight.grad is None and model[0].bias.grad is None  # no gradients left behind


def test_static_never_changes_and_dense_is_dense(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9)
    st = regrow.create("static", tiny_net, opt, density=0.2)
    m0 = {n: m.clone() for n, m in st.state.masks.items()}
    for step in range(1, 6):
        opt.zero_grad()
        tiny_loss(tiny_net, tiny_batch(step)).backward()
        st.step()
    assert all(torch.equal(m0[n], st.state.masks[n]) for n in m0)
    assert sum(st.state.targets.values()) == round(0.2 * sum(m.numel() for m in m0.values()))

    torch.manual_seed(0)
    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    dense = regrow.create("dense", a, oa)
    assert dense.density() == 1.0
    for step in range(1, 4):
        for model, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            tiny_loss(model, tiny_batch(step)).backward()
        dense.step()
        ob.step()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_sparse_parameters_default_and_patterns(tiny_net):
    names = list(regrow.methods.sparse_parameters(tiny_net))
    assert names == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]  # no bias, no BN
    only_fc = regrow.methods.sparse_parameters(tiny_net, include=("fc*.weight",), exclude=("fc2.*",))
    assert list(only_fc) == ["fc1.weight"]
    m = regrow.create("static", tiny_net, None, density=0.5, exclude="conv1.weight")
    assert "conv1.weight" not in m.state.masks
    wrapped = nn.DataParallel(tiny_net)
    assert list(regrow.methods.sparse_parameters(wrapped)) == names


def test_dense_first_last_and_global_total(tiny_net):
    m = regrow.create("static", tiny_net, None, density=0.1, distribution="uniform", dense_first_last=True)
    c = m.state.targets
    assert c["conv1.weight"] == tiny_net.conv1.weight.numel() and c["fc2.weight"] == tiny_net.fc2.weight.numel()
    assert c["conv2.weight"] == round(0.1 * 576) and c["fc1.weight"] == round(0.1 * 2048)

    torch.manual_seed(1)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = regrow.create("rigl", model, opt, density=0.1, distribution="global", total_steps=40, update_interval=3)
    total = sum(p.numel() for p in g.params.values())
    for step in range(1, 31):
        opt.zero_grad()
        tiny_loss(model, tiny_batch(step)).backward()
        g.step()
        assert sum(int(mk.sum()) for mk in g.state.masks.values()) == round(0.1 * total)


@pytest.mark.parametrize("cfg,match", [
    ({"density": 0.0}, r"density must be a number in \(0, 1\]"),
    ({"density": 1.5}, r"density must be a number in \(0, 1\]"),
    ({"density": -0.1}, r"density must be a number in \(0, 1\]"),
    ({"distribution": "lognormal"}, "distribution must be one of erk, global, uniform"),
    ({"structure": "block"}, "structure must be one of unstructured, nm"),
    ({"structure": "nm", "density": 0.3}, "conflicts with N:M 2:4"),
    ({"total_steps": None}, "needs total_steps"),
    ({"total_steps": 0}, "total_steps must be a positive integer"),
    ({"total_steps": -5}, "total_steps must be a positive integer"),
    ({"total_steps": 10.5}, "total_steps must be a positive integer"),
    ({"update_interval": 0}, "update_interval must be a positive integer"),
    ({"alpha": 2.0}, r"alpha must be in \[0, 1\]"),
    ({"fraction_schedule": "linear"}, "fraction_schedule must be one of constant, cosine"),
    ({"bogus": 1}, r"unknown option\(s\) \['bogus'\]"),
])
def test_config_errors_name_the_field(tiny_mlp, cfg, match):
    full = {"density": 0.1, "total_steps": 10}
    full.update(cfg)
    with pytest.raises(ValueError, match=match):
        regrow.create("rigl", tiny_mlp, None, **full)


def test_other_errors():
    with pytest.raises(ValueError, match="unknown method 'nope'; allowed: .*rigl"):
        regrow.create("nope", nn.Linear(4, 4), None)
    with pytest.raises(ValueError, match="nothing to sparsify"):
        regrow.create("static", nn.Sequential(nn.BatchNorm1d(4), nn.ReLU()), None)
    with pytest.raises(ValueError, match="divisible by m=4"):
        regrow.create("static", nn.Sequential(nn.Linear(6, 4)), None, structure="nm")
    with pytest.raises(ValueError, match="distribution 'global' cannot be combined with structure 'nm'"):
        regrow.create("static", TinyMLP(), None, structure="nm", distribution="global")
    with pytest.raises(ValueError, match="already registered"):
        regrow.METHODS.register("rigl")(regrow.RigL)
    with pytest.raises(ValueError, match="built without an optimizer"):
        regrow.create("static", TinyMLP(), None).step()


def test_nm_methods_hold_two_of_four(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9)
    m = regrow.create("rigl", tiny_net, opt, structure="nm", total_steps=20, update_interval=2, alpha=0.5)
    assert m.config.density == 0.5
    for step in range(1, 16):
        opt.zero_grad()
        tiny_loss(tiny_net, tiny_batch(step)).backward()
        m.step()
        for mask in m.state.masks.values():
            assert torch.all(mask.movedim(1, -1).reshape(-1, 4).sum(1) == 2)


def test_nm_layers_kept_dense_need_no_blocks_of_m():
    # LeNet-5's stem has one input channel: no 2:4 blocks, but dense_first_last keeps it dense
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 8), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="'0.weight' to be divisible by m=4"):
        regrow.create("rigl", model, opt, structure="nm", total_steps=20)
    m = regrow.create("rigl", model, opt, structure="nm", dense_first_last=True, total_steps=20, update_interval=2)
    masks = m.state.masks
    assert masks["0.weight"].all() and masks["4.weight"].all()
    assert torch.all(masks["3.weight"].reshape(-1, 4).sum(1) == 2)
    for step in range(1, 8):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(2, 1, 6, 6)), torch.tensor([0, 3])).backward()
        m.step()
    assert m.state.masks["0.weight"].all() and torch.all(m.state.masks["3.weight"].reshape(-1, 4).sum(1) == 2)


def test_methods_declare_what_they_take_from_the_run():
    from regrow.methods.base import RunFacts

    facts = RunFacts(total_steps=100, epoch_steps=10, input_shape=(3, 8, 8))
    assert regrow.METHODS.get("rigl").run_options(facts) == {"total_steps": 100}
    assert regrow.METHODS.get("optg").run_options(facts) == {"total_steps": 100, "epoch_steps": 10}
    assert regrow.METHODS.get("halp").run_options(facts) == {"total_steps": 100, "input_shape": (3, 8, 8)}
    assert regrow.METHODS.get("static").run_options(RunFacts()) == {}


def test_the_registry_names_each_method_once():
    for name in regrow.METHODS.names():
        assert regrow.METHODS.get(name).name == name


def test_rigl_fanin_neuron_ablation_golden():
    # Linear(4→3) then Linear(3→2), both without bias, uniform density 0.5: the first layer
    # holds k = 2 per neuron (budget 6), Ω = ⌊0.5·6⌋ = 3 at the update
    kw = dict(density=0.5, distribution="uniform", total_steps=100, update_interval=1, alpha=0.5,
              fraction_schedule="constant", structure="fanin")
    w = torch.tensor([[0.9, 0.8, 0, 0], [0.1, 0, 0.2, 0], [0, 0.05, 0, 0.3]])
    mask = w != 0
    g = torch.tensor([[0, 0, 0.7, 0.6], [0.01, 0.02, 0.03, 0.04], [0.5, 0, 0, 0]])

    def update(**extra):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        m = regrow.create("rigl", model, opt, **kw, **extra)
        p = model[0].weight
        with torch.no_grad():
            p.copy_(w)
        m.state.masks["0.weight"] = mask.clone()
        p.grad = g.clone()
        model[1].weight.grad = torch.zeros_like(model[1].weight)
        m.step()
        return m.state.masks["0.weight"].int().tolist()

    # drop the 3 smallest |w| (0.05, 0.1, 0.2): neuron 1 keeps nothing; unconstrained growth
    # of 3 by |g| picks 0.7, 0.6, 0.5, so the salient counts are [4, 0, 2]: below
    # max(1, ⌊0.5·2⌋) = 1, neuron 1 is ablated and 6 over 2 alive neurons gives 3 each
    # (neuron 2 takes its 0.5, then the lower index among its 0-gradient ties)
    assert update(neuron_ablation=True, gamma_sal=0.5) == [[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 1]]
    # without ablation every neuron refills to 2 from its own best
    assert update(neuron_ablation=False) == [[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]]


def test_neuron_ablation_option_errors_and_warning(tiny_mlp):
    with pytest.raises(ValueError, match="neuron_ablation applies to structure 'fanin' only"):
        regrow.create("rigl", tiny_mlp, None, total_steps=10, neuron_ablation=True)
    with pytest.raises(ValueError, match=r"gamma_sal .* must be a number in \(0, 1\]"):
        regrow.create("rigl", tiny_mlp, None, total_steps=10, structure="fanin", neuron_ablation=True,
                      gamma_sal=0.0)
    with pytest.warns(UserWarning, match="neuron_ablation does nothing"):
        regrow.create("static", tiny_mlp, None, structure="fanin", neuron_ablation=True)
