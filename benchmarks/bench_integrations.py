"""Training-step time of a tiny BERT under the Hugging Face Trainer: RigL at density
0.1 through regrow's integration (RegrowTrainer + RegrowCallback) over the dense model
in a plain Trainer.

Model: BERT-tiny's shape (2 layers, hidden 128, 2 heads, intermediate 512, vocab
30522, built from a config, nothing downloaded) for sequence classification; batch
16 × 64 tokens, AdamW (the Trainer's default), max_grad_norm 1.0 (the default, so
the integration's masked clip runs every step), one thread.

Every round trains three fresh Trainers in rotating order — dense, RigL, and a second
dense one as a control — for ``--steps`` optimizer steps each (structure updates
every ``--update-interval`` steps fall inside the block). A callback times each step
from ``on_step_begin`` to ``on_step_end`` (forward, backward, clip, optimizer step with
regrow's hooks, scheduler, zero_grad), skipping the first ``--warmup`` steps of a block.
The figure is the median over rounds of median(t_rigl) / median(t_dense), with a
bootstrap 95% CI; dense2 / dense shows the harness's own noise. The mean-time ratio
(update steps included) is printed too. Steps are timed by the thread's CPU time
(what the step costs, robust to other processes sharing the cores) and by wall time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_integrations.py [--rounds 20] [--steps 24]

Goal (issue 10): median ratio <= 1.03.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch

from bench_step_overhead import bootstrap_ci

warnings.filterwarnings("ignore")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per Trainer per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps of each block")
    ap.add_argument("--update-interval", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)

    import transformers
    from transformers import (BertConfig, BertForSequenceClassification, PrinterCallback, Trainer,
                              TrainerCallback, TrainingArguments)

    from regrow.integrations.transformers import RegrowCallback, RegrowTrainer

    transformers.logging.set_verbosity_error()
    n = args.batch * (args.steps + 1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (n, args.seq), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": labels[i]}

    config = BertConfig(vocab_size=args.vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=512, num_labels=2)

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, *a, **k):
            self.t0 = (time.thread_time(), time.perf_counter())

        def on_step_end(self, *a, **k):
            self.times.append((time.thread_time() - self.t0[0], time.perf_counter() - self.t0[1]))

    out = tempfile.mkdtemp(prefix="bench_integrations_")
    targs = TrainingArguments(out, use_cpu=True, per_device_train_batch_size=args.batch, max_steps=args.steps,
                              report_to=[], disable_tqdm=True, save_strategy="no", logging_strategy="no",
                              seed=0, dataloader_num_workers=0)

    def run(kind):
        torch.manual_seed(0)
        model = BertForSequenceClassification(config)
        timer = Timer()
        if kind == "rigl":
            cbs = [RegrowCallback("rigl", density=0.1, update_interval=args.update_interval), timer]
            tr = RegrowTrainer(model=model, args=targs, train_dataset=Data(), callbacks=cbs)
        else:
            tr = Trainer(model=model, args=targs, train_dataset=Data(), callbacks=[timer])
        tr.remove_callback(PrinterCallback)
        tr.train()
        if kind == "rigl":
            sp = cbs[0].sparsity
            assert abs(sp.density() - 0.1) < 0.01 and sp.state.step == args.steps
        return timer.times[args.warmup:]

    kinds = ["dense", "rigl", "dense2"]
    clocks = {"thread CPU time": 0, "wall time": 1}
    med = {(c, k): [] for c in clocks for k in kinds}
    mean = {(c, k): [] for c in clocks for k in kinds}
    for r in range(args.rounds):
        order = kinds[r % 3:] + kinds[:r % 3]
        for k in order:
            ts = run(k)
            for c, i in clocks.items():
                med[c, k].append(statistics.median(t[i] for t in ts))
                mean[c, k].append(statistics.fmean(t[i] for t in ts))
    print(f"tiny BERT (vocab {args.vocab}, batch {args.batch}x{args.seq}), HF Trainer {transformers.__version__}, "
          f"1 thread, {args.rounds} rounds x {args.steps} steps (first {args.warmup} untimed); RigL density 0.1, "
          f"update every {args.update_interval} steps")
    for c in clocks:
        ratio = [s / d for s, d in zip(med[c, "rigl"], med[c, "dense"])]
        control = [s / d for s, d in zip(med[c, "dense2"], med[c, "dense"])]
        amort = statistics.fmean(mean[c, "rigl"]) / statistics.fmean(mean[c, "dense"])
        lo, hi = bootstrap_ci(ratio)
        clo, chi = bootstrap_ci(control)
        print(f"[{c}] dense step {statistics.median(med[c, 'dense']) * 1e3:.1f} ms, rigl step "
              f"{statistics.median(med[c, 'rigl']) * 1e3:.1f} ms")
        print(f"[{c}] ratio rigl/dense: median {statistics.median(ratio):.3f}  95% CI [{lo:.3f}, {hi:.3f}];  "
              f"control dense2/dense {statistics.median(control):.3f} [{clo:.3f}, {chi:.3f}];  "
              f"amortised (means, updates included) {amort:.3f}")


if __name__ == "__main__":
    main()
