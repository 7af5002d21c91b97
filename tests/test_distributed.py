"""Data order and rank splitting, cross-rank checks, and a real 2-process torchrun run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from regrow.train.distributed import (Context, GlobalBatchSampler, RankMismatch, all_gather_int,
                                      all_sum, check_same, resolve_device)


def test_unshuffled_split_golden():
    r0 = GlobalBatchSampler(8, 4, seed=0, rank=0, world_size=2, shuffle=False)
    r1 = GlobalBatchSampler(8, 4, seed=0, rank=1, world_size=2, shuffle=False)
    assert list(r0) == [[0, 2], [4, 6]] and list(r1) == [[1, 3], [5, 7]]
    acc = GlobalBatchSampler(8, 4, seed=0, grad_accum=2, shuffle=False)
    assert list(acc) == [[0, 1], [2, 3], [4, 5], [6, 7]] and len(acc) == 4


@pytest.mark.parametrize("world,accum", [(1, 1), (2, 1), (2, 2), (4, 1)])
def test_ranks_partition_each_global_batch(world, accum):
    n, b = 50, 8
    per_rank = [GlobalBatchSampler(n, b, seed=3, rank=r, world_size=world, grad_accum=accum)
                for r in range(world)]
    for s in per_rank:
        s.set_epoch(2)
    single = GlobalBatchSampler(n, b, seed=3)
    single.set_epoch(2)
    steps = list(single)
    assert len(steps) == n // b
    chunks = [list(s) for s in per_rank]
    for i, batch in enumerate(steps):
        got = [x for c in chunks for mb in c[i * accum:(i + 1) * accum] for x in mb]
        assert sorted(got) == sorted(batch)


def test_order_is_a_function_of_seed_and_epoch_and_skips_steps():
    s = GlobalBatchSampler(20, 4, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1
    s.set_epoch(0)
    assert list(s) == e0
    s.set_epoch(0, skip_steps=3)
    assert list(s) == e0[3:] and len(s) == 2
    assert list(GlobalBatchSampler(20, 4, seed=2)) != e0


def test_sampler_errors_name_the_sizes():
    with pytest.raises(ValueError, match="batch_size 6 must be a positive multiple of world size x grad_accum = 4 x 1"):
        GlobalBatchSampler(100, 6, seed=0, world_size=4)
    with pytest.raises(ValueError, match="larger than the training set"):
        GlobalBatchSampler(10, 16, seed=0)


def test_check_same_names_every_rank():
    check_same([7, 7, 7], "mask checksums", 5)
    with pytest.raises(RankMismatch, match=r"mask checksums differ across ranks at step 5 \(rank 0: 7, rank 1: 8\)"):
        check_same([7, 8], "mask checksums", 5)


def test_single_process_helpers_need_no_process_group():
    ctx = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert all_sum(ctx, [1.5, 2.0]) == [1.5, 2.0]
    assert all_gather_int(ctx, 42) == [42]
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def torchrun_train(out, *args: str) -> dict:
    """``torchrun --nproc_per_node=2 -m regrow train ... --out OUT`` (gloo, CPU); its summary."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "regrow", "train", *args, "--device", "cpu", "--quiet", "--out", str(out)]
    # own session: on a timeout the launcher and both workers are killed together
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    summary = torchrun_train(
        out, "--method", "rigl", "--model", "mlp", "--model-opt", "hidden=[16]",
        "--data", "synthetic", "--synthetic", "shape=[1,16]", "--synthetic", "num_classes=4",
        "--synthetic", "train_size=64", "--synthetic", "test_size=30", "--epochs", "2",
        "--batch-size", "16", "--update-interval", "2", "--log-every", "2", "--density", "0.3")
    assert summary["world_size"] == 2
    checks = summary["mask_checksums"]
    assert len(checks) == 2 and checks[0] == checks[1]
    # global batch 16 over 2 ranks: 64 // 16 = 4 optimizer steps per epoch, as on one process
    assert summary["steps"] == 8 and summary["steps_per_epoch"] == 4
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if r["event"] == "train"]) == 4  # rank 0 alone writes
    assert any(r["event"] == "update" for r in records)
    # 30 test samples split 15/15 over the ranks and summed back
    assert summary["test_top1"] * 30 == pytest.approx(round(summary["test_top1"] * 30))


@pytest.mark.slow
def test_torchrun_slims_in_training_and_rewraps_ddp(tmp_path):
    """Channel IEE with --slim-after-updates under 2 ranks: both slim at the same step, DDP
    is rebuilt around the smaller model and training goes on in sync."""
    out = tmp_path / "slim"
    summary = torchrun_train(
        out, "--method", "iee", "--structure", "channel", "--latency-target", "0.5", "--cost", "flops",
        "--slim-after-updates", "--model", "resnet20", "--data", "synthetic",
        "--synthetic", "shape=[3,8,8]", "--synthetic", "num_classes=4", "--synthetic", "train_size=96",
        "--synthetic", "test_size=32", "--epochs", "4", "--batch-size", "16", "--opt", "H=2",
        "--opt", "J=1", "--opt", "Q=1", "--end-fraction", "0.5", "--log-every", "5", "--threads", "1")
    assert summary["world_size"] == 2 and summary["steps"] == 24
    checks = summary["mask_checksums"]
    assert len(checks) == 2 and checks[0] == checks[1]
    assert summary["structured"]["slimmed_in_training"] is True
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    slim = [r for r in records if r["event"] == "slim"]
    assert len(slim) == 1 and slim[0]["step"] < 24  # slimmed mid-run, then trained on
    # the slimmed weights were updated after the rewrap: the checkpoint holds the smaller model
    sd = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    assert sum(v.numel() for k, v in sd.items() if k.endswith("weight")) < summary["structured"]["params_dense"]


def _timeout_worker(rank: int, port: int, result_dir: str) -> None:
    import time

    from regrow.train import distributed as d

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    ctx = d.setup("cpu", timeout=2)
    if rank == 1:  # a stopped rank: never joins the collective (gone once rank 0 gave up, or at 6 s)
        t0 = time.perf_counter()
        while not os.path.exists(os.path.join(result_dir, "r0.json")) and time.perf_counter() - t0 < 6:
            time.sleep(0.05)
        os._exit(0)  # the group is broken: skip its destructors
    t0 = time.perf_counter()
    try:
        d.all_sum(ctx, [1.0])
        what = "completed"
    except Exception as e:  # gloo: "Timed out waiting ... for recv operation"
        what = type(e).__name__
    with open(os.path.join(result_dir, "r0.json"), "w") as f:
        json.dump({"what": what, "seconds": time.perf_counter() - t0}, f)
    os._exit(0)  # a timed-out gloo group may abort in its destructor


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_dist_timeout_bounds_the_wait_for_a_stopped_rank(tmp_path):
    """--dist-timeout reaches the process group: a rank that never joins fails the others'
    collective after ~2 s instead of torch's default 30 minutes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_timeout_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "r0.json").read_text())
    assert r0["what"] != "completed" and r0["seconds"] < 5.5, r0  # not when rank 1 exits at 6 s
    from regrow.train import config as C

    assert C.build({"dist_timeout": 5}).dist_timeout == 5.0
    with pytest.raises(ValueError, match="dist_timeout must be a positive number"):
        C.validate(C.build({"dist_timeout": 0}))
