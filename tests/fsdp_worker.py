"""Runs for tests/test_fsdp.py: the same short sparse training run on one process (an
ordinary model) or on every rank of a gloo group (the model ``fully_shard``-ed per
layer and at the root). Every rank feeds the same batches, so the two runs compute
bit-identical gradients (FSDP2's reduce-scatter averages equal values) and must make
bit-identical mask decisions."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

import regrow
from regrow.optim import param_state_tensors
from regrow.sharding import is_sharded, local

STEPS = 10

# method -> options for a 10-step run with structure updates inside it
METHODS: Dict[str, Dict[str, Any]] = {
    "dense": {},
    "static": {"density": 0.3},
    "snip": {"density": 0.3},
    "set": {"density": 0.3, "update_interval": 2},
    "rigl": {"density": 0.3, "update_interval": 2, "distribution": "global"},
    "gmp": {"density": 0.3, "update_interval": 2},
    "dst_ee": {"density": 0.3, "update_interval": 2},
    "optg": {"density": 0.3, "epoch_steps": 3},
    "iee": {"density": 0.3, "H": 1, "J": 1, "Q": 1},
    "asp": {},
    "rigl_nm": {"structure": "nm", "update_interval": 2},
    # global: one ranking across the layers, chosen across the shards without gathering
    "static_global": {"density": 0.3, "distribution": "global"},
    "snip_global": {"density": 0.3, "distribution": "global"},
    "set_global": {"density": 0.3, "update_interval": 2, "distribution": "global"},
    "gmp_global": {"density": 0.3, "update_interval": 2, "distribution": "global"},
    "iee_global": {"density": 0.3, "H": 1, "J": 1, "Q": 1, "distribution": "global"},
}


class MLP(nn.Module):
    """Layers with uneven row shards on two ranks (fc3: 5 rows) and N:M-friendly inputs."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 28)
        self.fc2 = nn.Linear(28, 20)
        self.fc3 = nn.Linear(20, 5)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(12, 16, generator=g), torch.randint(0, 5, (12,), generator=g)


def loss_fn(model, b):
    return nn.functional.cross_entropy(model(b[0]), b[1])


def build(key: str, sharded: bool, optimizer: str = "sgd"):
    torch.manual_seed(0)
    model = MLP()
    if sharded:
        from torch.distributed.fsdp import fully_shard
        for layer in (model.fc1, model.fc2, model.fc3):
            fully_shard(layer)
        fully_shard(model)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    name = key.removesuffix("_nm").removesuffix("_global")
    method = regrow.create(name, model, opt, total_steps=STEPS, seed=3, **METHODS[key])
    if method.needs_data:
        method.calibrate([batch(-1 - i) for i in range(2)], loss_fn)
    return model, opt, method


def violations(method, opt) -> List[str]:
    """Inactive weights and their optimizer state that are not 0 (on this rank's shards)."""
    bad = []
    live = method.live_masks()
    for n, p in method.params.items():
        dead = ~local(live[n])
        if torch.any(local(p.detach())[dead] != 0):
            bad.append(f"{n} weight")
        for t in param_state_tensors(opt, p):
            if torch.any(local(t)[dead] != 0):
                bad.append(f"{n} optimizer state")
    return bad


def train(key: str, sharded: bool, steps: int = STEPS, optimizer: str = "sgd", start=None):
    """Checksums after every step, invariant violations and the final whole weights.
    ``start``: (model, opt, method) to continue from (a resumed run)."""
    model, opt, method = start if start is not None else build(key, sharded, optimizer)
    checks, bad = [], []
    first = method.state.step
    for step in range(first, first + steps):
        loss_fn(model, batch(step)).backward()
        opt.step()
        opt.zero_grad()
        bad += [f"step {step + 1}: {v}" for v in violations(method, opt)]
        checks.append(method.checksum())
    st = method.state
    per_weight = [st.masks, st.dormant, *st.buffers.values()]
    state_sharded = all(is_sharded(t) for d in per_weight for n, t in d.items()
                        if n in method.params and t.shape == method.params[n].shape)
    weights = {k: v.full_tensor() if is_sharded(v) else v.clone() for k, v in model.state_dict().items()}
    return {"checksums": checks, "violations": bad, "weights": weights,
            "density": method.density(), "state_sharded": state_sharded,
            "sharded": all(is_sharded(p) for p in method.params.values())}


