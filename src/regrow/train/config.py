"""One resolved run configuration: defaults < YAML recipe < command-line flags.

:class:`RunConfig` is the single description of a training run. It is written
fully resolved to ``RUN_DIR/config.yaml`` and stored in every checkpoint, so a run
can be repeated or resumed from it alone. :func:`validate` checks every value
before any training starts and names the option and what is allowed.

Batch semantics: ``batch_size`` is the *global* batch of one optimizer step. Under
``torchrun`` it is split evenly across ranks, and each rank's share is split into
``grad_accum`` micro-batches, so the number of optimizer steps per epoch and the
update interval ΔT mean the same whatever the world size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step", "warmup-cosine")
DEVICES = ("auto", "cpu", "cuda")
# Method options the harness sets itself from top-level fields.
HARNESS_METHOD_KEYS = ("density", "distribution", "structure", "total_steps", "seed")
# Non-run sections a recipe may carry (read by ``regrow compare``).
EXTRA_SECTIONS = ("compare",)
# The seed a dataset is generated/split with when data_seed is empty (MNIST-1D's own
# default is 42); others use 0. Fixed across training seeds, so a grid over seeds
# varies only initialisation and data order.
CANONICAL_DATA_SEEDS = {"mnist1d": 42}


def _f(default: Any, help: str, **kw: Any):
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    method: str = _f("rigl", "sparsity method (registry name)")
    method_options: Dict[str, Any] = _f({}, "options of the method's own Config (see --opt)")
    model: str = _f("mlp", "model (registry name, or tv:<torchvision name>)")
    model_options: Dict[str, Any] = _f({}, "keyword options of the model builder (e.g. mlp hidden, wrn28_k k)")
    data: str = _f("mnist1d", "dataset (registry name)")
    data_root: Optional[str] = _f(None, "dataset directory (fashion-mnist, mnist, cifar*, imagefolder)")
    synthetic: Optional[Dict[str, Any]] = _f(None, "options of the synthetic dataset (shape, num_classes, train_size, ...)")
    data_options: Dict[str, Any] = _f({}, "options of the text datasets fortunes and text (block_size, val_fraction)")
    augment: bool = _f(True, "standard training augmentation where the dataset has one")
    image_size: Optional[int] = _f(None, "resize/crop size for imagefolder")
    density: float = _f(0.1, "fraction of sparse weights kept, in (0, 1]")
    distribution: Optional[str] = _f(None, "per-layer density distribution: uniform | erk | global "
                                     "(empty: the method's default, erk for most, global for optg)")
    structure: str = _f("unstructured", "sparsity structure: unstructured | nm | channel (latency-constrained "
                        "channel groups; e.g. --method iee --structure channel runs channel IEE)")
    epochs: int = _f(10, "training epochs")
    batch_size: int = _f(128, "global batch per optimizer step (split across ranks)")
    eval_batch_size: int = _f(512, "batch size for evaluation")
    lr: float = _f(0.1, "peak learning rate")
    optimizer: str = _f("sgd", "optimizer: sgd | adamw")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum (SGD)")
    weight_decay: float = _f(5e-4, "weight decay")
    no_decay_norm_bias: bool = _f(False, "no weight decay on biases and normalisation parameters")
    schedule: str = _f("cosine", "LR schedule: constant | cosine | step | warmup-cosine")
    warmup_epochs: float = _f(0.0, "linear LR warm-up length in epochs (any schedule)")
    lr_step_size: int = _f(30000, "step schedule: decay every this many optimizer steps")
    lr_gamma: float = _f(0.1, "step schedule: LR multiplier at each decay")
    label_smoothing: float = _f(0.0, "label smoothing in [0, 1)")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    amp: bool = _f(False, "bfloat16 mixed precision (CUDA only)")
    channels_last: bool = _f(False, "channels-last memory format for 4-D inputs")
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact resume on CPU)")
    compile: bool = _f(False, "torch.compile the model")
    seed: int = _f(0, "seed of model init, masks and data order")
    data_seed: Optional[int] = _f(None, "seed of dataset generation and splits (mnist1d generation, digits "
                                        "split, synthetic data), separate from --seed so a grid over seeds "
                                        "keeps the data fixed (empty: the dataset's canonical seed, 42 for "
                                        "mnist1d, 0 otherwise)")
    out: str = _f("runs/run", "run directory")
    log_every: int = _f(50, "log train metrics every this many optimizer steps")
    eval_every: int = _f(1, "evaluate on the test set every this many epochs")
    checkpoint_every: int = _f(1, "write checkpoint.pt every this many epochs (and at the end)")
    num_workers: int = _f(0, "data-loader worker processes")
    threads: Optional[int] = _f(None, "torch intra-op CPU threads (empty: torch's default); 1 suits "
                                      "small models on a shared machine")
    quiet: bool = _f(False, "no progress bar")
    pretrained: Optional[str] = _f(None, "dense checkpoint to start from (regrow checkpoint or state_dict)")
    pretrained_epochs: Optional[float] = _f(None, "epochs of dense pre-training behind --pretrained, counted in "
                                                  "train_flops_relative (empty: read from a regrow checkpoint, "
                                                  "0 for a plain state_dict)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    fsdp: bool = _f(False, "torchrun: shard parameters, gradients, optimizer and sparsity state over the "
                           "ranks with FSDP2 (fully_shard) instead of replicating them with DDP; "
                           "unstructured and N:M methods (ignored at world size 1)")
    dist_timeout: float = _f(1800.0, "torchrun: seconds a rank waits for the others in a collective before "
                                     "the run fails (a stopped rank otherwise stalls the rest this long)")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` to the type of field ``name`` (YAML/CLI strings, ints for floats)."""
    f = FIELDS[name]
    default = RunConfig().__getattribute__(name)
    if name == "synthetic":
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"synthetic must be a mapping of option: value, got {value!r}")
        return None if value is None else dict(value)
    if name in ("method_options", "model_options", "data_options"):
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping of option: value, got {value!r}")
        return dict(value)
    if value is None:
        if f.default is None:
            return None
        raise ValueError(f"{name} must not be empty")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if name == "pretrained_epochs":
        if _is_num(value):
            return float(value)
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(default, int) or name in ("image_size", "threads", "data_seed"):
        if _is_int(value):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(default, float):
        if _is_num(value):
            return float(value)
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (str, Path)):
        return str(value)
    raise ValueError(f"{name} must be a string, got {value!r}")


