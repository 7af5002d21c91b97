"""Datasets for the experiment harness, by name: ``load_dataset("mnist1d")``.

Every loader returns a :class:`DatasetBundle` whose datasets yield ``(x, y)``. For
``task="classification"`` ``x`` is a float tensor of shape ``input_shape`` and ``y``
an int64 class index; for ``task="lm"`` (the text datasets ``fortunes`` and ``text``)
``x`` is a block of ``block_size`` int64 byte tokens and ``y`` the same block shifted
by one (next-token targets), with ``num_classes`` = 256, the byte vocabulary.
Nothing is downloaded: generated datasets (``mnist1d``, ``synthetic``) are built in
code, scikit-learn's ``digits`` ships with scikit-learn, ``fortunes`` is read from
Debian's ``fortunes`` package, and every other dataset is read from a directory the
user gives (``root``), with an error naming the path and the expected layout when it
is missing or malformed.

Small datasets are ``TensorDataset``s held in memory and standardised once (zero
mean, unit variance per channel, statistics from the training split), so the
training loop pays no per-item Python transforms. CIFAR and ImageFolder keep
per-item transforms because their training augmentation is random per sample.
"""
from __future__ import annotations

import gzip
import inspect
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..registry import Registry
from .tasks import TASKS

DATASETS: Registry[Callable[..., "DatasetBundle"]] = Registry("dataset")

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FORTUNES_ROOT = "/usr/share/games/fortunes"  # Debian's fortunes package


@dataclass
class DatasetBundle:
    """Train/test datasets plus what a model needs to know about them."""

    train: Dataset
    test: Dataset
    input_shape: Tuple[int, ...]  # (C, *spatial), without the batch dimension
    num_classes: int
    name: str
    # "classification": y is one class per sample; "lm": y is the next token at every
    # position of x (the loop's loss and evaluation follow this, see train/tasks.py)
    task: str = "classification"


def load_dataset(
    name: str,
    root: Optional[str] = None,
    *,
    seed: int = 0,
    augment: bool = True,
    image_size: Optional[int] = None,
    synthetic: Optional[Dict[str, Any]] = None,
    options: Optional[Dict[str, Any]] = None,
) -> DatasetBundle:
    """Load dataset ``name`` (see ``DATASETS.names()``).

    ``root``: directory of file-based datasets (ignored by generated ones).
    ``seed``: seeds everything random about the data itself (MNIST-1D generation,
    the digits train/test split, synthetic samples); data order is the loader's job.
    ``augment``: standard training augmentation where the dataset has one (CIFAR,
    ImageFolder). ``image_size``: side length to resize 2-D images to.
    ``synthetic``: options of the ``synthetic`` dataset (see :func:`_synthetic`).
    ``options``: options of the text datasets (``block_size``, ``val_fraction``; see
    ``TEXT_DEFAULTS``).
    """
    loader = DATASETS.get(name)
    if synthetic is not None and name != "synthetic":
        raise ValueError(f"the synthetic option only applies to data 'synthetic', not '{name}'")
    takes_options = check_options(name, options)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size <= 0):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    extra = {"options": dict(options or {})} if takes_options else {}
    bundle = loader(root=None if root is None else Path(root), seed=int(seed), augment=bool(augment),
                    image_size=image_size, synthetic=synthetic, **extra)
    assert bundle.task in TASKS, bundle.task
    return bundle


def _takes_options(name: str) -> bool:
    return "options" in inspect.signature(DATASETS.get(name)).parameters


def check_options(name: str, options: Optional[Dict[str, Any]]) -> bool:
    """Check ``options`` (``data_options``) for dataset ``name``; return whether it takes any."""
    if not _takes_options(name):
        if options:
            with_options = [n for n in DATASETS.names() if _takes_options(n)]
            raise ValueError(f"data options {sorted(options)} do not apply to data '{name}'; only the text "
                             f"datasets ({', '.join(with_options)}) take options")
        return False
    _text_options(options, name)
    return True


# ----------------------------------------------------------------------------- helpers


