"""Cost of the optimizer-hook step contract against the step regrow had before it.

Three identical RigL-maintained LeNet-5s (28x28, batch 128, SGD with momentum, density
0.1 ERK) train side by side in one process:

* hooks: the method attached to its optimizer; the loop calls ``optimizer.step()``,
  whose pre/post hooks mask the gradients, zero what must be zero and update the
  structure (the path AMP, Lightning and HF Trainer take);
* legacy: the method detached from its optimizer and stepped by the sequence the old
  ``sparsity.step()`` ran inline (before_step, mask gradients, optimizer.step, re-mask
  if needed, after_step) — the reference;
* control: a second legacy model, whose ratio to the first shows the harness's spread.

Every round runs a block of steps on each in rotating order; the figure is the median
over rounds of t_hooks / t_legacy with a bootstrap 95% CI (issue 10 goal: <= 1.01). On a
shared machine that ratio's CI is wider than the effect, so the script also times the
step call alone, both paths on one model with the same gradients, alternating.

    .venv/bin/python benchmarks/bench_step_hooks.py [--rounds 60] [--steps 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import regrow
from bench_step_overhead import bootstrap_ci, lenet5
from regrow.optim import mask_gradients_, mask_parameters_, preserves_zeros


def legacy_step(method) -> None:
    """What ``SparseMethod.step()`` did before the step contract moved into hooks."""
    step = method.state.step + 1
    method.before_step(step)
    params, masks = method._step_operands()
    mask_gradients_(params, masks)
    method.optimizer.step()
    if not preserves_zeros(method.optimizer):
        mask_parameters_(params, masks)
    method.state.step = step
    method.after_step(step)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--steps", type=int, default=5, help="steps per model per round")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--update-interval", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--micro", type=int, default=400, help="alternating pairs of the step-call comparison")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {k: lenet5() for k in ("hooks", "legacy", "control")}
    for m in models.values():
        m.load_state_dict(models["hooks"].state_dict())
    total = args.rounds * args.steps + 10
    opts, methods = {}, {}
    for k, m in models.items():
        opts[k] = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        methods[k] = regrow.create("rigl", m, opts[k], density=args.density, distribution="erk",
                                   total_steps=10 * total, update_interval=args.update_interval)
        if k != "hooks":
            methods[k].detach()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g))
               for _ in range(8)]

    calls = {k: [] for k in models}   # backward + step alone: the low-noise view of the difference

    def runner(k):
        model, opt, method = models[k], opts[k], methods[k]
        step = opt.step if k == "hooks" else (lambda: legacy_step(method))

        def run(i):
            x, y = batches[i % len(batches)]
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            t0 = time.perf_counter()
            loss.backward()     # the hook path adds a flag-setting gradient hook per sparse weight
            step()
            calls[k].append(time.perf_counter() - t0)
        return run

    runs = [(k, runner(k)) for k in models]
    for i in range(5):  # warm-up
        for _, fn in runs:
            fn(i)
    for v in calls.values():
        v.clear()
    ratios, controls, i = [], [], 0
    t_all = {k: 0.0 for k in models}
    for r in range(args.rounds):
        order = runs[r % 3:] + runs[: r % 3]
        if (r // 3) % 2:
            order = order[::-1]
        took = {}
        for tag, fn in order:
            t0 = time.perf_counter()
            for j in range(args.steps):
                fn(i + j)
            took[tag] = time.perf_counter() - t0
        i += args.steps
        for k in took:
            t_all[k] += took[k]
        ratios.append(took["hooks"] / took["legacy"])
        controls.append(took["control"] / took["legacy"])
    same = all(torch.equal(methods["hooks"].state.masks[n], methods["legacy"].state.masks[n])
               for n in methods["hooks"].names)
    # the difference itself, free of forward/backward noise: the same model's step driven
    # alternately through the hooks and through the legacy sequence, gradients fixed
    m, opt = methods["legacy"], opts["legacy"]
    x, y = batches[0]
    opt.zero_grad()
    F.cross_entropy(models["legacy"](x), y).backward()
    grads = [p.grad.clone() for p in models["legacy"].parameters()]
    hooked, plain = [], []
    for r in range(args.micro):
        for kind in (("hooks", "legacy") if r % 2 else ("legacy", "hooks")):
            for p, g in zip(models["legacy"].parameters(), grads):
                p.grad.copy_(g)
            if kind == "hooks":
                m.attach()
                t0 = time.perf_counter()
                opt.step()
                hooked.append(time.perf_counter() - t0)
                m.detach()
            else:
                t0 = time.perf_counter()
                legacy_step(m)
                plain.append(time.perf_counter() - t0)
    lo, hi = bootstrap_ci(ratios)
    clo, chi = bootstrap_ci(controls)
    med = statistics.median(ratios)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; LeNet-5 28x28 batch 128, RigL "
          f"density {args.density} ERK, ΔT={args.update_interval}; {args.rounds} rounds x {args.steps} steps; "
          f"masks identical between the two paths: {same}")
    print(f"median ratio hooks/legacy {med:.4f}  95% CI [{lo:.4f}, {hi:.4f}]  goal <= 1.01: "
          f"{'met' if med <= 1.01 else 'MISSED'}")
    print(f"control legacy2/legacy {statistics.median(controls):.4f}  95% CI [{clo:.4f}, {chi:.4f}]")
    step_ms = t_all["legacy"] / (args.rounds * args.steps) * 1e3
    c = {k: statistics.median(v) * 1e3 for k, v in calls.items()}
    extra = c["hooks"] - c["legacy"]
    dh, dl = statistics.median(hooked) * 1e3, statistics.median(plain) * 1e3
    print(f"step call alone, same model and gradients, {args.micro} alternating pairs (median): hooks "
          f"{dh:.4f} ms, legacy {dl:.4f} ms -> {dh - dl:+.4f} ms = {1 + (dh - dl) / step_ms:.4f}x of a "
          f"{step_ms:.1f} ms training step (goal <= 1.01)")
    print(f"backward + step alone (median): hooks {c['hooks']:.3f} ms, legacy {c['legacy']:.3f} ms, "
          f"control {c['control']:.3f} ms -> {extra:+.3f} ms = {1 + extra / step_ms:.4f}x of a "
          f"{step_ms:.1f} ms training step")


if __name__ == "__main__":
    main()