def load_yaml(path: str) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    return data


def split_sections(data: Dict[str, Any], source: str = "config") -> tuple:
    """Separate run fields from extra sections (``compare``), rejecting unknown keys."""
    data = dict(data)
    extra = {k: data.pop(k) for k in EXTRA_SECTIONS if k in data}
    if "opt" in data:  # the YAML spelling of --opt
        opts = data.pop("opt")
        if not isinstance(opts, dict):
            raise ValueError(f"{source}: opt must be a mapping of option: value")
        data["method_options"] = {**opts, **dict(data.get("method_options") or {})}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"{source}: unknown option(s) {unknown}; allowed: {sorted(FIELDS) + list(EXTRA_SECTIONS)}"
        )
    return data, extra


def build(*layers: Dict[str, Any]) -> RunConfig:
    """Merge dicts of field values in order (later wins; method_options merge key by key)."""
    values: Dict[str, Any] = {}
    options: Dict[str, Dict[str, Any]] = {"method_options": {}, "model_options": {}, "data_options": {}}
    for layer in layers:
        for k, v in layer.items():
            if k not in FIELDS:
                raise ValueError(f"unknown option {k!r}; allowed: {sorted(FIELDS)}")
            if k in options:
                options[k].update(coerce(k, v or {}))
            else:
                values[k] = coerce(k, v)
    return RunConfig(**values, **options)