def _standardise(train_x: torch.Tensor, test_x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel zero mean / unit variance with the training split's statistics."""
    dims = [0] + list(range(2, train_x.dim()))
    mean = train_x.mean(dim=dims, keepdim=True, dtype=torch.float64)
    std = train_x.double().std(dim=dims, keepdim=True, correction=0).clamp_min(1e-12)
    norm = lambda x: ((x.double() - mean) / std).float()  # noqa: E731
    return norm(train_x), norm(test_x)


def _resize_images(x: torch.Tensor, image_size: Optional[int], name: str) -> torch.Tensor:
    """Resize an (N, C, H, W) float batch once, in memory (no per-item transform)."""
    if image_size is None:
        return x
    if x.dim() != 4:
        raise ValueError(f"image_size only applies to 2-D image datasets; '{name}' is 1-D")
    if tuple(x.shape[-2:]) == (image_size, image_size):
        return x
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                         antialias=True)


def _tensor_bundle(name: str, train_x, train_y, test_x, test_y, num_classes: int,
                   image_size: Optional[int] = None) -> DatasetBundle:
    train_x = _resize_images(torch.as_tensor(train_x, dtype=torch.float32), image_size, name)
    test_x = _resize_images(torch.as_tensor(test_x, dtype=torch.float32), image_size, name)
    train_x, test_x = _standardise(train_x, test_x)
    train_y = torch.as_tensor(train_y, dtype=torch.int64)
    test_y = torch.as_tensor(test_y, dtype=torch.int64)
    return DatasetBundle(TensorDataset(train_x, train_y), TensorDataset(test_x, test_y),
                         tuple(train_x.shape[1:]), num_classes, name)


def _require_root(root: Optional[Path], name: str, layout: str) -> Path:
    if root is None:
        raise ValueError(f"data '{name}' needs a data root (root=/--data-root) holding {layout}")
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} for '{name}' is not a directory; expected {layout}")
    return root


# ----------------------------------------------------------------------------- generated


@DATASETS.register("mnist1d")
def _mnist1d(*, seed: int, image_size: Optional[int], **_: Any) -> DatasetBundle:
    """MNIST-1D (Greydanus 2020): 4000/1000 sequences of length 40, 10 classes.

    Generated offline by the ``mnist1d`` package with its default arguments except
    the generation seed, which is ``seed``.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    if image_size is not None:
        raise ValueError("image_size only applies to 2-D image datasets; 'mnist1d' is 1-D (length 40)")
    args = get_dataset_args()
    args.seed = seed
    # make_dataset seeds numpy's and Python's global generators; put them back so
    # loading data never changes anyone else's random stream.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return _tensor_bundle("mnist1d", d["x"][:, None, :], d["y"], d["x_test"][:, None, :], d["y_test"], 10)


def _with_defaults(defaults: Dict[str, Any], given: Optional[Dict[str, Any]], what: str,
                   where: str = "") -> Dict[str, Any]:
    """``defaults`` updated with ``given``; unknown keys are a ValueError naming the allowed ones."""
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}{where}; allowed: {sorted(defaults)}")
    return {**defaults, **(given or {})}


SYNTHETIC_DEFAULTS: Dict[str, Any] = {
    "shape": (3, 32, 32), "num_classes": 10, "train_size": 512, "test_size": 256, "noise": 1.0,
}


@DATASETS.register("synthetic")
def _synthetic(*, seed: int, synthetic: Optional[Dict[str, Any]], image_size: Optional[int],
               **_: Any) -> DatasetBundle:
    """Random but learnable data for tests and speed runs.

    Each class has a smooth random prototype (Gaussian noise drawn at a quarter of
    the resolution and upsampled); a sample is its class prototype plus
    ``noise`` x N(0, 1) per entry. Options (``synthetic`` dict): ``shape`` (C, *spatial)
    with 1 or 2 spatial dims, ``num_classes``, ``train_size``, ``test_size``, ``noise``;
    defaults in ``SYNTHETIC_DEFAULTS``. Deterministic in ``seed``.
    """
    opts = _with_defaults(SYNTHETIC_DEFAULTS, synthetic, "synthetic option(s)")
    shape = tuple(opts["shape"]) if isinstance(opts["shape"], (list, tuple)) else None
    if (shape is None or len(shape) not in (2, 3)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"synthetic shape must be (C, L) or (C, H, W) of positive ints, got {opts['shape']!r}")
    if image_size is not None:
        if len(shape) != 3:
            raise ValueError("image_size only applies to 2-D image datasets; this synthetic data is 1-D")
        shape = (shape[0], image_size, image_size)
    for key in ("num_classes", "train_size", "test_size"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if key == "num_classes" else 1):
            lo = 2 if key == "num_classes" else 1
            raise ValueError(f"synthetic {key} must be an integer >= {lo}, got {v!r}")
    noise = opts["noise"]
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise ValueError(f"synthetic noise must be a number >= 0, got {noise!r}")

    gen = torch.Generator().manual_seed(seed)
    c, spatial, k = shape[0], shape[1:], opts["num_classes"]
    coarse = tuple(max(1, s // 4) for s in spatial)
    protos = torch.randn((k, c) + coarse, generator=gen)
    mode = "linear" if len(spatial) == 1 else "bilinear"
    protos = F.interpolate(protos, size=spatial, mode=mode, align_corners=False)

    def split(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
        return protos[y] + float(noise) * torch.randn((n,) + shape, generator=gen), y

    (tx, ty), (vx, vy) = split(opts["train_size"]), split(opts["test_size"])
    return _tensor_bundle("synthetic", tx, ty, vx, vy, k)


@DATASETS.register("digits")
def _digits(*, seed: int, image_size: Optional[int], **_: Any) -> DatasetBundle:
    """scikit-learn's handwritten digits (UCI, 1797 8x8 images, 10 classes).

    There is no official split: a stratified 80/20 split drawn from ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), values 0..16
    tx, vx, ty, vy = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=seed)
    return _tensor_bundle("digits", tx, ty, vx, vy, 10, image_size)


