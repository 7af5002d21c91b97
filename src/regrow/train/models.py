"""Models for the experiment harness, by name: ``build_model("resnet20", (3, 32, 32), 10)``.

Every model is a plain ``nn.Module`` made of Conv/Linear/BatchNorm modules (no
functional weights), so :func:`regrow.methods.sparse_parameters` finds its
weights and torch-pruning can trace its channel coupling. Stems take
``input_shape[0]`` input channels; 2-D models refuse 1-D input and ``cnn1d``
refuses 2-D input, with a ValueError saying which models fit.

``tv:<name>`` builds any torchvision classification model (``weights=None``;
nothing is downloaded) with its first convolution's input channels and its
classifier's outputs adapted to the dataset.

Language models (``gpt_tiny``, ``gpt_small``; names in ``LM_MODELS``) take token
sequences: ``input_shape`` is ``(block_size,)`` and ``num_classes`` the vocabulary.
They are built from a config (Hugging Face ``transformers``' GPT-2), nothing downloaded.
"""
from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from typing import Any, Callable, List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
LM_MODELS = ("gpt_tiny", "gpt_small")  # models of token sequences (task "lm")

TV_PREFIX = "tv:"


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for inputs of shape ``input_shape`` = (C, *spatial) and
    ``num_classes`` outputs. ``kwargs`` are the model's own options (e.g. ``k`` for
    ``wrn28_k``); unknown ones raise a ValueError listing the allowed options."""
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple, torch.Size)) else None
    if (shape is None or len(shape) not in (1, 2, 3)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"input_shape must be (L,) tokens, (C, L) or (C, H, W) of positive ints, "
                         f"got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(name, str) and name.startswith(TV_PREFIX):
        return _torchvision(name[len(TV_PREFIX):], shape, num_classes, **kwargs)
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; allowed: {', '.join(model_names())}")
    if (len(shape) == 1) != (name in LM_MODELS):
        if len(shape) == 1:
            raise ValueError(f"model '{name}' does not take token sequences (input_shape {shape}, from a text "
                             f"dataset); language models: {', '.join(LM_MODELS)}")
        raise ValueError(f"model '{name}' is a language model: it needs token data (a text dataset such as "
                         f"fortunes or text), got input_shape {shape}")
    builder = MODELS.get(name)
    options = [p for p in inspect.signature(builder).parameters if p not in ("input_shape", "num_classes")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model '{name}'; allowed: {options or 'none'}")
    return builder(shape, num_classes, **kwargs)


def model_names() -> List[str]:
    """Registered names plus the ``tv:<name>`` form."""
    return MODELS.names() + [f"{TV_PREFIX}<torchvision model, e.g. {TV_PREFIX}resnet50>"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _need_2d(shape: Tuple[int, ...], name: str) -> Tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"model '{name}' needs 2-D image input (C, H, W); got input_shape {shape} "
                         f"(1-D). For 1-D data use cnn1d or mlp")
    return shape  # type: ignore[return-value]


def _init_cnn(model: nn.Module) -> nn.Module:
    """He et al. (2015) normal init (fan_out) for convolutions, BN to identity."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


# ----------------------------------------------------------------------------- MLP / LeNet


class MLP(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998): flatten -> 300 -> 100 -> classes, ReLU.
    266,610 parameters on MNIST (784 inputs, 10 classes)."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (300, 100)):
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict(flatten=nn.Flatten())
        prev = in_features
        for i, h in enumerate(hidden, 1):
            layers[f"fc{i}"] = nn.Linear(prev, h)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            prev = h
        layers[f"fc{len(hidden) + 1}"] = nn.Linear(prev, num_classes)
        self.net = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@MODELS.register("mlp")
def mlp(input_shape, num_classes, hidden: Sequence[int] = (300, 100)) -> nn.Module:
    if not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ValueError(f"mlp hidden must be a non-empty list of positive ints, got {hidden!r}")
    return MLP(math.prod(input_shape), num_classes, tuple(hidden))


