"""Tests for regrow.train.models: builds, forward shapes, parameter counts, errors."""
import pytest
import torch
import torch.nn as nn

from regrow.methods import sparse_parameters
from regrow.train.models import LM_MODELS, MODELS, build_model, count_parameters

IMAGE_MODELS = ["mlp", "lenet5", "wrn22_2", "wrn28_k", "resnet20", "resnet32", "resnet56", "resnet18",
                "vgg16", "vgg19", "mobilenet_v1"]
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
# Big models get a cheap configuration for the forward pass: the check is the wiring.
SMALL_KW = {"wrn28_k": {"k": 1}}


def test_registry_names():
    assert set(MODELS.names()) == set(IMAGE_MODELS) | {"cnn1d"} | set(LM_MODELS)


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet99'; allowed: .*cnn1d.*wrn28_k, tv:<torchvision"):
        build_model("resnet99", (3, 32, 32), 10)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_forward_and_plain_modules(name):
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 7, **SMALL_KW.get(name, {}))  # digits-sized input
    model.train()
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    # Every parameter lives on a Conv/Linear/BN module (no functional weights), and
    # sparse_parameters finds exactly the Conv/Linear weights.
    owned = {f"{mn}.{pn}" for mn, m in model.named_modules() if isinstance(m, WEIGHTED)
             for pn, _ in m.named_parameters(recurse=False)}
    assert owned == {n for n, _ in model.named_parameters()}
    convs_linears = {f"{mn}.weight" for mn, m in model.named_modules()
                     if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}
    assert set(sparse_parameters(model)) == convs_linears
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) == (64 if name == "mlp" else 1)


def test_cifar_sized_forward():
    model = build_model("resnet20", (3, 32, 32), 10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cnn1d_forward_and_1d_lengths():
    for length in (40, 37):
        model = build_model("cnn1d", (1, length), 10)
        assert model(torch.randn(2, 1, length)).shape == (2, 10)
    assert build_model("cnn1d", (3, 40), 4)(torch.randn(2, 3, 40)).shape == (2, 4)
    assert build_model("mlp", (1, 40), 10)(torch.randn(2, 1, 40)).shape == (2, 10)


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "wrn22_2", "vgg19", "mobilenet_v1", "tv:resnet18"])
def test_2d_models_refuse_1d_input(name):
    with pytest.raises(ValueError, match=r"needs 2-D image input \(C, H, W\); got input_shape \(1, 40\).*cnn1d"):
        build_model(name, (1, 40), 10)


def test_cnn1d_refuses_2d_input():
    with pytest.raises(ValueError, match=r"'cnn1d' needs 1-D input \(C, L\); got input_shape \(1, 28, 28\)"):
        build_model("cnn1d", (1, 28, 28), 10)


@pytest.mark.parametrize("name,shape,classes,expected", [
    # hand counts: 784*300+300 + 300*100+100 + 100*10+10
    ("mlp", (1, 28, 28), 10, 266_610),
    # 20*25+20 + 50*20*25+50 + 800*500+500 + 500*10+10
    ("lenet5", (1, 28, 28), 10, 431_080),
    # He et al. option A count 269,722 plus two 1x1 shortcut convs + BN: 16*32+64 + 32*64+128
    ("resnet20", (3, 32, 32), 10, 272_474),
    # CIFAR ResNet-18 as in the RigL/kuangliu code: 11,173,962
    ("resnet18", (3, 32, 32), 10, 11_173_962),
    # MobileNet-V1 1.0-224: 4,231,976 trainable parameters (Keras applications table)
    ("mobilenet_v1", (3, 224, 224), 1000, 4_231_976),
])
def test_exact_parameter_counts(name, shape, classes, expected):
    assert count_parameters(build_model(name, shape, classes)) == expected


@pytest.mark.parametrize("name,kw,lo,hi", [
    ("wrn22_2", {}, 1.05e6, 1.12e6),       # "1.1M" (Zagoruyko & Komodakis; RigL)
    ("wrn28_k", {}, 36.4e6, 36.6e6),       # WRN-28-10: 36.5M
    ("resnet32", {}, 0.46e6, 0.47e6),      # 0.46M
    ("resnet56", {}, 0.85e6, 0.86e6),      # 0.85M
    ("vgg16", {}, 14.7e6, 14.75e6),        # 14.7M
    ("vgg19", {}, 20.0e6, 20.05e6),        # 20.0M
])
def test_published_parameter_counts(name, kw, lo, hi):
    assert lo <= count_parameters(build_model(name, (3, 32, 32), 10, **kw)) <= hi


def test_wrn_width_option_and_stem_channels():
    model = build_model("wrn28_k", (1, 32, 32), 10, k=2)
    assert model.conv1.in_channels == 1 and model.fc.in_features == 128 and len(model.block1) == 4
    with pytest.raises(ValueError, match="k \\(widening factor\\) must be a positive integer"):
        build_model("wrn28_k", (3, 32, 32), 10, k=0)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\] for model 'resnet20'; allowed: none"):
        build_model("resnet20", (3, 32, 32), 10, width=2)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['kk'\] for model 'wrn28_k'; allowed: \['k', 'dropout'\]"):
        build_model("wrn28_k", (3, 32, 32), 10, kk=2)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
        build_model("wrn22_2", (3, 32, 32), 10, dropout=1.5)


def test_mobilenet_stride_config_follows_input_size():
    small = build_model("mobilenet_v1", (3, 32, 32), 10)
    big = build_model("mobilenet_v1", (3, 224, 224), 10)
    assert small.features[0].stride == (1, 1) and big.features[0].stride == (2, 2)
    dw = [m for m in small.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dw) == 13 and all(m.groups == m.in_channels == m.out_channels for m in dw)


