"""Shared tiny models and data for the test suite (keep additions small)."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

# The device of the registry-wide invariant tests (tests/test_methods_invariants.py):
# ``REGROW_TEST_DEVICE=cuda pytest tests/test_methods_invariants.py`` runs them on a GPU,
# deterministically (the round trips compare two runs bit for bit). The rest of the
# suite pins its own devices.
DEVICE = torch.device(os.environ.get("REGROW_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


class TinyNet(nn.Module):
    """Two convs (one with BatchNorm) and two Linears; every input dim divisible by 4 (2:4 N:M)."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class TinyMLP(nn.Module):
    def __init__(self, d_in: int = 16, hidden: int = 32, classes: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def tiny_batch(step: int, batch: int = 8, shape=(4, 4, 4), classes: int = 4, offset: int = 0):
    """A deterministic batch for ``step`` (``offset`` gives other ranks other data)."""
    g = torch.Generator().manual_seed(1000 * offset + step)
    x = torch.randn((batch, *shape), generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return x, y


def tiny_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def tiny_mlp():
    torch.manual_seed(0)
    return TinyMLP()


# One intra-op thread: the models here are tiny, and on a shared 2-core machine a
# second spinning worker thread only slows every test down.
torch.set_num_threads(1)


class _Evil:
    """Pickles to a call of ``fn(*args)``: what a planted data file would run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def evil_pickle(marker, kind: str) -> bytes:
    """A pickle that creates file ``marker`` when loaded with plain ``pickle.load``:
    ``system`` runs a shell command, ``exec`` writes the file from Python."""
    import os
    import pickle

    payload = (_Evil(os.system, f"touch '{marker}'") if kind == "system"
               else _Evil(exec, f"open({str(marker)!r}, 'w').write('pwned')"))
    return pickle.dumps({"label_names": payload})


def write_fake_cifar10(root, n_per_file: int = 2, meta: bytes = None):
    """torchvision's CIFAR-10 layout under ``root`` with tiny random batches; ``meta``
    replaces batches.meta (e.g. with :func:`evil_pickle`)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n_per_file).tolist()}
        (d / f).write_bytes(pickle.dumps(batch))
    (d / "batches.meta").write_bytes(meta or pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return d
