"""CLI subcommands of the structured half: ``regrow latency-table`` and ``regrow export``
(registered in :data:`regrow.cli.EXTERNAL`)."""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any, Dict, Tuple

import torch


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be one of auto, cpu, cuda; got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    return torch.device(name)


def _model_and_shape(model: str, data: str, data_root, image_size, seed: int = 0,
                     synthetic=None) -> Tuple[torch.nn.Module, Tuple[int, ...]]:
    from ..train.data import load_dataset
    from ..train.models import build_model

    bundle = load_dataset(data, data_root, seed=seed, augment=False, image_size=image_size, synthetic=synthetic)
    return build_model(model, bundle.input_shape, bundle.num_classes), tuple(bundle.input_shape)


# ---- latency-table -------------------------------------------------------------------
def _table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name (as for train), e.g. resnet20 or tv:resnet50")
    p.add_argument("--data", required=True, help="dataset name (gives the input shape and classes)")
    p.add_argument("--data-root", default=None, help="dataset directory for file-based datasets")
    p.add_argument("--image-size", type=int, default=None, help="resize 2-D images to this side length")
    p.add_argument("--batch-size", type=int, required=True, help="batch size the latencies are measured at")
    p.add_argument("--out", required=True, help="table file (JSON); existing entries for this device are kept")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--points", type=int, default=8, help="channel counts per dimension in the grid")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before each measurement")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per point (the median is kept)")
    p.add_argument("--clock", default="wall", help="wall | cpu (CPU time of the one timing thread: "
                   "immune to other processes' load; implies --threads 1)")
    p.add_argument("--flush-denormal", action="store_true",
                   help="time with torch.set_flush_denormal(True) (use the same setting when deploying)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads while timing (part of the device key; 1 resists a loaded machine best)")


def _table(args: argparse.Namespace) -> int:
    from ..structured.latency import LatencyTable, build_table, model_layers

    for f in ("batch_size", "points", "repeats"):
        if getattr(args, f) < 1 or (f == "points" and args.points < 2):
            raise ValueError(f"--{f.replace('_', '-')} must be a positive integer (points ≥ 2), got {getattr(args, f)}")
    device = _device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        torch.set_num_threads(1)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    model, shape = _model_and_shape(args.model, args.data, args.data_root, args.image_size)
    model = model.to(device)
    layers = model_layers(model, torch.zeros((1,) + shape, device=device))
    table = LatencyTable.load(args.out, device) if Path(args.out).exists() else None
    table = build_table(layers, args.batch_size, device, args.points, args.warmup, args.repeats,
                        table=table, progress=True, clock=args.clock, model=model, input_shape=shape)
    table.save(args.out)
    print(f"latency table: {len(table.entries)} layer signatures on {table.device} -> {args.out}")
    return 0


# ---- export ------------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory holding checkpoint.pt")
    p.add_argument("--slim", action="store_true", help="physically remove masked channels")
    p.add_argument("--out", required=True, help="output model file (torch.save of an fx GraphModule)")
    p.add_argument("--measure", action="store_true", help="also time the dense and exported models here")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for --measure")


def load_run(run_dir: str) -> Dict[str, Any]:
    """Model (masked or slimmed as trained), groups, channels and example input of a run."""
    from ..train import checkpoint as ckpt
    from ..train import config as C
    from ..structured.groups import find_groups
    from ..structured.slim import slim_

    path = Path(run_dir) / "checkpoint.pt"
    state = ckpt.load(path)
    cfg = C.from_dict(state["config"])
    C.check_stored_data_root(cfg.data_root, run_dir)  # a downloaded run brings no data of its own
    model, shape = _model_and_shape(cfg.model, cfg.data, cfg.data_root, cfg.image_size, cfg.seed, cfg.synthetic)
    msd = state["method"]
    buffers = msd.get("state", {}).get("buffers", {})
    if "channels" not in buffers:
        raise ValueError(f"run {run_dir} used method '{msd.get('method')}', which has no channel structure; "
                         "--slim needs a channel method (halp, or iee with structure channel)")
    counters = msd["state"].get("counters", {})
    dense = copy.deepcopy(model)   # the architecture as built: what a slimmed model is timed against
    if "slimmed" in counters:
        slim_(model, counters["slimmed"])
    model.load_state_dict(state["model"])
    model.eval()
    example = torch.zeros((1,) + shape)
    groups = find_groups(model, example)
    channels = {k: v.to(torch.bool) for k, v in buffers["channels"].items()}
    if set(channels) != {g.name for g in groups}:
        raise ValueError(f"channel groups stored in {path} do not match model '{cfg.model}' "
                         f"(stored {sorted(channels)[:3]}..., traced {[g.name for g in groups][:3]}...)")
    return {"model": model, "dense": dense.eval(), "groups": groups, "channels": channels, "shape": shape,
            "config": cfg}


def _export(args: argparse.Namespace) -> int:
    from ..structured.latency import measure_model
    from ..structured.slim import export

    from ..train.lock import RunLock

    with RunLock(args.run_dir, "regrow export", read_only_ok=True):  # no trainer rewrites the run meanwhile
        run = load_run(args.run_dir)
    model, example = run["model"], torch.zeros((1,) + run["shape"])
    info = export(model, run["groups"], run["channels"], example, args.out)
    if args.measure:
        x = torch.randn((args.batch_size,) + run["shape"])
        exported = torch.load(args.out, weights_only=False)   # the file this command just wrote
        # against the dense architecture, also when the run already slimmed in training
        info["measured_dense"] = measure_model(run["dense"], x)
        info["measured_export"] = measure_model(exported, x)
        info["speedup"] = info["measured_dense"]["latency_ms"] / info["measured_export"]["latency_ms"]
        with open(args.out + ".json", "w") as f:
            json.dump(info, f, indent=1)
    summary = {k: v for k, v in info.items() if k not in ("groups", "layers")}
    print(json.dumps(summary, indent=1))
    print(f"exported -> {args.out} (kept channels: {args.out}.json)")
    return 0


def _commands():
    from . import Command

    return [
        Command("latency-table", "measure a latency lookup table for a model on this device",
                _table_args, _table),
        # `regrow export` itself lives in regrow.cli.deploy (--format slim calls _export)
    ]


COMMANDS = _commands()