def test_vgg_skips_pools_on_tiny_maps():
    pools = [m for m in build_model("vgg16", (3, 8, 8), 10).modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, then the last two pools are skipped


def test_build_is_deterministic_under_seed():
    torch.manual_seed(3)
    a = build_model("resnet20", (3, 32, 32), 10).state_dict()
    torch.manual_seed(3)
    b = build_model("resnet20", (3, 32, 32), 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("shape", [6, (), (1, 2, 3, 4), (3, 0, 32), (3, 32.0, 32)])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape must be \\(L,\\) tokens, \\(C, L\\) or \\(C, H, W\\) "
                                         "of positive ints"):
        build_model("mlp", shape, 10)


@pytest.mark.parametrize("classes", [0, -1, True, 2.0])
def test_bad_num_classes(classes):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        build_model("mlp", (1, 40), classes)


def test_lenet5_rejects_tiny_images():
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("lenet5", (1, 3, 3), 10)


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_adapts_stem_and_classes():
    model = build_model("tv:resnet18", (1, 32, 32), 7)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64 and model.fc.out_features == 7
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    sq = build_model("tv:squeezenet1_1", (2, 48, 48), 5)  # classifier is a conv
    assert sq.features[0].in_channels == 2
    assert sq(torch.randn(2, 2, 48, 48)).shape == (2, 5)
    same = build_model("tv:squeezenet1_1", (3, 48, 48), 5)
    assert same.features[0].in_channels == 3


def test_torchvision_errors():
    with pytest.raises(ValueError, match="unknown torchvision classification model 'tv:resnet99'; allowed: .*tv:resnet50"):
        build_model("tv:resnet99", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="weights=None: nothing is downloaded"):
        build_model("tv:resnet18", (3, 32, 32), 10, weights="DEFAULT")
    with pytest.raises(ValueError, match=r"bad option\(s\) \['wings'\] for model 'tv:resnet18'"):
        build_model("tv:resnet18", (3, 32, 32), 10, wings=2)


# ----------------------------------------------------------------------------- torch-pruning


def test_torch_pruning_traces_residual_channel_coupling():
    """Pruning the stem's output channels must reach every block output of stage 1
    (the residual adds) and the stage-2 inputs, so channel groups are representable."""
    import torch_pruning as tp

    model = build_model("resnet20", (3, 16, 16), 10)
    example = torch.randn(1, 3, 16, 16)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 5])
    touched = {dep.target.module for dep, _ in group}
    stage1 = model.layers[0]
    assert {model.bn1, *(b.conv2 for b in stage1), *(b.bn2 for b in stage1)} <= touched
    assert model.layers[1][0].shortcut[0] in touched and model.layers[1][0].conv1 in touched
    group.prune()
    assert model.conv1.out_channels == 14 and all(b.conv2.out_channels == 14 for b in stage1)
    assert model(example).shape == (1, 10)


# ----------------------------------------------------------------------------- language models


@pytest.mark.parametrize("name,params", [("gpt_tiny", 124_672), ("gpt_small", 842_496)])
def test_gpt_models_map_tokens_to_next_token_logits(name, params):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = build_model(name, (128,), 256)
    assert count_parameters(model) == params
    tokens = torch.randint(0, 256, (2, 128))
    logits = model(tokens)
    assert logits.shape == (2, 128, 256)
    # causal: a change at position 5 leaves the logits of positions 0..4 alone
    other = tokens.clone()
    other[:, 5] = (other[:, 5] + 1) % 256
    changed = model(other)
    assert torch.allclose(changed[:, :5], logits[:, :5], atol=1e-6)
    assert not torch.allclose(changed[:, 5:], logits[:, 5:])


def test_gpt_sparse_weights_are_the_projections_and_the_tied_embedding_stays_dense():
    pytest.importorskip("transformers")
    import warnings

    from regrow.modules import find_sparse_weights

    model = build_model("gpt_tiny", (16,), 256, n_layer=1, n_embd=16, n_head=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing tied or frozen to warn about
        found = find_sparse_weights(model)
    assert sorted(found) == [f"transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj",
                                                                     "mlp.c_fc", "mlp.c_proj")]
    assert all(w.input_dim == 0 for w in found.values())  # HF Conv1D stores [in, out]
    # the output projection is the embedding table itself (GPT-2's weight tying)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    assert not model(torch.zeros(1, 4, dtype=torch.long)).any()


@pytest.mark.parametrize("opts,message", [
    ({"n_embd": 30, "n_head": 4}, r"n_embd \(30\) must be a multiple of n_head \(4\)"),
    ({"n_layer": 0}, "n_layer must be a positive integer"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ({"vocab": 9}, r"unknown option\(s\) \['vocab'\] for model 'gpt_tiny'"),
])
def test_gpt_options_are_checked(opts, message):
    with pytest.raises(ValueError, match=message):
        build_model("gpt_tiny", (16,), 256, **opts)


def test_token_data_and_image_models_do_not_mix():
    with pytest.raises(ValueError, match=r"model 'mlp' does not take token sequences.*gpt_tiny, gpt_small"):
        build_model("mlp", (16,), 256)
    with pytest.raises(ValueError, match="model 'gpt_tiny' is a language model: it needs token data"):
        build_model("gpt_tiny", (1, 28, 28), 10)
    assert set(LM_MODELS) <= set(MODELS.names())