class LeNet5(nn.Module):
    """LeNet-5, Caffe size (the ``lenet`` example of Caffe, as used by SNIP/DST papers):
    conv 20 5x5 -> maxpool 2 -> conv 50 5x5 -> maxpool 2 -> fc 500 -> fc classes,
    ReLU after each hidden layer. 431,080 parameters on MNIST. Inputs smaller than
    16x16 (e.g. 8x8 digits) get padding 2 so both 5x5 convolutions keep the size."""

    def __init__(self, in_channels: int, spatial: Tuple[int, int], num_classes: int):
        super().__init__()
        pad = 0 if min(spatial) >= 16 else 2
        h, w = spatial
        for _ in range(2):
            h, w = (h + 2 * pad - 4) // 2, (w + 2 * pad - 4) // 2
        if h < 1 or w < 1:
            raise ValueError(f"model 'lenet5' needs images of at least 4x4, got {spatial[0]}x{spatial[1]}")
        self.conv1 = nn.Conv2d(in_channels, 20, 5, padding=pad)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=pad)
        self.fc1 = nn.Linear(50 * h * w, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


@MODELS.register("lenet5")
def lenet5(input_shape, num_classes) -> nn.Module:
    c, h, w = _need_2d(input_shape, "lenet5")
    return LeNet5(c, (h, w), num_classes)


# ----------------------------------------------------------------------------- 1-D CNN


class CNN1D(nn.Module):
    """A small 1-D CNN for MNIST-1D (after Greydanus 2020's ConvNet baseline):
    conv 32 k5 -> conv 64 k3 s2 -> conv 64 k3 s2, each with BN + ReLU, then a
    linear classifier on the flattened (64, L/4) map (position matters in MNIST-1D)."""

    def __init__(self, in_channels: int, length: int, num_classes: int):
        super().__init__()

        def block(cin, cout, k, s):
            return nn.Sequential(nn.Conv1d(cin, cout, k, stride=s, padding=k // 2, bias=False),
                                 nn.BatchNorm1d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(in_channels, 32, 5, 1), block(32, 64, 3, 2), block(64, 64, 3, 2))
        out_len = (((length - 1) // 2 + 1) - 1) // 2 + 1
        self.fc = nn.Linear(64 * out_len, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


@MODELS.register("cnn1d")
def cnn1d(input_shape, num_classes) -> nn.Module:
    if len(input_shape) != 2:
        raise ValueError(f"model 'cnn1d' needs 1-D input (C, L); got input_shape {tuple(input_shape)} "
                         f"(2-D). For images use lenet5, resnet20, wrn22_2, ... or mlp")
    return CNN1D(input_shape[0], input_shape[1], num_classes)


# ----------------------------------------------------------------------------- Wide ResNet


class WideBasic(nn.Module):
    """Pre-activation basic block of WRN: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3,
    with a 1x1 convolution on the shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        y = self.conv1(o)
        y = self.conv2(self.dropout(F.relu(self.bn2(y))))
        return y + skip


class WideResNet(nn.Module):
    """Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016): a 3x3 stem of 16 channels,
    three groups of n = (d - 4) / 6 pre-activation blocks of widths 16k, 32k, 64k
    (strides 1, 2, 2), BN-ReLU, global average pool, linear. WRN-22-2 on CIFAR-10
    has 1.1M parameters (the RigL / IEE CIFAR-10 model)."""

    def __init__(self, depth: int, k: int, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        groups = []
        cin = widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(WideBasic(cin, cout, stride if i == 0 else 1, dropout))
                cin = cout
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1)
        return self.fc(torch.flatten(x, 1))


def _check_dropout(dropout: float) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return float(dropout)


@MODELS.register("wrn22_2")
def wrn22_2(input_shape, num_classes, dropout: float = 0.0) -> nn.Module:
    c, _, _ = _need_2d(input_shape, "wrn22_2")
    return WideResNet(22, 2, c, num_classes, _check_dropout(dropout))


@MODELS.register("wrn28_k")
def wrn28_k(input_shape, num_classes, k: int = 10, dropout: float = 0.0) -> nn.Module:
    c, _, _ = _need_2d(input_shape, "wrn28_k")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"wrn28_k option k (widening factor) must be a positive integer, got {k!r}")
    return WideResNet(28, k, c, num_classes, _check_dropout(dropout))


# ----------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016): conv3x3-BN-ReLU-conv3x3-BN, plus
    the shortcut, then ReLU. Option B shortcut: 1x1 conv + BN when the shape changes,
    so the channel coupling through the add is a plain graph torch-pruning can trace."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet of basic blocks with a CIFAR stem (3x3 conv, stride 1, no max-pool):
    stages of ``blocks[i]`` blocks of width ``widths[i]`` (first stage stride 1, the
    others 2), global average pool, linear."""

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        cin = widths[0]
        for s, (n, cout) in enumerate(zip(blocks, widths)):
            layer = []
            for i in range(n):
                layer.append(BasicBlock(cin, cout, 2 if (i == 0 and s > 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _cifar_resnet(depth: int, input_shape, num_classes) -> nn.Module:
    """CIFAR ResNet-(6n+2) (He et al. 2016, §4.2): stages of n blocks at 16, 32, 64 channels."""
    c, _, _ = _need_2d(input_shape, f"resnet{depth}")
    n = (depth - 2) // 6
    return ResNet([n, n, n], [16, 32, 64], c, num_classes)


@MODELS.register("resnet20")
def resnet20(input_shape, num_classes) -> nn.Module:
    """CIFAR ResNet-20 (He et al. 2016), ~0.27M parameters."""
    return _cifar_resnet(20, input_shape, num_classes)


@MODELS.register("resnet32")
def resnet32(input_shape, num_classes) -> nn.Module:
    """CIFAR ResNet-32 (He et al. 2016), ~0.46M parameters."""
    return _cifar_resnet(32, input_shape, num_classes)


@MODELS.register("resnet56")
def resnet56(input_shape, num_classes) -> nn.Module:
    """CIFAR ResNet-56 (He et al. 2016), ~0.85M parameters."""
    return _cifar_resnet(56, input_shape, num_classes)


@MODELS.register("resnet18")
def resnet18(input_shape, num_classes) -> nn.Module:
    """ResNet-18 (He et al. 2016) with the CIFAR stem (3x3 conv, no max-pool):
    stages 2-2-2-2 at 64-128-256-512 channels; 11.17M parameters on CIFAR-10."""
    c, _, _ = _need_2d(input_shape, "resnet18")
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], c, num_classes)


# ----------------------------------------------------------------------------- VGG

_VGG_CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG (Simonyan & Zisserman 2015) for CIFAR, with BN: conv3x3-BN-ReLU stacks
    and 2x2 max-pools, global average pool, one linear layer 512 -> classes.
    A max-pool is skipped once the map is 1 pixel wide, so small inputs work."""

    def __init__(self, cfg: Sequence[Union[int, str]], in_channels: int, spatial: Tuple[int, int],
                 num_classes: int):
        super().__init__()
        layers: List[nn.Module] = []
        cin, size = in_channels, min(spatial)
        for v in cfg:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


@MODELS.register("vgg16")
def vgg16(input_shape, num_classes) -> nn.Module:
    c, h, w = _need_2d(input_shape, "vgg16")
    return VGG(_VGG_CFG["vgg16"], c, (h, w), num_classes)


@MODELS.register("vgg19")
def vgg19(input_shape, num_classes) -> nn.Module:
    c, h, w = _need_2d(input_shape, "vgg19")
    return VGG(_VGG_CFG["vgg19"], c, (h, w), num_classes)


# ----------------------------------------------------------------------------- MobileNet-V1

# (out channels, stride) of the 13 depthwise-separable blocks (Howard et al. 2017, Table 1)
_MOBILENET_CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + \
    [(1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    """MobileNet-V1 (Howard et al. 2017): a 3x3 stem of 32 channels, 13 blocks of
    depthwise 3x3 conv-BN-ReLU + pointwise 1x1 conv-BN-ReLU, global average pool,
    linear. Stem stride 2 for ImageNet-size inputs (4.2M parameters at 1000
    classes); stride 1 when the input is at most 64 pixels wide (CIFAR)."""

    def __init__(self, in_channels: int, spatial: Tuple[int, int], num_classes: int):
        super().__init__()
        stem_stride = 1 if min(spatial) <= 64 else 2
        layers: List[nn.Module] = [nn.Conv2d(in_channels, 32, 3, stride=stem_stride, padding=1, bias=False),
                                   nn.BatchNorm2d(32), nn.ReLU(inplace=True)]
        cin = 32
        for cout, stride in _MOBILENET_CFG:
            layers += [nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
                       nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                       nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


@MODELS.register("mobilenet_v1")
def mobilenet_v1(input_shape, num_classes) -> nn.Module:
    c, h, w = _need_2d(input_shape, "mobilenet_v1")
    return MobileNetV1(c, (h, w), num_classes)


# ----------------------------------------------------------------------------- torchvision

# Constructor defaults that would otherwise warn or return auxiliary outputs.
_TV_DEFAULTS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _torchvision(name: str, input_shape: Tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """Any torchvision classification model, randomly initialised (``weights=None``):
    ``num_classes`` outputs, and the first Conv2d rebuilt for ``input_shape[0]`` channels."""
    import torchvision.models as tvm

    allowed = tvm.list_models(module=tvm)
    if name not in allowed:
        raise ValueError(f"unknown torchvision classification model '{TV_PREFIX}{name}'; allowed: "
                         f"{', '.join(TV_PREFIX + n for n in allowed)}")
    c, _, _ = _need_2d(input_shape, TV_PREFIX + name)
    if "weights" in kwargs or "num_classes" in kwargs:
        raise ValueError(f"model '{TV_PREFIX}{name}': options 'weights' and 'num_classes' are set by regrow "
                         f"(weights=None: nothing is downloaded; num_classes from the dataset)")
    try:
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **{**_TV_DEFAULTS.get(name, {}), **kwargs})
    except TypeError as e:  # unknown keyword for that constructor
        raise ValueError(f"bad option(s) {sorted(kwargs)} for model '{TV_PREFIX}{name}': {e}") from None
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first[1].in_channels != c:
        fqn, old = first
        if old.groups != 1:
            raise ValueError(f"model '{TV_PREFIX}{name}': its first convolution {fqn} is grouped, so its input "
                             f"channels cannot be changed to {c}")
        new = nn.Conv2d(c, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode)
        parent_name, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


# ----------------------------------------------------------------------------- GPT (language models)


class GPTLM(nn.Module):
    """A GPT-2 decoder (Radford et al. 2019) for next-token prediction: Hugging Face
    ``transformers``' ``GPT2Model`` built from a ``GPT2Config`` (nothing downloaded), with
    the output projection tied to the token embedding as in GPT-2's ``lm_head``.

    ``forward(tokens)`` maps int64 tokens ``[B, T]`` to logits ``[B, T, vocab]``. The
    tied projection is ``F.linear`` on the embedding table rather than a ``Linear``
    module, so weight discovery sees only the attention and MLP projections (HF
    ``Conv1D``, sparse along their true input dimension) and the embeddings stay dense.
    """

    def __init__(self, config):
        super().__init__()
        from transformers import GPT2Model

        self.transformer = GPT2Model(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=tokens).last_hidden_state
        return F.linear(hidden, self.transformer.wte.weight)


def _gpt(name: str, input_shape, num_classes: int, n_layer: int, n_embd: int, n_head: int,
         dropout: float) -> nn.Module:
    for key, v in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} option {key} must be a positive integer, got {v!r}")
    if n_embd % n_head:
        raise ValueError(f"{name} option n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    dropout = _check_dropout(dropout)
    try:
        from transformers import GPT2Config
    except ImportError:
        raise ImportError(f"model '{name}' needs Hugging Face transformers: "
                          "pip install 'regrow[transformers]'") from None
    (block,) = input_shape
    config = GPT2Config(vocab_size=num_classes, n_positions=block, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        use_cache=False, bos_token_id=None, eos_token_id=None)
    return GPTLM(config)


@MODELS.register("gpt_tiny")
def gpt_tiny(input_shape, num_classes, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
             dropout: float = 0.0) -> nn.Module:
    """GPT-2 architecture at 2 layers, width 64, 4 heads: 0.12M parameters with a byte
    vocabulary and 128 positions (a test- and CPU-sized language model)."""
    return _gpt("gpt_tiny", input_shape, num_classes, n_layer, n_embd, n_head, dropout)


@MODELS.register("gpt_small")
def gpt_small(input_shape, num_classes, n_layer: int = 4, n_embd: int = 128, n_head: int = 4,
              dropout: float = 0.0) -> nn.Module:
    """GPT-2 architecture at 4 layers, width 128, 4 heads: 0.84M parameters with a byte
    vocabulary and 128 positions (not GPT-2 "small", which is 12 x 768: set n_layer,
    n_embd, n_head to grow it)."""
    return _gpt("gpt_small", input_shape, num_classes, n_layer, n_embd, n_head, dropout)