def parse_opt(text: str) -> tuple:
    """``key=value`` with a YAML-typed value (``--opt update_interval=50``)."""
    if "=" not in text:
        raise ValueError(f"--opt expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key:
        raise ValueError(f"--opt expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _choice(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def method_fields(method: str, structure: Optional[str] = None) -> Dict[str, Any]:
    """Config fields of the class that runs ``method`` with ``structure``."""
    from ..methods.base import method_class

    cls = method_class(method, structure)
    return {f.name: f for f in dataclasses.fields(cls.Config)}


def data_seed(cfg: RunConfig) -> int:
    """The seed the dataset is generated/split with: ``data_seed`` or the canonical one."""
    return cfg.data_seed if cfg.data_seed is not None else CANONICAL_DATA_SEEDS.get(cfg.data, 0)


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value before anything is built; raise ValueError/FileNotFoundError."""
    from ..methods import METHODS
    from . import data as data_mod
    from . import models as models_mod

    METHODS.get(cfg.method)  # unknown method -> "unknown method 'x'; allowed: ..."
    allowed = method_fields(cfg.method, cfg.structure)
    for k in cfg.method_options:
        if k in HARNESS_METHOD_KEYS:
            raise ValueError(
                f"method option {k!r} is set by the run itself; use the top-level option "
                f"--{k.replace('_', '-')} instead of --opt {k}=..."
            )
        if k not in allowed:
            options = sorted(set(allowed) - set(HARNESS_METHOD_KEYS))
            raise ValueError(f"unknown option {k!r} for method '{cfg.method}'; allowed: {options} "
                             f"(with structure '{cfg.structure}')")
    cfg.method_options = check_method_options(cfg.method, cfg.structure, cfg.method_options)
    if not cfg.model.startswith("tv:"):
        models_mod.MODELS.get(cfg.model)
    data_mod.DATASETS.get(cfg.data)
    data_mod.check_options(cfg.data, cfg.data_options)
    if cfg.synthetic is not None and cfg.data != "synthetic":
        raise ValueError(f"synthetic options only apply to data 'synthetic', not {cfg.data!r}")
    from ..distributions import DISTRIBUTIONS
    if cfg.distribution is not None:
        _choice("distribution", cfg.distribution, DISTRIBUTIONS)
    if not (0 < cfg.density <= 1):
        raise ValueError(f"density must be in (0, 1], got {cfg.density}")
    for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum", "log_every",
                 "eval_every", "checkpoint_every", "lr_step_size"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {cfg.num_workers}")
    if cfg.data_seed is not None and cfg.data_seed < 0:
        raise ValueError(f"data_seed must be >= 0, got {cfg.data_seed}")
    if cfg.pretrained_epochs is not None:
        if cfg.pretrained_epochs < 0:
            raise ValueError(f"pretrained_epochs must be >= 0, got {cfg.pretrained_epochs}")
        if cfg.pretrained is None:
            raise ValueError("pretrained_epochs needs pretrained (the checkpoint those epochs produced)")
    if cfg.fsdp:
        from ..methods.base import method_class

        if "channel" in method_class(cfg.method, cfg.structure).structures:
            raise ValueError(f"fsdp cannot shard method '{cfg.method}' with structure '{cfg.structure}' "
                             "(channel methods slim whole channels); with fsdp use an unstructured or N:M "
                             "method, or train the channel method with DDP (no --fsdp)")
    if not cfg.dist_timeout > 0:
        raise ValueError(f"dist_timeout must be a positive number of seconds, got {cfg.dist_timeout}")
    if cfg.threads is not None and cfg.threads <= 0:
        raise ValueError(f"threads must be a positive integer, got {cfg.threads}")
    if cfg.image_size is not None and cfg.image_size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {cfg.image_size}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    for name in ("momentum", "weight_decay", "warmup_epochs"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if not 0 < cfg.lr_gamma <= 1:
        raise ValueError(f"lr_gamma must be in (0, 1], got {cfg.lr_gamma}")
    if not 0 <= cfg.label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.warmup_epochs >= cfg.epochs:
        raise ValueError(f"warmup_epochs ({cfg.warmup_epochs}) must be less than epochs ({cfg.epochs})")
    if cfg.schedule == "warmup-cosine" and cfg.warmup_epochs <= 0:
        raise ValueError("schedule warmup-cosine needs warmup_epochs > 0")
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("schedule", cfg.schedule, SCHEDULES)
    if cfg.device not in DEVICES and not cfg.device.startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, cuda:N; got {cfg.device!r}")
    if cfg.pretrained is not None and not Path(cfg.pretrained).is_file():
        raise FileNotFoundError(f"pretrained checkpoint {cfg.pretrained} does not exist")
    if cfg.data_root is not None and not Path(cfg.data_root).exists():
        raise FileNotFoundError(f"data_root {cfg.data_root} does not exist")
    return cfg


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def coerce_option(value: Any, hint: Any) -> Any:
    """``value`` (from YAML or ``--opt KEY=VALUE``) as the type ``hint`` of a Config field:
    int, float, bool, str, Optional[...], Tuple[...] (lists stay lists). ValueError says why."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        reasons = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_option(value, arg)
            except ValueError as e:
                reasons.append(str(e))
        raise ValueError("; ".join(reasons))
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError("expected a list")
        inner = args[0] if args else Any
        for v in value:
            coerce_option(v, inner)
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError("expected true or false")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ValueError(f"expected {hint.__name__}") from None
        if not isinstance(number, (int, float)):
            raise ValueError(f"expected {hint.__name__}")
        if hint is int:
            if not float(number).is_integer():
                raise ValueError("expected an integer")
            return int(number)
        return float(number)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    return value   # any other type: the method's own validation checks it


def check_method_options(method: str, structure: Optional[str], options: Dict[str, Any]) -> Dict[str, Any]:
    """Check each method option against the type of its field in the method's Config
    (``--opt alpha=abc`` -> "method option 'alpha' of 'rigl' must be float, got 'abc'");
    return the options with YAML strings such as ``1e-3`` converted to the field's type."""
    from ..methods.base import method_class

    cls = method_class(method, structure)
    hints = typing.get_type_hints(cls.Config)
    out = dict(options)
    for k, v in options.items():
        hint = hints.get(k)
        if hint is None:
            continue  # unknown options are named by validate()
        if isinstance(v, str) and k in ("include", "exclude"):
            continue  # one pattern stands for a one-element tuple
        try:
            out[k] = coerce_option(v, hint)
        except ValueError as e:
            raise ValueError(f"method option {k!r} of '{method}' must be {_type_name(hint)}, got {v!r} ({e})") from None
    return out


# Fields that say how or where a run executes, not what it computes: they may differ
# between a checkpoint and its directory (``resume --device``) and between compare cells.
OPERATIONAL = ("out", "quiet", "device", "threads", "num_workers", "data_root", "eval_batch_size",
               "log_every", "eval_every", "checkpoint_every", "dist_timeout", "compile", "fsdp")


# Fields added after runs were fingerprinted: left out of the identity while they hold
# their default, so the fingerprints of runs made before them stay what they were.
LATER_FIELDS = ("data_options",)  # each empty by default


def identity(cfg: Any) -> Dict[str, Any]:
    """The fields of a resolved config that decide what a run computes."""
    d = cfg.to_dict() if isinstance(cfg, RunConfig) else build(cfg).to_dict()
    return {k: v for k, v in d.items() if k not in OPERATIONAL
            and not (k in LATER_FIELDS and not v)}


def fingerprint(cfg: Any) -> str:
    """A short hash of :func:`identity` (method, model, data, options, schedule, seed, ...)."""
    text = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(a: Any, b: Any) -> Dict[str, tuple]:
    """Fields (of :func:`identity`) whose values differ: name -> (a's, b's)."""
    ia, ib = identity(a), identity(b)
    return {k: (ia.get(k), ib.get(k)) for k in sorted(set(ia) | set(ib))
            if json.dumps(ia.get(k), sort_keys=True, default=str) != json.dumps(ib.get(k), sort_keys=True, default=str)}


def check_stored_data_root(data_root: Optional[str], run_dir: os.PathLike) -> None:
    """A data root read from a run directory someone else may have made: refuse one that
    lies inside that directory (its files would come with the download). Relative roots
    mean the user's working directory, as for every path given on the command line."""
    if data_root is None:
        return
    root = Path(data_root).expanduser().resolve()
    run = Path(run_dir).resolve()
    if root == run or run in root.parents:
        raise ValueError(
            f"data_root {data_root!r} stored in {run_dir} lies inside that run directory; a run "
            f"directory's own files are not trusted as data: pass --data-root DIR naming your copy of the data")


def dump(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def from_dict(d: Dict[str, Any]) -> RunConfig:
    return build(d)