# ----------------------------------------------------------------------------- idx (MNIST-style)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_LAYOUT = ", ".join(f"{f}[.gz]" for f in _IDX_FILES.values())


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte idx file (LeCun's MNIST format), gzipped or raw."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these on truncated/non-gzip files
        raise ValueError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: idx data type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(f"{path}: idx header says shape {dims} ({expected} bytes) but the file holds "
                         f"{len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str, subdir: str) -> Optional[Path]:
    # Accept the plain Debian/LeCun names, their gzips, the "train-images.idx3-ubyte"
    # spelling of some mirrors, and torchvision's <root>/<Name>/raw layout.
    dotted = stem.replace("-idx", ".idx")
    for d in (root, root / "raw", root / subdir / "raw"):
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _load_idx_dataset(name: str, root: Path, subdir: str, image_size: Optional[int]) -> DatasetBundle:
    layout = f"the idx files {_IDX_LAYOUT}"
    root = _require_root(root, name, layout)
    found = {k: _find_idx(root, stem, subdir) for k, stem in _IDX_FILES.items()}
    missing = [_IDX_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"data '{name}': {root} lacks {', '.join(m + '[.gz]' for m in missing)}; expected {layout} "
            f"directly under it (or under raw/ or {subdir}/raw/)")
    arrays = {k: read_idx(p) for k, p in found.items()}
    for split in ("train", "test"):
        ims, labs = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if ims.ndim != 3 or labs.ndim != 1:
            raise ValueError(f"{found[split + '_images']} must be 3-D images and {found[split + '_labels']} "
                             f"1-D labels; got shapes {ims.shape} and {labs.shape}")
        if len(ims) != len(labs):
            raise ValueError(f"{found[split + '_images']} holds {len(ims)} images but "
                             f"{found[split + '_labels']} holds {len(labs)} labels")
        if labs.size and labs.max() >= 10:
            raise ValueError(f"{found[split + '_labels']}: label {int(labs.max())} outside 0..9")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(f"data '{name}': train images {arrays['train_images'].shape[1:]} and test images "
                         f"{arrays['test_images'].shape[1:]} differ in size")
    as_float = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    return _tensor_bundle(name, as_float(arrays["train_images"]), arrays["train_labels"].astype(np.int64),
                          as_float(arrays["test_images"]), arrays["test_labels"].astype(np.int64), 10,
                          image_size)


@DATASETS.register("fashion-mnist")
def _fashion_mnist(*, root: Optional[Path], image_size: Optional[int], **_: Any) -> DatasetBundle:
    """Fashion-MNIST (Xiao et al. 2017) from idx files; default root is where Debian's
    ``dataset-fashion-mnist`` package installs them."""
    return _load_idx_dataset("fashion-mnist", root or Path(FASHION_MNIST_ROOT), "FashionMNIST", image_size)


@DATASETS.register("mnist")
def _mnist(*, root: Optional[Path], image_size: Optional[int], **_: Any) -> DatasetBundle:
    """MNIST (LeCun et al. 1998) from the four idx files under ``root``."""
    return _load_idx_dataset("mnist", root, "MNIST", image_size)


# ----------------------------------------------------------------------------- CIFAR


class ImageTensorDataset(Dataset):
    """uint8 (N, C, H, W) images in memory; per item: optional random crop (zero
    padding ``pad``) + horizontal flip, optional resize, then normalisation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], augment: bool, pad: int = 4, image_size: Optional[int] = None):
        assert images.dtype == torch.uint8 and images.dim() == 4
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment, self.pad, self.image_size = augment, pad, image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.augment:
            h, w = x.shape[-2:]
            x = F.pad(x, (self.pad,) * 4)  # zero (black) padding, as torchvision's RandomCrop
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = x[:, dy:dy + h, dx:dx + w]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        x = x.float().div_(255.0)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size,) * 2:
            x = F.interpolate(x[None], size=(self.image_size,) * 2, mode="bilinear",
                              align_corners=False, antialias=True)[0]
        return (x - self.mean) / self.std, self.labels[i]


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR python batch is made of: dicts, lists, strings and
    numbers (no global needed), numpy arrays, dtypes and scalars, and the bytes codec
    protocol-2 pickles use. Any other global (``os.system``, ``builtins.eval``, a class
    to construct) is refused before it is looked up, so a planted file runs no code."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global '{module}.{name}' (only numpy arrays and "
                                         "plain values are allowed in a CIFAR batch)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """One CIFAR python batch, read through :class:`_CifarUnpickler` (never plain
    ``pickle.load``: the data root may come from someone else)."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError) as e:
        raise ValueError(f"{path} is not a CIFAR python pickle batch: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR python pickle batch (holds a {type(d).__name__})")
    for k, v in d.items():
        if isinstance(v, np.ndarray) and v.dtype.hasobject:
            raise ValueError(f"{path}: entry {k!r} is an object array; a CIFAR batch holds numbers")
    return d


def _load_cifar(name: str, root: Optional[Path], augment: bool, image_size: Optional[int]) -> DatasetBundle:
    folder, train_files, test_files, meta_file, label_key, names_key = _CIFAR[name]
    layout = f"{folder}/ with {', '.join(train_files + test_files + [meta_file])} (torchvision's layout)"
    root = _require_root(root, name, layout)
    base = root / folder if (root / folder).is_dir() else root  # also accept the folder itself
    missing = [f for f in train_files + test_files + [meta_file] if not (base / f).is_file()]
    if missing:
        raise FileNotFoundError(f"data '{name}': {base} lacks {', '.join(missing)}; expected {root}/{layout}")
    meta = _unpickle(base / meta_file)
    if names_key not in meta:
        raise ValueError(f"{base / meta_file} has no '{names_key}' entry")
    num_classes = len(meta[names_key])

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(base / f)
            if "data" not in d or label_key not in d:
                raise ValueError(f"{base / f} lacks the 'data' and '{label_key}' entries of a CIFAR batch")
            x = np.asarray(d["data"], dtype=np.uint8)
            if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(d[label_key]):
                raise ValueError(f"{base / f}: expected data of shape (N, 3072) and N labels, got "
                                 f"{x.shape} and {len(d[label_key])} labels")
            xs.append(x)
            ys.extend(d[label_key])
        y = torch.tensor(ys, dtype=torch.int64)
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"data '{name}': labels outside 0..{num_classes - 1} in {base}")
        return torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32)), y

    (tx, ty), (vx, vy) = read(train_files), read(test_files)
    # Per-channel statistics of the training images, accumulated in chunks to bound memory.
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    for chunk in tx.split(4096):
        c = chunk.double().div_(255.0)
        s += c.sum(dim=(0, 2, 3))
        s2 += c.square().sum(dim=(0, 2, 3))
    n = tx.shape[0] * 32 * 32
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    size = image_size or 32
    train = ImageTensorDataset(tx, ty, mean.tolist(), std.tolist(), augment, image_size=image_size)
    test = ImageTensorDataset(vx, vy, mean.tolist(), std.tolist(), False, image_size=image_size)
    return DatasetBundle(train, test, (3, size, size), num_classes, name)


