"""FSDP2 (``fully_shard``) sparse training on a 2-rank gloo group (CPU).

Every rank feeds the same batches, so a sharded run and a one-process run compute the
same gradients bit for bit; the sharded run must then choose the same masks (equal
checksums after every step) and end with the same weights, keep every inactive weight
and its optimizer state at zero on every shard, and resume from a sharded
(``torch.distributed.checkpoint``) checkpoint bit-identically on two ranks and on one."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import fsdp_worker as W
from regrow.sharding import count_local, full, is_sharded, local, shard_like

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(path) -> dict:
    r = torch.load(path, weights_only=False)
    assert "error" not in r, r.get("error")
    return r


def _same_run(a: dict, b: dict) -> None:
    assert a["checksums"] == b["checksums"]
    assert set(a["weights"]) == set(b["weights"])
    for n in a["weights"]:
        assert torch.equal(a["weights"][n], b["weights"][n]), n


CHECKPOINT_CASES = [("iee", "adam"), ("optg", "sgd")]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """One 2-rank gloo group runs every method and the checkpoint cases."""
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(W.run_all, args=(2, free_port(), str(out), list(W.METHODS), CHECKPOINT_CASES),
             nprocs=2, join=True)
    return out


@pytest.fixture(scope="module")
def sharded_runs(spawned):
    return _load(spawned / "rank0.pt")


@pytest.mark.parametrize("key", list(W.METHODS))
def test_two_ranks_choose_the_masks_of_one_process(sharded_runs, key):
    run = sharded_runs[key]
    assert run["sharded"] and run["state_sharded"], "parameters and per-weight state are DTensor shards"
    ref = W.reference(key)
    _same_run(run, ref)
    if key.removesuffix("_global") in ("set", "rigl", "gmp", "dst_ee", "optg", "iee", "rigl_nm"):
        assert len(set(run["checksums"])) > 1, "the structure changed during the run"


@pytest.mark.parametrize("key", list(W.METHODS))
def test_inactive_weights_and_optimizer_state_stay_zero_on_every_shard(sharded_runs, key):
    # checked on rank 0's shards in the run and on rank 1's (its failure would be saved)
    assert sharded_runs[key]["violations"] == []


def test_channel_methods_refuse_sharded_models(sharded_runs):
    assert "does not run on an FSDP2-sharded model" in sharded_runs["channel"]


@pytest.fixture(scope="module")
def checkpoint_runs(spawned):
    return spawned


@pytest.mark.parametrize("key,optimizer", CHECKPOINT_CASES)
def test_sharded_checkpoint_resumes_bit_identically_on_two_ranks(checkpoint_runs, key, optimizer):
    r = _load(checkpoint_runs / key / "rank0.pt")
    _same_run(r["straight"], r["resumed"])
    assert len(set(r["straight"]["checksums"])) > 1, "the masks changed after the checkpoint"
    shards = list((checkpoint_runs / key).glob("ckpt.pt.shards-*"))
    assert len(shards) == 1 and (shards[0] / ".metadata").is_file()


@pytest.mark.parametrize("key,optimizer", CHECKPOINT_CASES)
def test_two_rank_checkpoint_resumes_on_one_process(checkpoint_runs, key, optimizer):
    r = _load(checkpoint_runs / key / "rank0.pt")
    one = W.resume_unsharded(str(checkpoint_runs / key), key, optimizer)
    assert one["violations"] == []
    _same_run(r["straight"], one)


def test_helpers_are_the_identity_without_fsdp():
    t = torch.tensor([[True, False], [True, True]])
    assert not is_sharded(t)
    assert full(t) is t and local(t) is t and shard_like(t, t) is t
    assert count_local(t) == 3


# ---- regrow train --fsdp under torchrun -------------------------------------------
RUN = ["--method", "dst_ee", "--model", "mlp", "--model-opt", "hidden=[20]", "--data", "synthetic",
       "--synthetic", "shape=[1,16]", "--synthetic", "num_classes=4", "--synthetic", "train_size=64",
       "--synthetic", "test_size=30", "--epochs", "2", "--batch-size", "16", "--update-interval", "2",
       "--log-every", "1", "--density", "0.3", "--optimizer", "adamw", "--lr", "0.01", "--grad-accum", "2",
       "--fsdp"]


def _torchrun(*args: str, nproc: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
              if nproc > 1 else [sys.executable])
    proc = subprocess.run([*launch, "-m", "regrow", *args], capture_output=True, text=True, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _records(out) -> list:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _comparable(r: dict) -> dict:
    return {k: v for k, v in r.items() if "wall" not in k and "second" not in k and k != "time"}


@pytest.mark.slow
def test_fsdp_cli_resume_is_bit_identical_and_a_two_rank_checkpoint_resumes_on_one(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    _torchrun("train", *RUN, "--device", "cpu", "--quiet", "--out", str(whole))
    _torchrun("train", *RUN, "--device", "cpu", "--quiet", "--out", str(split), "--stop-after-steps", "3")
    assert list(split.glob("checkpoint.pt.shards-*")), "an FSDP2 run writes a sharded checkpoint"
    one = tmp_path / "one"
    shutil.copytree(split, one)
    _torchrun("resume", str(split), "--quiet")
    a, b = json.loads((whole / "summary.json").read_text()), json.loads((split / "summary.json").read_text())
    assert a["world_size"] == 2 and len(set(a["mask_checksums"])) == 1
    for key in ("mask_checksums", "test_loss", "test_top1", "train_loss", "final_density", "per_layer_density"):
        assert a[key] == b[key], key
    assert [_comparable(r) for r in _records(whole)] == [_comparable(r) for r in _records(split)]
    assert any(r.get("event") == "update" for r in _records(whole))
    # the 2-rank checkpoint continues in one process (whole tensors read from the shards)
    _torchrun("resume", str(one), "--quiet", nproc=1)
    c = json.loads((one / "summary.json").read_text())
    assert c["world_size"] == 1 and c["steps"] == a["steps"]
    assert c["final_density"] == a["final_density"]


def test_fsdp_with_a_channel_method_is_refused_before_anything_runs():
    from regrow.train import config as C

    with pytest.raises(ValueError, match="fsdp cannot shard method 'iee' with structure 'channel'"):
        C.validate(C.build({"method": "iee", "structure": "channel", "fsdp": True}, {}))
    C.validate(C.build({"method": "iee", "fsdp": True}, {}))   # unstructured: fine


def test_a_model_sharded_after_the_method_is_refused_at_the_first_step(sharded_runs):
    assert "sharded (fully_shard) after the sparsity method was built" in sharded_runs["late"]


def test_global_selection_across_shards_breaks_ties_as_one_process(sharded_runs):
    assert sharded_runs["ties"] == [], sharded_runs["ties"]
