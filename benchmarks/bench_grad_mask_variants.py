"""Ways to mask the gradients of a sparse MLP, timed inside a bare training step.

LeNet-300-100 on MNIST-1D-shaped random data (batch 128, 40 inputs), SGD with momentum
and weight decay, 10% of every weight matrix active. Each variant runs
forward/backward/mask/``SGD.step``/``zero_grad``; the figure is the median over repeats
of its step time over the unmasked step's, measured alternately in one process:

* ``foreach-uint8``: one ``torch._foreach_mul_`` over the grads with ``uint8`` views of
  the bool masks (what ``regrow`` does: no extra memory);
* ``foreach-float32``: the same with float32 copies of the masks (4 bytes a weight);
* ``tensor-hook``: ``p.register_hook`` multiplying the incoming gradient in place;
* ``post-accumulate-hook``: ``register_post_accumulate_grad_hook`` masking ``p.grad``
  right after backward wrote it.

    .venv/bin/python benchmarks/bench_grad_mask_variants.py --repeats 31
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from regrow.train.models import build_model


def make_step(variant: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 40), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    weights = [p for p in model.parameters() if p.ndim > 1]
    g = torch.Generator().manual_seed(1)
    masks = [torch.rand(p.shape, generator=g) < 0.1 for p in weights]
    u8 = [m.view(torch.uint8) for m in masks]
    f32 = [m.float() for m in masks]
    if variant == "tensor-hook":
        for p, m in zip(weights, u8):
            p.register_hook(lambda grad, m=m: grad.mul_(m))
    elif variant == "post-accumulate-hook":
        def mask_grad(m: torch.Tensor) -> Callable[[torch.Tensor], None]:
            def hook(q: torch.Tensor) -> None:
                q.grad.mul_(m)
            return hook

        for p, m in zip(weights, u8):
            p.register_post_accumulate_grad_hook(mask_grad(m))

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        if variant == "foreach-uint8":
            torch._foreach_mul_([p.grad for p in weights], u8)
        elif variant == "foreach-float32":
            torch._foreach_mul_([p.grad for p in weights], f32)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--steps", type=int, default=400, help="steps per measurement")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 1, 40, generator=g), torch.randint(0, 10, (128,), generator=g)
    variants = ["none", "foreach-uint8", "foreach-float32", "tensor-hook", "post-accumulate-hook"]
    steps = {v: make_step(v, x, y) for v in variants}
    times: Dict[str, list] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            f = steps[v]
            for _ in range(10):
                f()
            c0 = time.process_time()
            for _ in range(args.steps):
                f()
            times[v].append((time.process_time() - c0) / args.steps)
    print(f"mlp (40-300-100-10), batch 128, density 0.1, {args.threads} thread(s), "
          f"{args.repeats} repeats x {args.steps} steps")
    for v in variants:
        ratio = statistics.median(a / b - 1 for a, b in zip(times[v], times["none"]))
        print(f"  {v:22s} {1e6 * statistics.median(times[v]):7.1f} us/step  {100 * ratio:+.1f}% over unmasked")


if __name__ == "__main__":
    main()