@DATASETS.register("cifar10")
def _cifar10(*, root: Optional[Path], augment: bool, image_size: Optional[int], **_: Any) -> DatasetBundle:
    """CIFAR-10 (Krizhevsky 2009) from torchvision's on-disk python batches under ``root``;
    training augmentation: random crop 32 with 4-pixel zero padding + horizontal flip."""
    return _load_cifar("cifar10", root, augment, image_size)


@DATASETS.register("cifar100")
def _cifar100(*, root: Optional[Path], augment: bool, image_size: Optional[int], **_: Any) -> DatasetBundle:
    """CIFAR-100 (Krizhevsky 2009), fine labels; same layout rules and augmentation as CIFAR-10."""
    return _load_cifar("cifar100", root, augment, image_size)


# ----------------------------------------------------------------------------- ImageFolder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@DATASETS.register("imagefolder")
def _imagefolder(*, root: Optional[Path], augment: bool, image_size: Optional[int], **_: Any) -> DatasetBundle:
    """ImageNet-style folders: ``root/train/<class>/*`` and ``root/val|test/<class>/*``.

    Training: RandomResizedCrop(image_size) + horizontal flip when ``augment``;
    evaluation: resize to image_size / 0.875 then CenterCrop(image_size) (the
    standard 224/256 protocol). ``image_size`` defaults to 224. ImageNet mean/std.
    """
    from torchvision import datasets, transforms

    layout = "train/<class>/<images> and val/<class>/<images> (or test/)"
    root = _require_root(root, "imagefolder", layout)
    train_dir = root / "train"
    eval_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or eval_dir is None:
        missing = [d for d, ok in (("train/", train_dir.is_dir()), ("val/ or test/", eval_dir is not None)) if not ok]
        raise FileNotFoundError(f"data 'imagefolder': {root} lacks {' and '.join(missing)}; expected {layout}")
    size = image_size or 224
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if augment:
        train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), norm])
    else:
        train_tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                       transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(int(round(size / 0.875))), transforms.CenterCrop(size),
                                  transforms.ToTensor(), norm])
    try:
        train = datasets.ImageFolder(str(train_dir), transform=train_tf)
        test = datasets.ImageFolder(str(eval_dir), transform=eval_tf)
    except FileNotFoundError as e:  # raised for empty class folders / no images
        raise FileNotFoundError(f"data 'imagefolder': {e}; expected {layout} under {root}") from None
    if train.classes != test.classes:
        raise ValueError(f"data 'imagefolder': class folders differ between {train_dir} ({len(train.classes)}) "
                         f"and {eval_dir} ({len(test.classes)}); they must hold the same class names")
    return DatasetBundle(train, test, (3, size, size), len(train.classes), "imagefolder")


