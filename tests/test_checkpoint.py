"""Checkpoints: atomic writes, clear errors for missing/truncated/foreign files,
RNG round trips, pretrained weight extraction."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from regrow.train import checkpoint as ckpt

PAYLOAD = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "optimizer": {}, "method": {},
           "rng": {}, "loop": {"step": 3, "window": [0.5, 1.0, 2.0, 1]}, "config": {"method": "rigl"}}


def test_round_trip(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save(path, PAYLOAD)
    sd = ckpt.load(path)
    assert sd["format"] == ckpt.FORMAT
    assert torch.equal(sd["model"]["w"], PAYLOAD["model"]["w"])
    assert sd["loop"] == PAYLOAD["loop"] and sd["config"] == {"method": "rigl"}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt.save(path, PAYLOAD)
    before = path.read_bytes()

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(path, PAYLOAD)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.pt"]


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save(path, PAYLOAD)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"checkpoint {path} is unreadable"):
        ckpt.load(path)


def test_foreign_checkpoints_are_rejected(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match=f"{other} is not a regrow run checkpoint"):
        ckpt.load(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="unreadable"):
        ckpt.load(text)
    partial = tmp_path / "partial.pt"
    torch.save({"format": ckpt.FORMAT, "model": {}}, partial)
    with pytest.raises(ValueError, match="lacks"):
        ckpt.load(partial)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        ckpt.load(tmp_path / "missing.pt")


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = ckpt.rng_state()
    expect = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    ckpt.save(tmp_path / "r.pt", {**PAYLOAD, "rng": state})
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ckpt.set_rng_state(ckpt.load(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(3), expect[0])
    assert np.array_equal(np.random.rand(3), expect[1])
    assert [random.random() for _ in range(3)] == expect[2]


def test_pretrained_weights_from_every_layout(tmp_path):
    w = {"fc.weight": torch.ones(2, 2)}
    torch.save(w, tmp_path / "plain.pt")
    torch.save({"state_dict": {"module.fc.weight": torch.ones(2, 2)}}, tmp_path / "ddp.pt")
    ckpt.save(tmp_path / "run.pt", {**PAYLOAD, "model": {"_orig_mod.fc.weight": torch.ones(2, 2)}})
    for name in ("plain.pt", "ddp.pt", "run.pt"):
        got = ckpt.load_model_weights(tmp_path / name)
        assert list(got) == ["fc.weight"] and torch.equal(got["fc.weight"], w["fc.weight"])
    torch.save({"epoch": 3}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="holds no model state_dict"):
        ckpt.load_model_weights(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ckpt.load_model_weights(tmp_path / "nope.pt")


def test_pretrained_samples_come_from_a_regrow_checkpoint_only(tmp_path):
    base = {"model": {}, "optimizer": {}, "method": {}, "rng": {}, "config": {"batch_size": 16},
            "loop": {"step": 7}}
    ckpt.save(tmp_path / "a.pt", {**base, "ledger": {"samples": 100, "total": 1.0}})
    ckpt.save(tmp_path / "b.pt", {**base, "ledger": None})
    torch.save({"w": torch.zeros(2)}, tmp_path / "c.pt")
    assert ckpt.pretrained_samples(tmp_path / "a.pt") == 100  # the ledger's exact count
    assert ckpt.pretrained_samples(tmp_path / "b.pt") == 7 * 16  # steps × global batch
    assert ckpt.pretrained_samples(tmp_path / "c.pt") is None  # a plain state_dict: unknown


def test_writes_remove_orphans_fsync_the_directory_and_keep_the_umask_mode(tmp_path, monkeypatch):
    orphan = tmp_path / ".c.pt.abc123.tmp"  # a write killed before its rename
    orphan.write_bytes(b"half")
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        import stat
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    ckpt.save(tmp_path / "c.pt", PAYLOAD)
    assert not orphan.exists()
    assert synced == [False, True]  # the file, then the directory after the rename
    ckpt.write_text(tmp_path / "s.json", "{}\n")
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"c.pt": 0o666 & ~mask, "s.json": 0o666 & ~mask}