def init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def run_all(rank: int, world: int, port: int, out: str, keys: List[str], cases) -> None:
    """mp.spawn target: :func:`run_methods`, then :func:`run_checkpoint` for each
    (method, optimizer) in ``cases``, in one process group (a spawn costs seconds)."""
    init(rank, world, port)
    run_methods(rank, out, keys)
    for key, optimizer in cases:
        os.makedirs(f"{out}/{key}", exist_ok=True)
        run_checkpoint(rank, f"{out}/{key}", key, optimizer)
    dist.barrier()   # every result is on disk
    # gloo's group teardown aborts now and then on this CPU ("terminate called without an
    # active exception") after all the work is done: leave without it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_methods(rank: int, out: str, keys: List[str]) -> None:
    """Every method in ``keys`` on the sharded model; rank 0 saves the results."""
    results: Dict[str, Any] = {}
    try:
        for key in keys:
            results[key] = train(key, sharded=True, optimizer="adam" if key.startswith("iee") else "sgd")
        results["ties"] = global_ties()
        model, opt, _ = build("dense", True)
        try:
            regrow.create("halp", model, opt, total_steps=STEPS)
            results["channel"] = "built"
        except ValueError as e:
            results["channel"] = str(e)
        torch.manual_seed(0)
        late = MLP()
        opt = torch.optim.SGD(late.parameters(), lr=0.1)
        method = regrow.create("rigl", late, opt, density=0.3, total_steps=STEPS, update_interval=2)
        from torch.distributed.fsdp import fully_shard
        fully_shard(late)   # too late: the method holds the replaced parameters
        loss_fn(late, batch(0)).backward()
        try:
            method.step()
            results["late"] = "stepped"
        except ValueError as e:
            results["late"] = str(e)
    except Exception:
        results["error"] = f"rank {rank}: {traceback.format_exc()}"
    if rank == 0 or "error" in results:
        torch.save(results, f"{out}/rank{rank}.pt")


def reference(key: str, optimizer: Optional[str] = None) -> Dict[str, Any]:
    torch.set_num_threads(1)
    return train(key, sharded=False, optimizer=optimizer or ("adam" if key.startswith("iee") else "sgd"))


