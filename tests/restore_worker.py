"""Restore-order check for every registered method (used by test_step_contract.py).

``run_reference(name, dir)`` trains a method K steps, saves model, optimizer and
sparsity state, trains K more and saves the final state. Run as a script on that
directory (a fresh process), this file restores each checkpoint in both orders —

* early: build model, optimizer and method, then load all three;
* late: load model and optimizer, then build the method and load its state —

continues K steps and prints, per method and order, whether the end state is
bit-identical to the uninterrupted run's.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import regrow  # noqa: E402
from conftest import TinyNet, tiny_batch  # noqa: E402
from test_groups import TinyRes  # noqa: E402

K = 7
CHANNEL = dict(input_shape=(3, 8, 8), cost="flops", latency_target=0.6, total_steps=4 * K)
CASES = {
    "dense": {},
    "static": dict(density=0.2),
    "snip": dict(density=0.2, calibration_batches=2),
    "set": dict(density=0.2, update_interval=2, total_steps=4 * K),
    "rigl": dict(density=0.2, update_interval=2, total_steps=4 * K),
    "gmp": dict(density=0.2, update_interval=2, total_steps=4 * K),
    "dst_ee": dict(density=0.2, update_interval=2, total_steps=4 * K),
    "optg": dict(density=0.2, epoch_steps=3, total_steps=4 * K),
    "iee": dict(density=0.2, H=2, J=1, Q=2, total_steps=4 * K),   # K = 7 stops mid-cycle
    "asp": {},
    "halp": dict(CHANNEL, prune_steps=2, prune_interval=3),
    "iee_channel": dict(CHANNEL, H=2, J=1, Q=2, end_fraction=0.75),
}


def _channel(name):
    return "input_shape" in CASES[name]


def _model_opt(name, seed):
    torch.manual_seed(seed)
    model = TinyRes() if _channel(name) else TinyNet()   # TinyNet has no prunable channel group
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, opt


def _batch(name, step):
    return tiny_batch(step, shape=(3, 8, 8), classes=5) if _channel(name) else tiny_batch(step)


def _train(name, model, opt, steps, start):
    for step in range(start, start + steps):
        opt.zero_grad()
        x, y = _batch(name, step)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _state(model, opt, method):
    return {"model": model.state_dict(), "opt": opt.state_dict(), "sparsity": method.state_dict()}


def run_reference(name, directory):
    model, opt = _model_opt(name, 0)
    method = regrow.create(name, model, opt, **CASES[name])
    if method.needs_data:
        method.calibrate((_batch(name, -1 - i) for i in range(2)), lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    _train(name, model, opt, K, 1)
    torch.save(_state(model, opt, method), Path(directory) / f"{name}.mid.pt")
    _train(name, model, opt, K, K + 1)
    torch.save(_state(model, opt, method), Path(directory) / f"{name}.end.pt")


def _equal(a, b):
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def restore(name, directory, order):
    mid = torch.load(Path(directory) / f"{name}.mid.pt", weights_only=True)
    model, opt = _model_opt(name, 1)    # other initial weights than the reference run
    if order == "late":
        model.load_state_dict(mid["model"])
        opt.load_state_dict(mid["opt"])
    method = regrow.create(name, model, opt, **CASES[name])
    if order == "early":
        method.prepare_model(mid["sparsity"])
        model.load_state_dict(mid["model"])
        opt.load_state_dict(mid["opt"])
    method.load_state_dict(mid["sparsity"])
    _train(name, model, opt, K, K + 1)
    end = torch.load(Path(directory) / f"{name}.end.pt", weights_only=True)
    got = _state(model, opt, method)
    diff = [k for k in ("model", "opt", "sparsity") if not _equal(end[k], got[k])]
    return "identical" if not diff else f"differs in {diff}"


if __name__ == "__main__":
    directory = sys.argv[1]
    torch.set_num_threads(1)
    report = {f"{n}/{o}": restore(n, directory, o) for n in CASES for o in ("early", "late")}
    print(json.dumps(report))
