"""CLI: ``regrow export RUN --format slim|sparse|nm|fanin`` and ``regrow bench MODEL_OR_RUN``
(registered in :data:`regrow.cli.EXTERNAL`). ``--slim`` stays as ``--format slim``."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict

import torch

from ..deploy.api import FORMATS


def load_sparse_run(run_dir: str) -> Dict[str, Any]:
    """The trained model of a run, its masks, input shape and a builder for :func:`load`."""
    from ..train import checkpoint as ckpt
    from ..train import config as C
    from ..train.data import load_dataset
    from ..train.models import build_model

    from ..train.lock import RunLock

    with RunLock(run_dir, "regrow export", read_only_ok=True):  # no trainer rewrites the run meanwhile
        state = ckpt.load(Path(run_dir) / "checkpoint.pt")
    cfg = C.from_dict(state["config"])
    C.check_stored_data_root(cfg.data_root, run_dir)  # a downloaded run brings no data of its own
    bundle = load_dataset(cfg.data, cfg.data_root, seed=cfg.seed, augment=False, image_size=cfg.image_size,
                          synthetic=cfg.synthetic, options=cfg.data_options)
    shape, num_classes = tuple(bundle.input_shape), int(bundle.num_classes)
    options = dict(cfg.model_options or {})
    model = build_model(cfg.model, shape, num_classes, **options)
    counters = state["method"].get("state", {}).get("counters", {})
    if "slimmed" in counters:
        raise ValueError(f"run {run_dir} was slimmed during training; export it with --format slim")
    model.load_state_dict(state["model"])
    model.eval()
    masks = state["method"].get("state", {}).get("masks") or None
    builder = {"model": cfg.model, "input_shape": list(shape), "num_classes": num_classes, "options": options}
    return {"model": model, "masks": masks, "shape": shape, "builder": builder, "config": cfg}


def _positive(name: str, v) -> None:
    if v is not None and v < 1:
        raise ValueError(f"--{name} must be a positive integer, got {v}")


# ---- export ------------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory holding checkpoint.pt")
    p.add_argument("--format", default=None, choices=FORMATS,
                   help="slim: remove masked channels (channel methods); sparse: CSR/BSR where it is "
                        "faster than dense at --batch-size (measured per layer); fanin: condensed "
                        "constant fan-in layers; nm: 2:4 semi-structured (CUDA)")
    p.add_argument("--slim", action="store_true", help="same as --format slim")
    p.add_argument("--out", required=True, help="output file; the per-layer report goes to OUT.json")
    p.add_argument("--batch-size", type=int, action="append", default=None,
                   help="batch size to choose kernels for (repeat for several; default 1). With --measure "
                        "the first one is timed")
    p.add_argument("--threads", type=int, default=1, help="CPU threads while timing (default 1)")
    p.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds per layer (median kept)")
    p.add_argument("--measure", action="store_true", help="also time the dense and exported models here")


def _export(args: argparse.Namespace) -> int:
    fmt = args.format or ("slim" if args.slim else None)
    if fmt is None:
        raise ValueError("--format is required: one of " + ", ".join(FORMATS) + " (--slim means --format slim)")
    if args.slim and fmt != "slim":
        raise ValueError(f"--slim contradicts --format {fmt}")
    for f in ("threads", "repeats"):
        _positive(f, getattr(args, f))
    for b in args.batch_size or ():
        _positive("batch-size", b)
    if fmt == "slim":
        from .structured import _export as slim_export

        args.slim = True
        args.batch_size = (args.batch_size or [1])[0]
        return slim_export(args)
    from ..deploy.api import export

    run = load_sparse_run(args.run_dir)
    if fmt == "nm":   # 2:4 kernels run on the GPU (export raises its own error without one)
        from ..deploy.kernels import require_cuda

        require_cuda("format 'nm'")
        run["model"] = run["model"].cuda()
    res = export(run["model"], args.out, format=fmt, input_shape=run["shape"],
                 batch_sizes=args.batch_size or [1], masks=run["masks"], threads=args.threads,
                 repeats=args.repeats, builder=run["builder"])
    info = res.summary()
    if args.measure:
        from ..deploy.bench import bench, table

        r = bench(run["model"], run["shape"], formats=(fmt,), batch_sizes=args.batch_size or [1],
                  threads=args.threads, masks=run["masks"], hand=False)
        info["measured"] = r["rows"]
        print(table(r))
        with open(args.out + ".json", "w") as f:
            json.dump(info, f, indent=1)
    print(f"{'layer':<28} {'density':>7}  " + "  ".join(f"dense/sparse ms @{b}" for b in (args.batch_size or [1]))
          + "  chosen")
    for e in info["layers"]:
        cells = "  ".join(f"{e['dense_ms'][k]:.3f}/{e['sparse_ms'].get(k, float('nan')):.3f}".rjust(19)
                          for k in e["dense_ms"])
        print(f"{e['layer']:<28} {e['density']:7.3f}  {cells}  {e['chosen']} {e['kernels'] or ''}")
    print(f"file {info['bytes_export'] / 1e6:.2f} MB vs dense {info['bytes_dense'] / 1e6:.2f} MB "
          f"({info['size_ratio']:.2f}x); max |Δ| vs masked model {info['max_abs_diff']:.2g}")
    print(f"exported -> {args.out} (per-layer report: {args.out}.json; load with regrow.load_export)")
    return 0


# ---- bench --------------------------------------------------------------------------------
def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a run directory (checkpoint.pt) or a file written by regrow export")
    p.add_argument("--formats", default="sparse,fanin",
                   help="comma-separated export formats to time (sparse, fanin, nm); a format the model "
                        "does not fit is reported as skipped")
    p.add_argument("--batch-size", type=int, default=128, help="the user batch size (batch 1 is always timed)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: steadiest on a shared machine)")
    p.add_argument("--repeats", type=int, default=21, help="interleaved rounds (median kept)")
    p.add_argument("--out", default=None, help="directory for bench.md, bench.json and bench.png "
                   "(default: the run directory, or next to the file)")


def _bench(args: argparse.Namespace) -> int:
    from ..deploy.api import read
    from ..deploy.bench import bench, plot, table

    for f in ("batch_size", "threads", "repeats"):
        _positive(f.replace("_", "-"), getattr(args, f))
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS or f == "slim"]
    if bad or not formats:
        raise ValueError(f"--formats takes a comma-separated list of sparse, fanin, nm; got {args.formats!r}")
    target = Path(args.target)
    if target.is_dir():
        run = load_sparse_run(str(target))
        model, shape, masks, out_dir = run["model"], run["shape"], run["masks"], target
    elif target.is_file():
        payload = read(target)
        b = payload.get("builder")
        if not b:
            raise ValueError(f"{target} stores no model builder; bench its run directory instead")
        from ..train.models import build_model
        from ..deploy.api import load

        sparse = load(target)
        model = build_model(b["model"], tuple(b["input_shape"]), int(b["num_classes"]), **(b.get("options") or {}))
        dense_sd = {}
        for name, mod in sparse.named_modules():   # the dense model this file came from
            if hasattr(mod, "dense_weight"):
                orig = model.get_submodule(name)
                w = mod.dense_weight()
                dense_sd[f"{name}.weight"] = w.t() if orig.weight.shape != w.shape and orig.weight.dim() == 2 \
                    else w.reshape(orig.weight.shape)
                if mod.bias is not None:
                    dense_sd[f"{name}.bias"] = mod.bias
        dense_sd.update({k: v for k, v in sparse.state_dict().items()
                         if k in model.state_dict() and k not in dense_sd})
        model.load_state_dict(dense_sd)
        model.eval()
        shape, masks, out_dir = tuple(b["input_shape"]), None, target.parent
    else:
        raise FileNotFoundError(f"{target} is neither a run directory nor an exported file")
    batches = sorted({1, args.batch_size})
    res = bench(model, shape, formats=formats, batch_sizes=batches, threads=args.threads,
                repeats=args.repeats, masks=masks)
    out = Path(args.out) if args.out else out_dir
    os.makedirs(out, exist_ok=True)
    md = (f"{args.threads} thread(s); medians of {args.repeats} interleaved rounds; 'dense (control)' is a "
          f"second copy of the dense model (its ×dense shows the noise)\n\n" + table(res))
    (out / "bench.md").write_text(md + "\n")
    (out / "bench.json").write_text(json.dumps(res, indent=1))
    plot(res, str(out / "bench.png"), title=f"{target.name}: {args.threads} thread(s)")
    print(md)
    print(f"-> {out / 'bench.md'}, bench.json, bench.png")
    return 0


def _commands():
    from . import Command

    return [
        Command("export", "export a trained run's model: --format slim|sparse|nm|fanin", _export_args, _export),
        Command("bench", "time dense vs each export format at batch 1 and a user batch", _bench_args, _bench),
    ]


COMMANDS = _commands()
