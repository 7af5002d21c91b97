"""One full RigL structure update (drop + grow over every layer, commit included).

Measures the wall time of the whole update path of ``regrow.RigL`` (grow scores,
drop scores, prune, grow, commit with optimizer-state zeroing and IoU/survival
metrics) on WRN-22-2 (1.1M parameters) and torchvision ResNet-50 (25.6M), prints
ns per parameter for both (how it scales), and checks every mask against a plain
per-layer top-k (stable sorts: ties broken by the lowest index, as regrow promises).

    .venv/bin/python benchmarks/bench_update_speed.py [--repeats 9] [--density 0.1]

Goals (issue 2): <= 25 ms for WRN-22-2 and <= 0.3 s for ResNet-50 on the 2-core CPU.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import regrow


# ---- WRN-22-2 (Zagoruyko & Komodakis 2016), CIFAR stem, no torchvision needed ----------
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = torch.relu(self.bn1(x))
        y = self.conv2(torch.relu(self.bn2(self.conv1(o))))
        return y + (x if self.short is None else self.short(o))


def wrn(depth: int = 22, width: int = 2, num_classes: int = 10) -> nn.Module:
    n = (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    layers = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)]
    cin = widths[0]
    for g, stride in zip(range(1, 4), (1, 2, 2)):
        for i in range(n):
            layers.append(_Block(cin, widths[g], stride if i == 0 else 1))
            cin = widths[g]
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50(weights=None)


# ---- the reference: plain per-layer top-k with stable sorts ----------------------------
def reference_update(weights, grads, masks, counts):
    out = {}
    for n in masks:
        w, g, m = weights[n].reshape(-1).abs(), grads[n].reshape(-1).abs(), masks[n].reshape(-1)
        k = counts[n]
        act = torch.nonzero(m).squeeze(1)
        drop = act[torch.sort(w[act], stable=True).indices[:k]]
        after = m.clone()
        after[drop] = False
        inact = torch.nonzero(~after).squeeze(1)
        grow = inact[torch.sort(g[inact], descending=True, stable=True).indices[:k]]
        new = after.clone()
        new[grow] = True
        out[n] = new.view(masks[n].shape)
    return out


def plain_topk_update(method, step):
    """The same update written the plain way (per-layer ``torch.topk`` over the masked
    scores, then the same weight/momentum zeroing): the timing reference of issue 2
    (28 ms / 0.68 s measured there). torch.topk's tie order is unspecified, so this
    is timed only; exactness is checked against ``reference_update``."""
    counts = method.drop_counts(method.update_fraction(step))
    new_masks = {}
    for n in method.names:
        p, m, k = method.params[n], method.state.masks[n], counts[n]
        w = torch.where(m, p.detach().abs(), torch.tensor(float("inf"))).view(-1)
        after = m.clone().view(-1)
        after[torch.topk(w, k, largest=False).indices] = False
        g = torch.where(after, torch.tensor(-1.0), p.grad.abs().view(-1))
        new = after.clone()
        new[torch.topk(g, k).indices] = True
        new_masks[n] = new.view(m.shape)
    for n, new in new_masks.items():
        p, old = method.params[n], method.state.masks[n]
        with torch.no_grad():
            p.mul_(old & new)
        buf = method.optimizer.state[p].get("momentum_buffer")
        if buf is not None:
            buf.masked_fill_(old ^ new, 0)
    return new_masks


def time_updates(name: str, model: nn.Module, density: float, repeats: int, check: bool):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    total = 1000
    method = regrow.create("rigl", model, opt, density=density, distribution="erk",
                           total_steps=total, update_interval=1, alpha=0.3)
    gen = torch.Generator().manual_seed(1)
    params = method.params
    n_sparse = sum(p.numel() for p in params.values())
    for p in model.parameters():  # momentum buffers exist, as in training
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    method.apply_masks()
    times, plain = [], []
    step = 1
    for r in range(repeats + 1):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=gen)
            with torch.no_grad():  # fresh weights with the mask's zeros, like after a masked step
                p.add_(torch.randn(p.shape, generator=gen) * 1e-3).mul_(method.state.masks[_name(params, p)])
        if check and r == 0:
            ref_in = ({n: params[n].detach().clone() for n in params},
                      {n: params[n].grad.clone() for n in params},
                      {n: m.clone() for n, m in method.state.masks.items()},
                      method.drop_counts(method.update_fraction(step)))
        saved = {n: (params[n].detach().clone(), opt.state[params[n]]["momentum_buffer"].clone())
                 for n in params}
        t0 = time.perf_counter()
        plain_topk_update(method, step)
        dt_plain = time.perf_counter() - t0
        with torch.no_grad():  # undo: the regrow update starts from the same state
            for n, (w, buf) in saved.items():
                params[n].copy_(w)
                opt.state[params[n]]["momentum_buffer"].copy_(buf)
        del saved
        t0 = time.perf_counter()
        method._grow_scores = method.grow_scores(step)
        method.after_step(step)
        dt = time.perf_counter() - t0
        if check and r == 0:
            ref = reference_update(*ref_in)
            bad = [n for n in ref if not torch.equal(ref[n], method.state.masks[n])]
            if bad:
                raise SystemExit(f"{name}: masks differ from plain top-k in {bad}")
        method.pop_metrics()
        if r > 0:  # the first one warms up allocator and kernels
            times.append(dt)
            plain.append(dt_plain)
    med = statistics.median(times)
    ratio = statistics.median(t / q for t, q in zip(times, plain))
    print(f"{name:10s} sparse params {n_sparse / 1e6:6.2f}M  update median {med * 1e3:8.1f} ms "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, n={len(times)})  "
          f"{med / n_sparse * 1e9:5.2f} ns/param  masks == plain top-k: {'yes' if check else 'unchecked'}")
    print(f"{'':10s} plain per-layer torch.topk update, same run: median {statistics.median(plain) * 1e3:8.1f} ms; "
          f"regrow/plain ratio median {ratio:.3f}")
    return med, n_sparse, ratio


def _name(params, p):
    for n, q in params.items():
        if q is p:
            return n
    raise KeyError


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, density {args.density}, ERK, alpha 0.3")
    a = time_updates("WRN-22-2", wrn(), args.density, args.repeats, True)
    b = time_updates("ResNet-50", resnet50(), args.density, args.repeats, True)
    # issue 2 measured the plain way at 28 ms / 0.68 s here: the goals as ratios are 25/28, 0.3/0.68
    print(f"goals as ratios to plain torch.topk (load-independent): WRN-22-2 {a[2]:.3f} <= {25 / 28:.3f} "
          f"{'met' if a[2] <= 25 / 28 else 'MISSED'}, ResNet-50 {b[2]:.3f} <= {0.3 / 0.68:.3f} "
          f"{'met' if b[2] <= 0.3 / 0.68 else 'MISSED'}")
    print(f"scaling: {b[1] / a[1]:.1f}x parameters -> {b[0] / a[0]:.1f}x time "
          f"(goals: WRN-22-2 <= 25 ms {'met' if a[0] <= 0.025 else 'MISSED'}, "
          f"ResNet-50 <= 300 ms {'met' if b[0] <= 0.3 else 'MISSED'})")


if __name__ == "__main__":
    main()
