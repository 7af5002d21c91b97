"""Tests for regrow.train.data: every dataset on tiny/fake data, determinism, errors."""
import gzip
import pickle
import random
import re
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from regrow.train import data as D
from regrow.train.data import DATASETS, DatasetBundle, load_dataset, read_idx


def test_registry_names():
    assert set(DATASETS.names()) == {"mnist1d", "digits", "fashion-mnist", "mnist", "cifar10", "cifar100",
                                     "imagefolder", "synthetic", "fortunes", "text"}


def test_unknown_dataset_lists_allowed_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*allowed:.*cifar10.*mnist1d"):
        load_dataset("imagenet")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_image_size(bad):
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        load_dataset("digits", image_size=bad)


def test_synthetic_option_only_for_synthetic():
    with pytest.raises(ValueError, match="synthetic option only applies"):
        load_dataset("digits", synthetic={"shape": (1, 8)})


# ----------------------------------------------------------------------------- mnist1d


@pytest.fixture(scope="module")
def mnist1d_seed0():
    return load_dataset("mnist1d", seed=0)


def test_mnist1d_shapes_and_standardisation(mnist1d_seed0):
    b = mnist1d_seed0
    assert isinstance(b, DatasetBundle) and b.name == "mnist1d"
    assert b.input_shape == (1, 40) and b.num_classes == 10
    assert isinstance(b.train, TensorDataset) and len(b.train) == 4000 and len(b.test) == 1000
    x, y = b.train[0]
    assert x.shape == (1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    tx, ty = b.train.tensors
    assert abs(tx.double().mean().item()) < 1e-6 and abs(tx.double().std(correction=0).item() - 1) < 1e-5
    assert set(ty.tolist()) == set(range(10))


def test_mnist1d_deterministic_in_seed_and_leaves_global_rngs_alone(mnist1d_seed0):
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    again = load_dataset("mnist1d", seed=0)
    assert np.random.rand() == expect_np and random.random() == expect_py
    assert torch.equal(again.train.tensors[0], mnist1d_seed0.train.tensors[0])
    assert torch.equal(again.test.tensors[1], mnist1d_seed0.test.tensors[1])
    other = load_dataset("mnist1d", seed=1)
    assert not torch.equal(other.train.tensors[0], mnist1d_seed0.train.tensors[0])


def test_mnist1d_refuses_image_size():
    with pytest.raises(ValueError, match="1-D"):
        load_dataset("mnist1d", image_size=32)


# ----------------------------------------------------------------------------- digits


def test_digits_split_shapes_determinism_and_resize():
    b = load_dataset("digits", seed=3)
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    assert len(b.train) + len(b.test) == 1797 and len(b.test) == 360
    counts = torch.bincount(b.test.tensors[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    assert torch.equal(load_dataset("digits", seed=3).train.tensors[0], b.train.tensors[0])
    assert not torch.equal(load_dataset("digits", seed=4).train.tensors[1], b.train.tensors[1])
    big = load_dataset("digits", seed=3, image_size=16)
    assert big.input_shape == (1, 16, 16) and big.train.tensors[0].shape == (len(b.train), 1, 16, 16)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_defaults_and_determinism():
    b = load_dataset("synthetic", seed=5)
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10
    assert len(b.train) == 512 and len(b.test) == 256
    assert torch.bincount(b.train.tensors[1]).tolist() == [52] * 2 + [51] * 8  # balanced classes
    assert torch.equal(load_dataset("synthetic", seed=5).test.tensors[0], b.test.tensors[0])
    assert not torch.equal(load_dataset("synthetic", seed=6).test.tensors[0], b.test.tensors[0])


@pytest.mark.parametrize("shape", [(2, 24), (1, 12, 10)])
def test_synthetic_is_learnable(shape):
    """A nearest-class-mean classifier fitted on train must beat chance by far on test."""
    b = load_dataset("synthetic", seed=0, synthetic={"shape": shape, "num_classes": 4, "train_size": 200,
                                                     "test_size": 100, "noise": 1.0})
    assert b.input_shape == shape and b.num_classes == 4
    tx, ty = b.train.tensors
    vx, vy = b.test.tensors
    means = torch.stack([tx[ty == k].flatten(1).mean(0) for k in range(4)])
    pred = torch.cdist(vx.flatten(1), means).argmin(1)
    assert (pred == vy).float().mean() > 0.9


def test_synthetic_image_size_overrides_spatial():
    b = load_dataset("synthetic", image_size=8, synthetic={"shape": (3, 32, 32), "train_size": 4, "test_size": 2})
    assert b.input_shape == (3, 8, 8) and b.train[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize("opts,match", [
    ({"colour": 1}, r"unknown synthetic option\(s\) \['colour'\]; allowed: \['noise', 'num_classes'"),
    ({"shape": (3,)}, "synthetic shape must be"),
    ({"shape": (1, 2, 3, 4)}, "synthetic shape must be"),
    ({"shape": (0, 8)}, "synthetic shape must be"),
    ({"num_classes": 1}, "num_classes must be an integer >= 2"),
    ({"train_size": 0}, "train_size must be an integer >= 1"),
    ({"noise": -1}, "noise must be a number >= 0"),
])
def test_synthetic_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("synthetic", synthetic=opts)


# ----------------------------------------------------------------------------- idx files


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def _write_idx(path, arr, gz=False):
    raw = _idx_bytes(arr)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


# 4 train images 2x2: half the pixels 0, half 255 -> mean 0.5, std 0.5 (population),
# so standardised train pixels are exactly -1 / +1. Test pixel 51/255 = 0.2 -> -0.6.
TRAIN_IMG = np.array([[[0, 255], [255, 0]], [[255, 255], [0, 0]], [[0, 0], [255, 255]], [[255, 0], [0, 255]]])
TRAIN_LAB = np.array([3, 1, 4, 1])
TEST_IMG = np.array([[[51, 255], [0, 0]], [[0, 0], [0, 255]]])
TEST_LAB = np.array([9, 2])


def _write_mnist(d, gz=False, dotted=False):
    d.mkdir(parents=True, exist_ok=True)
    files = {"train-images-idx3-ubyte": TRAIN_IMG, "train-labels-idx1-ubyte": TRAIN_LAB,
             "t10k-images-idx3-ubyte": TEST_IMG, "t10k-labels-idx1-ubyte": TEST_LAB}
    for name, arr in files.items():
        if dotted:
            name = name.replace("-idx", ".idx")
        _write_idx(d / (name + (".gz" if gz else "")), arr, gz)
    return d


def test_read_idx_roundtrip_raw_and_gz(tmp_path):
    _write_idx(tmp_path / "a", TRAIN_IMG)
    _write_idx(tmp_path / "b.gz", TRAIN_LAB, gz=True)
    assert np.array_equal(read_idx(tmp_path / "a"), TRAIN_IMG)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), TRAIN_LAB)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_golden_values(tmp_path, gz):
    b = load_dataset("mnist", root=str(_write_mnist(tmp_path, gz=gz)))
    assert b.input_shape == (1, 2, 2) and b.num_classes == 10 and len(b.train) == 4 and len(b.test) == 2
    tx, ty = b.train.tensors
    assert torch.equal(tx, torch.tensor(TRAIN_IMG / 127.5 - 1.0, dtype=torch.float32)[:, None])
    assert ty.tolist() == [3, 1, 4, 1] and ty.dtype == torch.int64
    x, y = b.test[0]
    assert torch.allclose(x, torch.tensor([[[-0.6, 1.0], [-1.0, -1.0]]]), atol=1e-6) and int(y) == 9


@pytest.mark.parametrize("sub", ["", "raw", "FashionMNIST/raw"])
def test_fashion_mnist_layouts(tmp_path, sub):
    _write_mnist(tmp_path / sub if sub else tmp_path, gz=True, dotted=(sub == "raw"))
    b = load_dataset("fashion-mnist", root=str(tmp_path))
    assert b.name == "fashion-mnist" and b.test.tensors[1].tolist() == [9, 2]


def test_fashion_mnist_default_root_is_debian_path(tmp_path, monkeypatch):
    assert D.FASHION_MNIST_ROOT == "/usr/share/datasets/fashion-mnist"
    monkeypatch.setattr(D, "FASHION_MNIST_ROOT", str(_write_mnist(tmp_path / "deb", gz=True)))
    assert len(load_dataset("fashion-mnist").train) == 4
    monkeypatch.setattr(D, "FASHION_MNIST_ROOT", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="absent"):
        load_dataset("fashion-mnist")


def test_idx_image_size(tmp_path):
    b = load_dataset("mnist", root=str(_write_mnist(tmp_path)), image_size=4)
    assert b.input_shape == (1, 4, 4) and b.test[1][0].shape == (1, 4, 4)


def test_mnist_needs_root():
    with pytest.raises(ValueError, match="data 'mnist' needs a data root.*train-images-idx3-ubyte"):
        load_dataset("mnist")


def test_idx_missing_files_named(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} lacks t10k-labels-idx1-ubyte[.gz]; expected")):
        load_dataset("mnist", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.*is not a directory"):
        load_dataset("mnist", root=str(tmp_path / "nope"))


def test_idx_malformed_files_named(tmp_path):
    d = _write_mnist(tmp_path / "magic")
    (d / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is not an idx file"):
        load_dataset("mnist", root=str(d))

    d = _write_mnist(tmp_path / "short")
    (d / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(TEST_IMG)[:-1])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: idx header says shape \(2, 2, 2\)"):
        load_dataset("mnist", root=str(d))

    d = _write_mnist(tmp_path / "count")
    _write_idx(d / "train-labels-idx1-ubyte", TRAIN_LAB[:3])
    with pytest.raises(ValueError, match="holds 4 images but .*train-labels-idx1-ubyte holds 3 labels"):
        load_dataset("mnist", root=str(d))

    d = _write_mnist(tmp_path / "label")
    _write_idx(d / "t10k-labels-idx1-ubyte", np.array([1, 12]))
    with pytest.raises(ValueError, match="label 12 outside 0..9"):
        load_dataset("mnist", root=str(d))

    d = _write_mnist(tmp_path / "gz")
    (d / "train-images-idx3-ubyte").unlink()
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read idx file .*train-images-idx3-ubyte.gz"):
        load_dataset("mnist", root=str(d))


# ----------------------------------------------------------------------------- CIFAR


def _write_cifar(root, name, n_per_file=2, num_classes=10):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        files, label_key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
        meta_name, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(num_classes)]}
    else:
        d = root / "cifar-100-python"
        files, label_key = ["train", "test"], "fine_labels"
        meta_name, meta = "meta", {"fine_label_names": [f"c{i}" for i in range(num_classes)]}
    d.mkdir(parents=True)
    for f in files:
        batch = {"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8),
                 label_key: rng.integers(0, num_classes, n_per_file).tolist()}
        (d / f).write_bytes(pickle.dumps(batch))
    (d / meta_name).write_bytes(pickle.dumps(meta))
    return d


def test_cifar10_fake_layout_normalisation_and_augmentation(tmp_path):
    d = _write_cifar(tmp_path, "cifar10")
    b = load_dataset("cifar10", root=str(tmp_path), augment=False)
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10 and len(b.train) == 10 and len(b.test) == 2
    xs = torch.stack([b.train[i][0] for i in range(len(b.train))])
    assert xs.shape == (10, 3, 32, 32) and xs.dtype == torch.float32
    assert torch.allclose(xs.double().mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(xs.double().std(dim=(0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64),
                          atol=1e-4)
    first = pickle.loads((d / "data_batch_1").read_bytes())
    raw0 = torch.tensor(first["data"][0], dtype=torch.float32).view(3, 32, 32) / 255
    mean, std = b.train.mean, b.train.std
    assert torch.allclose(b.train[0][0], (raw0 - mean) / std, atol=1e-5)
    assert int(b.train[0][1]) == first["labels"][0] and b.train[0][1].dtype == torch.int64

    aug = load_dataset("cifar10", root=str(d), augment=True)  # the batches folder itself also works
    torch.manual_seed(0)
    views = [aug.train[0][0] for _ in range(8)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert any(not torch.equal(v, views[0]) for v in views[1:])  # random crop/flip varies
    torch.manual_seed(0)
    assert all(torch.equal(aug.train[0][0], v) for v in views)  # ... and follows torch's seed
    assert torch.equal(aug.test[0][0], b.test[0][0])  # no augmentation at test time


def test_cifar_augmentation_is_crop_of_padded_image_or_its_flip(tmp_path):
    _write_cifar(tmp_path, "cifar10")
    aug = load_dataset("cifar10", root=str(tmp_path), augment=True).train
    img = aug.images[0]
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
    crops = {(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)}
    torch.manual_seed(1)
    for _ in range(5):
        x = aug[0][0]
        raw = ((x * aug.std + aug.mean) * 255).round().to(torch.uint8)
        assert any(torch.equal(raw, (padded[:, dy:dy + 32, dx:dx + 32].flip(-1) if f
                                     else padded[:, dy:dy + 32, dx:dx + 32])) for dy, dx, f in crops)


def test_cifar100_and_image_size(tmp_path):
    _write_cifar(tmp_path, "cifar100", n_per_file=3, num_classes=100)
    b = load_dataset("cifar100", root=str(tmp_path), image_size=16)
    assert b.num_classes == 100 and b.input_shape == (3, 16, 16) and len(b.train) == 3
    assert b.train[1][0].shape == (3, 16, 16) and b.test[0][0].shape == (3, 16, 16)


def test_cifar_errors(tmp_path):
    with pytest.raises(ValueError, match="data 'cifar10' needs a data root.*cifar-10-batches-py"):
        load_dataset("cifar10")
    d = _write_cifar(tmp_path, "cifar10")
    (d / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3; expected .*cifar-10-batches-py/ with"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="lacks train, test, meta"):
        load_dataset("cifar100", root=str(tmp_path))
    (d / "data_batch_3").write_bytes(b"definitely not a pickle")
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR python pickle batch"):
        load_dataset("cifar10", root=str(tmp_path))
    (d / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"data_batch_3: expected data of shape \(N, 3072\)"):
        load_dataset("cifar10", root=str(tmp_path))


# ----------------------------------------------------------------------------- ImageFolder


def _write_images(root, split, classes, n=2, size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(len(split))
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / split / c / f"{i}.png")


@pytest.mark.parametrize("eval_split", ["val", "test"])
def test_imagefolder(tmp_path, eval_split):
    _write_images(tmp_path, "train", ["cat", "dog", "eel"], n=2)
    _write_images(tmp_path, eval_split, ["cat", "dog", "eel"], n=1)
    b = load_dataset("imagefolder", root=str(tmp_path), image_size=8)
    assert b.input_shape == (3, 8, 8) and b.num_classes == 3 and len(b.train) == 6 and len(b.test) == 3
    x, y = b.train[5]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and int(y) == 2
    assert b.test[0][0].shape == (3, 8, 8)
    plain = load_dataset("imagefolder", root=str(tmp_path), image_size=8, augment=False)
    assert torch.equal(plain.train[0][0], plain.train[0][0])  # deterministic without augmentation


def test_imagefolder_errors(tmp_path):
    _write_images(tmp_path, "train", ["a", "b"], n=1)
    with pytest.raises(FileNotFoundError, match=r"lacks val/ or test/; expected train/<class>"):
        load_dataset("imagefolder", root=str(tmp_path))
    _write_images(tmp_path, "val", ["a", "c"], n=1)
    with pytest.raises(ValueError, match="class folders differ"):
        load_dataset("imagefolder", root=str(tmp_path))
    with pytest.raises(ValueError, match="data 'imagefolder' needs a data root"):
        load_dataset("imagefolder")


@pytest.mark.parametrize("kind", ["system", "exec"])
def test_a_planted_cifar_meta_runs_no_code(kind, tmp_path):
    from conftest import evil_pickle, write_fake_cifar10

    marker = tmp_path / "pwned"
    write_fake_cifar10(tmp_path / "data", meta=evil_pickle(marker, kind))
    with pytest.raises(ValueError, match=r"batches.meta is not a CIFAR python pickle batch: refused global"):
        load_dataset("cifar10", root=str(tmp_path / "data"))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_batches_of_every_pickle_protocol_load(protocol, tmp_path):
    d = _write_cifar(tmp_path, "cifar10")
    for f in d.iterdir():
        obj = pickle.loads(f.read_bytes())
        if "data" in obj:
            obj["data_scalar"] = obj["data"][0, 0]  # a numpy scalar as well
        f.write_bytes(pickle.dumps(obj, protocol=protocol))
    b = load_dataset("cifar10", root=str(tmp_path), augment=False)
    assert len(b.train) == 10 and b.num_classes == 10


def test_cifar_object_arrays_are_refused(tmp_path):
    d = _write_cifar(tmp_path, "cifar10")
    batch = pickle.loads((d / "data_batch_1").read_bytes())
    batch["labels"] = np.array(batch["labels"], dtype=object)
    (d / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match="data_batch_1.*refused global|data_batch_1: entry 'labels' is an object array"):
        load_dataset("cifar10", root=str(tmp_path))


# ----------------------------------------------------------------------------- text (language modelling)
# tests/data/fortunes: a few public-domain quotations in the fortune format (records
# separated by '%' lines, an index file beside one of them), standing in for Debian's
# fortunes package, which CI's fresh machine does not have.

SAMPLE_FORTUNES = __import__("pathlib").Path(__file__).parent / "data" / "fortunes"


def _records(stream: bytes):
    return [r for r in stream.split(b"%\n") if r]


def _stream(ds):
    """The split's bytes back from its blocks (x, then the last target)."""
    x, y = ds.tensors
    return bytes(x.reshape(-1).tolist()) + bytes([int(y[-1, -1])])


def test_fortunes_blocks_are_next_byte_pairs_of_real_text():
    b = load_dataset("fortunes", root=str(SAMPLE_FORTUNES), options={"block_size": 16})
    assert b.task == "lm" and b.input_shape == (16,) and b.num_classes == 256 and b.name == "fortunes"
    x, y = b.train.tensors
    assert x.dtype == y.dtype == torch.int64 and x.shape[1] == 16
    assert torch.equal(x.reshape(-1)[1:], y.reshape(-1)[:-1])  # y is x shifted by one token
    text = _stream(b.train) + _stream(b.test)
    assert b"Shall I compare thee" in text or b"Four score" in text
    assert b"index" not in text  # the .dat index file is not text


def test_fortunes_split_is_by_record_disjoint_and_seeded(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    recs = [f"record number {i} says something\n".encode() for i in range(40)]
    (root / "a").write_bytes(b"".join(r + b"%\n" for r in recs[:25]))
    (root / "b").write_bytes(b"".join(r + b"%\n" for r in recs[25:])[:-2])  # no final '%'
    (root / "b.u8").symlink_to(root / "b")  # Debian's .u8 links: read once, not twice
    (root / "a.dat").write_bytes(b"\x00\x01binary")
    b = load_dataset("fortunes", root=str(root), seed=3, options={"block_size": 8, "val_fraction": 0.25})
    n_train = len(b.train) * 8 + 1
    train, val = _records(_stream(b.train)), _records(_stream(b.test))
    # whole records until each split's final partial block is cut
    assert all(r in recs for r in train[:-1]) and all(r in recs for r in val[:-1])
    assert not set(train[:-1]) & set(val[:-1])
    assert len(val) <= 11 and len(train[:-1]) >= 25 and n_train > 600
    again = load_dataset("fortunes", root=str(root), seed=3, options={"block_size": 8, "val_fraction": 0.25})
    assert torch.equal(again.test.tensors[0], b.test.tensors[0])
    other = load_dataset("fortunes", root=str(root), seed=4, options={"block_size": 8, "val_fraction": 0.25})
    assert not torch.equal(other.test.tensors[0][:3], b.test.tensors[0][:3])


def test_fortunes_missing_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "FORTUNES_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"apt-get install fortunes"):
        load_dataset("fortunes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"0 fortune record\(s\) in 0 file\(s\)"):
        load_dataset("fortunes", root=str(tmp_path / "empty"))


@pytest.mark.skipif(not __import__("os").path.isdir(D.FORTUNES_ROOT),
                    reason="Debian's fortunes package is not installed (apt-get install fortunes)")
def test_the_debian_fortunes_package():
    b = load_dataset("fortunes")
    assert len(b.train) * 128 > 2_000_000 and len(b.test) * 128 > 200_000


def test_text_dataset_splits_a_file_or_a_directory(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abcdefghij" * 10)
    (tmp_path / "b.txt").write_bytes(b"0123456789" * 10)
    (tmp_path / "c.md").write_bytes(b"not read")
    b = load_dataset("text", root=str(tmp_path), options={"block_size": 4, "val_fraction": 0.5})
    assert _stream(b.train) == (b"abcdefghij" * 10)[:97] and _stream(b.test) == (b"0123456789" * 10)[:97]
    one = load_dataset("text", root=str(tmp_path / "a.txt"), options={"block_size": 4})
    assert len(one.train) == (90 - 1) // 4 and len(one.test) == (10 - 1) // 4
    with pytest.raises(ValueError, match="needs a data root"):
        load_dataset("text")
    with pytest.raises(FileNotFoundError, match="neither a file nor a directory"):
        load_dataset("text", root=str(tmp_path / "nope"))


@pytest.mark.parametrize("options,message", [
    ({"block_size": 0}, "block_size must be a positive integer"),
    ({"block_size": 8.0}, "block_size must be a positive integer"),
    ({"val_fraction": 1.0}, r"val_fraction must be a number in \(0, 1\)"),
    ({"vocab": 300}, r"unknown data option\(s\) \['vocab'\] for 'fortunes'; allowed: \['block_size', 'val_fraction'\]"),
    ({"block_size": 100_000}, "fewer than one block of block_size"),
])
def test_text_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("fortunes", root=str(SAMPLE_FORTUNES), options=options)


def test_data_options_only_for_text_datasets():
    with pytest.raises(ValueError, match=r"do not apply to data 'digits'; only the text datasets \(fortunes, text\)"):
        load_dataset("digits", options={"block_size": 8})
    assert load_dataset("digits", options={}).task == "classification"