# ----------------------------------------------------------------------------- text (language modelling)

TEXT_DEFAULTS: Dict[str, Any] = {"block_size": 128, "val_fraction": 0.1}
VOCAB_SIZE = 256  # byte-level tokens: nothing to train or download, any text encodes


def _text_options(options: Optional[Dict[str, Any]], name: str) -> Tuple[int, float]:
    opts = _with_defaults(TEXT_DEFAULTS, options, "data option(s)", f" for '{name}'")
    block, frac = opts["block_size"], opts["val_fraction"]
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"data option block_size must be a positive integer, got {block!r}")
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ValueError(f"data option val_fraction must be a number in (0, 1), got {frac!r}")
    return block, float(frac)


def _blocks(stream: bytes, block: int, what: str) -> TensorDataset:
    """Non-overlapping blocks of ``block`` byte tokens and their next-token targets."""
    n = (len(stream) - 1) // block
    if n < 1:
        raise ValueError(f"{what} holds {len(stream)} bytes, fewer than one block of block_size + 1 = "
                         f"{block + 1}; lower the data option block_size or use more text")
    t = torch.frombuffer(bytearray(stream[:n * block + 1]), dtype=torch.uint8).long()
    return TensorDataset(t[:-1].view(n, block), t[1:].view(n, block))