def global_ties() -> List[str]:
    """regrow.sharding.global_select against regrow.structures' global selections and
    OptG's random-tie top-k on scores full of ties (4 values, NaN, ±0.0, inf and the
    largest float among them), for many k: the mismatches."""
    from regrow import structures as S
    from regrow.methods.optg import _clean_scores, topk_random_ties
    from regrow.sharding import full, global_select, shard_like

    from torch.distributed.fsdp import fully_shard

    model = build("dense", True)[0]
    big = nn.Sequential(nn.Linear(256, 301, bias=False), nn.Linear(64, 130, bias=False))
    fully_shard(big)   # 85k weights: large enough for the sampled prefilter
    small = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    g = torch.Generator().manual_seed(5)
    bad = []
    for trial in range(4):
        refs = small if trial < 2 else dict(big.named_parameters())
        names = list(refs)
        levels = 4 if trial < 3 else 1000
        scores = {n: torch.randint(0, levels, p.shape, generator=g).float() for n, p in refs.items()}
        scores[names[1]].view(-1)[::7] = float("nan")
        scores[names[0]].view(-1)[::5] = -0.0
        scores[names[-1]].view(-1)[::3] = float("inf")
        scores[names[-1]].view(-1)[1::9] = torch.finfo(torch.float32).max
        scores[names[0]].view(-1)[2::11] = float("-inf")
        masks = {n: torch.rand(p.shape, generator=g) < 0.4 for n, p in refs.items()}
        sharded_scores = {n: shard_like(s, refs[n]) if trial % 2 else s for n, s in scores.items()}
        sharded_masks = {n: shard_like(m, refs[n]) for n, m in masks.items()}
        n_all, n_on = sum(m.numel() for m in masks.values()), sum(int(m.sum()) for m in masks.values())
        for k in (0, 1, 37, 1000, n_on // 3, n_on // 2, n_on, n_all - n_on - 1, n_all // 2, n_all):
            expect = {"topk": S.global_topk(scores, k), "prune": S.global_prune(scores, masks, k),
                      "grow": S.global_grow(scores, masks, k)}
            for kind, want in expect.items():
                got = global_select(kind, sharded_scores, None if kind == "topk" else sharded_masks, k, refs)
                if any(not torch.equal(full(got[n]), want[n]) for n in refs):
                    bad.append(f"{kind} k={k} trial {trial}")
            # OptG's ranking: ties at the k-th value drawn at random from a generator
            g1, g2 = torch.Generator().manual_seed(k), torch.Generator().manual_seed(k)
            flat = topk_random_ties(torch.cat([s.reshape(-1) for s in scores.values()]), k, g1)
            got = global_select("topk", sharded_scores, None, k, refs, clean=_clean_scores, generator=g2)
            if not torch.equal(torch.cat([full(got[n]).reshape(-1) for n in refs]), flat) \
                    or not torch.equal(g1.get_state(), g2.get_state()):
                bad.append(f"random ties k={k} trial {trial}")
    return bad


def payload(model, opt, method) -> Dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "method": method.state_dict()}


def restore(sd: Dict[str, Any], key: str, sharded: bool, optimizer: str):
    model, opt, method = build(key, sharded, optimizer)
    model.load_state_dict(sd["model"])
    opt.load_state_dict(sd["optimizer"])
    method.load_state_dict(sd["method"])
    return model, opt, method


def run_checkpoint(rank: int, out: str, key: str, optimizer: str) -> None:
    """Train 3 steps, save a sharded checkpoint, train 7 more (the run to
    match); then a fresh model, optimizer and method restored from the checkpoint train
    the same 7 steps."""
    from regrow.train import checkpoint as ckpt

    results: Dict[str, Any] = {}
    try:
        model, opt, method = build(key, True, optimizer)
        train(key, True, steps=3, start=(model, opt, method))
        ckpt.save_sharded(f"{out}/ckpt.pt", payload(model, opt, method))
        results["straight"] = train(key, True, steps=7, start=(model, opt, method))
        del model, opt, method
        sd = ckpt.load(f"{out}/ckpt.pt", required=("model", "optimizer", "method"))
        mesh = next(iter(dict(build(key, True, optimizer)[2].params).values())).device_mesh
        sd = ckpt.load_shards(f"{out}/ckpt.pt", sd, mesh)
        results["resumed"] = train(key, True, steps=7, start=restore(sd, key, True, optimizer))
    except Exception:
        results["error"] = f"rank {rank}: {traceback.format_exc()}"
    if rank == 0 or "error" in results:
        torch.save(results, f"{out}/rank{rank}.pt")


def resume_unsharded(out: str, key: str, optimizer: str) -> Dict[str, Any]:
    """The 2-rank checkpoint resumed by one process on an ordinary model."""
    from regrow.train import checkpoint as ckpt

    torch.set_num_threads(1)
    sd = ckpt.load(f"{out}/ckpt.pt", required=("model", "optimizer", "method"))
    sd = ckpt.load_shards(f"{out}/ckpt.pt", sd, None)
    return train(key, False, steps=7, start=restore(sd, key, False, optimizer))