def _lm_bundle(name: str, train: bytes, val: bytes, block: int) -> DatasetBundle:
    return DatasetBundle(_blocks(train, block, f"the training split of '{name}'"),
                         _blocks(val, block, f"the validation split of '{name}'"),
                         (block,), VOCAB_SIZE, name, task="lm")


FORTUNE_SEPARATOR = re.compile(rb"^%\n", re.MULTILINE)


def fortune_files(root: Path) -> list:
    """The fortune files of a fortune directory: regular files whose name has no suffix
    (``literature``, not its ``literature.dat`` index; Debian's ``*.u8`` are symlinks)."""
    return sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix)


@DATASETS.register("fortunes")
def _fortunes(*, root: Optional[Path], seed: int, options: Dict[str, Any], **_: Any) -> DatasetBundle:
    """English text for language modelling: the fortune-cookie files of Debian's ``fortunes``
    package (``apt-get install fortunes``: quotations, literature, jokes, definitions,
    computing lore; about 2.6 MB in 50 files, BSD licence), byte-level tokens.

    A file is records separated by lines holding a single ``%``. The records of every
    file are pooled and split by a permutation drawn from ``seed``: the last
    ``val_fraction`` of them are the validation split, so both splits hold every kind of
    text. Each split is its records joined with the ``%`` lines, cut into non-overlapping
    blocks of ``block_size`` tokens (the last partial block is dropped). ``root`` is a
    directory in the same format (default: where the Debian package installs them).
    """
    block, frac = _text_options(options, "fortunes")
    base = root or Path(FORTUNES_ROOT)
    if not base.is_dir():
        hint = ("install Debian's fortunes package (apt-get install fortunes) or pass a directory of "
                "fortune files as the data root") if root is None else "expected a directory of fortune files"
        raise FileNotFoundError(f"data 'fortunes': {base} is not a directory; {hint}")
    files = fortune_files(base)
    records = [r for f in files for r in FORTUNE_SEPARATOR.split(f.read_bytes()) if r.strip()]
    if len(records) < 2:
        raise FileNotFoundError(f"data 'fortunes': {base} holds {len(records)} fortune record(s) in "
                                f"{len(files)} file(s); expected files of records separated by '%' lines "
                                "(Debian's fortunes package: apt-get install fortunes)")
    records = [r if r.endswith(b"\n") else r + b"\n" for r in records]
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(records) - 1, max(1, round(frac * len(records))))
    join = lambda idx: b"".join(records[i] + b"%\n" for i in idx)  # noqa: E731
    return _lm_bundle("fortunes", join(order[:-n_val]), join(order[-n_val:]), block)


@DATASETS.register("text")
def _text(*, root: Optional[Path], options: Dict[str, Any], **_: Any) -> DatasetBundle:
    """Your own text for language modelling, byte-level tokens: ``root`` is a text file,
    or a directory whose ``*.txt`` files are read in name order and concatenated. The
    first 1 − ``val_fraction`` of the bytes train, the rest validate (the split of
    character-level LM benchmarks such as tiny-shakespeare)."""
    block, frac = _text_options(options, "text")
    if root is None:
        raise ValueError("data 'text' needs a data root (root=/--data-root): a text file or a directory of *.txt files")
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(root.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"data 'text': {root} holds no *.txt files")
    else:
        raise FileNotFoundError(f"data 'text': {root} is neither a file nor a directory")
    stream = b"".join(f.read_bytes() for f in files)
    cut = int(round(len(stream) * (1 - frac)))
    return _lm_bundle("text", stream[:cut], stream[cut:], block)
