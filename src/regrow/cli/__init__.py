"""The ``regrow`` command: ``train``, ``compare``, ``resume``, ``report`` (and more).

Values resolve as defaults < ``--config FILE.yaml`` < flags. Method options go
through ``--opt key=value`` (repeatable, YAML-typed values) or the common flags
``--update-interval``/``--alpha``/``--end-fraction``, and for the channel methods
``--latency-target``/``--latency-ms``/``--cost``/``--latency-table``/
``--slim-after-updates``. Every value is checked before
any training starts; a bad one exits with status 2 and a message naming it.

Adding a subcommand from another module is a one-line edit of ``EXTERNAL``: name
``"module:ATTR"`` where ``ATTR`` is a sequence of :class:`Command`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shlex
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from ..version import __version__
from ..train import config as C


class Command(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# Subcommands defined elsewhere: "module:ATTR" with ATTR a sequence of Command.
EXTERNAL: Sequence[str] = ("regrow.cli.structured:COMMANDS", "regrow.cli.deploy:COMMANDS")

# Method options that get their own flag (they are common to the dynamic methods).
COMMON_METHOD_FLAGS = {
    "update_interval": (int, "ΔT: optimizer steps between structure updates"),
    "alpha": (float, "initial update fraction α"),
    "end_fraction": (float, "stop structure updates at this fraction of training (T_end / T)"),
}
# Options of the channel (latency-constrained) methods, first-class flags:
# flag name -> (method option, type, help); type bool is an on-switch.
CHANNEL_METHOD_FLAGS = {
    "latency_target": ("latency_target", float,
                       "channel methods: latency target as a fraction of the dense model's, in (0, 1) "
                       "(e.g. 0.5; of its MACs with --cost flops)"),
    "latency_ms": ("latency_ms", float,
                   "channel methods: latency target in absolute milliseconds on this device (instead of "
                   "--latency-target; needs --cost latency)"),
    "cost": ("cost", str, "channel methods: cost model, latency (a table measured on this device) | "
                          "flops (MACs, device-independent)"),
    "latency_table": ("latency_table", str,
                      "channel methods: latency table FILE from 'regrow latency-table' (empty: measure "
                      "the needed entries now)"),
    "slim_after_updates": ("slim_after", bool,
                           "channel methods (iee --structure channel, halp): once the structure stops "
                           "changing, slim the model in place so the remaining epochs run on the smaller "
                           "network (under torchrun every rank slims at the same step and DDP is rebuilt)"),
}
# Run fields with their own handling (not a plain --flag VALUE).
SPECIAL = ("method_options", "model_options", "data_options", "synthetic", "out", "method", "density", "seed")


def _field_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(C.RunConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_run_arguments(p: argparse.ArgumentParser, *, single: bool = True) -> None:
    """Flags for every RunConfig field; unset flags stay out of the namespace."""
    S = argparse.SUPPRESS
    p.add_argument("--config", metavar="FILE.yaml", default=S,
                   help="YAML recipe (keys are the long option names with '_'); flags override it")
    from ..methods import METHODS
    from ..train.data import DATASETS
    from ..train.models import MODELS

    names = {"method": METHODS.names(), "model": MODELS.names() + ["tv:<torchvision name>"],
             "data": DATASETS.names()}
    if single:
        p.add_argument("--method", default=S, help=f"sparsity method: {', '.join(names['method'])} (default: rigl)")
        p.add_argument("--density", type=float, default=S, help="fraction of sparse weights kept, in (0, 1] (default: 0.1)")
        p.add_argument("--seed", type=int, default=S, help="seed of model init, masks and data order (default: 0)")
        p.add_argument("--out", default=S, help="run directory (default: runs/run)")
        p.add_argument("--overwrite", action="store_true", help="start over in an existing run directory")
    for f in dataclasses.fields(C.RunConfig):
        if f.name in SPECIAL:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(f)
        default = f.default
        text = f"{f.metadata['help']} (default: {default})"
        if f.name in names:
            text = f"{f.metadata['help']}: {', '.join(names[f.name])} (default: {default})"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=S, help=text)
        else:
            p.add_argument(flag, type=kind, default=S, help=text, metavar=f.name.upper())
    for name, (kind, text) in COMMON_METHOD_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=S, dest=f"mopt_{name}",
                       metavar=name.upper(), help=f"method option: {text}")
    for name, (_, kind, text) in CHANNEL_METHOD_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            p.add_argument(flag, action="store_true", default=S, dest=f"copt_{name}", help=text)
        else:
            p.add_argument(flag, type=kind, default=S, dest=f"copt_{name}",
                           metavar="FILE" if name == "latency_table" else name.upper(), help=text)
    p.add_argument("--opt", action="append", default=S, metavar="KEY=VALUE",
                   help="method option, repeatable (e.g. --opt update_interval=50 --opt criterion=gradient)")
    p.add_argument("--model-opt", action="append", default=S, metavar="KEY=VALUE", dest="model_opt",
                   help="model builder option, repeatable (e.g. --model-opt hidden=[64,32])")
    p.add_argument("--data-opt", action="append", default=S, metavar="KEY=VALUE", dest="data_opt",
                   help="option of the text datasets fortunes and text, repeatable (block_size, val_fraction)")
    p.add_argument("--synthetic", action="append", default=S, metavar="KEY=VALUE",
                   help="option of the synthetic dataset, repeatable (shape, num_classes, train_size, test_size, noise)")
    p.add_argument("--stop-after-steps", type=int, default=None, metavar="N",
                   help="testing: write a checkpoint after N optimizer steps and stop (continue with 'regrow resume')")


def flag_layer(args: argparse.Namespace) -> Dict[str, Any]:
    """The RunConfig values given as flags (method options under method_options)."""
    ns = vars(args)
    layer = {k: v for k, v in ns.items() if k in C.FIELDS and k not in ("method_options", "synthetic")}
    if ns.get("model_opt"):
        layer["model_options"] = dict(C.parse_opt(t) for t in ns["model_opt"])
    if ns.get("data_opt"):
        layer["data_options"] = dict(C.parse_opt(t) for t in ns["data_opt"])
    opts: Dict[str, Any] = {}
    for text in ns.get("opt", []) or []:
        k, v = C.parse_opt(text)
        opts[k] = v
    for name in COMMON_METHOD_FLAGS:
        if f"mopt_{name}" in ns:
            opts[name] = ns[f"mopt_{name}"]
    for name, (option, _, _) in CHANNEL_METHOD_FLAGS.items():
        if f"copt_{name}" in ns:
            opts[option] = ns[f"copt_{name}"]
    if opts:
        layer["method_options"] = opts
    if ns.get("synthetic"):
        layer["synthetic"] = dict(C.parse_opt(t) for t in ns["synthetic"])
    return layer


def file_layers(args: argparse.Namespace) -> tuple:
    if "config" not in vars(args):
        return {}, {}
    data = C.load_yaml(args.config)
    return C.split_sections(data, source=args.config)


def run_config(args: argparse.Namespace, **extra: Any) -> C.RunConfig:
    file_values, _ = file_layers(args)
    return C.build(file_values, flag_layer(args), extra)


def _check_stop(n: Optional[int]) -> None:
    if n is not None and n <= 0:
        raise ValueError(f"--stop-after-steps must be a positive integer, got {n}")


# ---- train ---------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from ..train.loop import train

    _check_stop(args.stop_after_steps)
    cfg = run_config(args)
    summary = train(cfg, overwrite=args.overwrite, stop_after_steps=args.stop_after_steps)
    _print_result(cfg, summary)
    return 0


def _print_result(cfg: C.RunConfig, summary: Dict[str, Any]) -> None:
    from ..report import run_table

    if "test_top1" in summary and _is_main():
        print(run_table([summary]))
        print(f"run directory: {cfg.out}")


def _is_main() -> bool:
    import os
    return os.environ.get("RANK", "0") == "0"


# ---- resume --------------------------------------------------------------------
def _resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory holding checkpoint.pt (or, for a run that stopped before "
                                   "its first checkpoint, config.yaml: it restarts from there)")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=None, help="no progress bar")
    p.add_argument("--device", default=None, help="override the device (auto | cpu | cuda | cuda:N)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="dataset directory to use instead of the one stored in the run (a stored root "
                        "inside the run directory is refused)")
    p.add_argument("--stop-after-steps", type=int, default=None, metavar="N",
                   help="testing: write a checkpoint after N optimizer steps in total and stop")


def _resume(args: argparse.Namespace) -> int:
    from ..train import checkpoint as ckpt
    from ..train.loop import CHECKPOINT, CONFIG, SUMMARY, train

    _check_stop(args.stop_after_steps)
    run_dir = Path(args.run_dir)
    extra: Dict[str, Any] = {"out": str(run_dir)}
    if args.quiet is not None:
        extra["quiet"] = args.quiet
    if args.device is not None:
        extra["device"] = args.device
    if args.data_root is not None:
        extra["data_root"] = args.data_root
    restart = (not (run_dir / CHECKPOINT).exists() and (run_dir / CONFIG).is_file()
               and not (run_dir / SUMMARY).exists())
    if restart:  # stopped before its first checkpoint: nothing to continue, start it again
        stored = C.load_yaml(str(run_dir / CONFIG))
    elif run_dir.is_dir() and not (run_dir / CHECKPOINT).exists() and not (run_dir / SUMMARY).exists():
        raise FileNotFoundError(
            f"checkpoint {run_dir / CHECKPOINT} does not exist and {run_dir} has no {CONFIG} either: its run "
            "stopped before writing anything; start it again with the same 'regrow train ... --out "
            f"{run_dir}' command")
    else:
        state = ckpt.load(run_dir / CHECKPOINT)
        stored = state["config"]
        del state
    if args.data_root is None:  # someone else's run may name a data root of its own
        C.check_stored_data_root(stored.get("data_root"), run_dir)
    cfg = C.build(stored, extra)
    if restart:
        if _is_main():
            print(f"{run_dir} has no checkpoint yet (its run stopped in the first epoch): "
                  f"starting it again from {run_dir / CONFIG}", flush=True)
        summary = train(cfg, overwrite=True, stop_after_steps=args.stop_after_steps)
    else:
        summary = train(cfg, resume=True, stop_after_steps=args.stop_after_steps)
    _print_result(cfg, summary)
    return 0


# ---- compare -------------------------------------------------------------------
def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default=None, help="comma-separated methods (or compare.methods in the YAML)")
    p.add_argument("--densities", default=None, help="comma-separated densities (default: 0.1)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0)")
    p.add_argument("--out", required=False, default=None,
                   help="compare directory; each cell runs in OUT/<method>-d<density>-s<seed>/ (default: runs/compare)")
    p.add_argument("--skip-done", action="store_true",
                   help="kept for old scripts: finished cells whose config matches are always kept")
    p.add_argument("--overwrite", action="store_true",
                   help="train every cell from scratch, also cells that are finished or were run "
                        "with other settings (without it such cells are refused with a list)")
    p.add_argument("--plan", nargs="?", const="-", default=None, metavar="FILE",
                   help="check the grid and write it as one command per cell ('regrow compare ... --cell I') "
                        "to FILE (no FILE or '-': stdout), training nothing; any scheduler (a Slurm array, "
                        "Ray, GNU parallel, xargs -P) runs the lines, then 'regrow report OUT' aggregates")
    p.add_argument("--cell", type=int, default=None, metavar="I",
                   help="run only cell I (0-based, the order of --plan) of the grid; no table is written "
                        "(other cells may be running): 'regrow report OUT' aggregates the finished ones")
    add_run_arguments(p, single=False)


def _split(text: Any, kind: Callable, option: str) -> List[Any]:
    items = text if isinstance(text, list) else str(text).split(",")
    try:
        out = [kind(str(i).strip()) for i in items if str(i).strip()]
    except ValueError:
        raise ValueError(f"{option} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not out:
        raise ValueError(f"{option} must not be empty")
    return out


COMPARE_KEYS = ("methods", "densities", "seeds", "options")


def cell_options(methods: List[str], common: Dict[str, Any], per_method: Dict[str, Any],
                 structure: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """Method options of each method in the grid: the common ones its Config accepts
    (``--update-interval`` means nothing to dense) plus ``compare.options.<method>``."""
    if not isinstance(per_method, dict):
        raise ValueError("compare.options must map method names to option mappings")
    stray = sorted(set(per_method) - set(methods))
    if stray:
        raise ValueError(f"compare.options names method(s) {stray} that are not in the grid {methods}")
    accepted = {m: set(C.method_fields(m, structure)) - set(C.HARNESS_METHOD_KEYS) for m in methods}
    for k in common:
        if not any(k in a for a in accepted.values()):
            raise ValueError(f"method option {k!r} is accepted by none of {methods}")
    out = {}
    for m in methods:
        own = per_method.get(m) or {}
        if not isinstance(own, dict):
            raise ValueError(f"compare.options.{m} must be a mapping of option: value")
        out[m] = {**{k: v for k, v in common.items() if k in accepted[m]}, **own}
    return out


def compare_grid(args: argparse.Namespace) -> tuple:
    file_values, sections = file_layers(args)
    section = sections.get("compare") or {}
    if not isinstance(section, dict):
        raise ValueError("compare section of the config must be a mapping (methods, densities, seeds)")
    unknown = sorted(set(section) - set(COMPARE_KEYS))
    if unknown:
        raise ValueError(f"unknown compare option(s) {unknown}; allowed: {', '.join(COMPARE_KEYS)}")
    methods = _split(args.methods or section.get("methods") or "", str, "--methods")
    densities = _split(args.densities or section.get("densities") or "0.1", float, "--densities")
    seeds = _split(args.seeds or section.get("seeds") or "0", int, "--seeds")
    for m in methods:
        C.method_fields(m)  # unknown method -> error naming the allowed ones
    return file_values, methods, densities, seeds, section.get("options") or {}


def _cells(methods, densities, seeds):
    for method in methods:
        for density in (densities if method != "dense" else [1.0]):
            for seed in seeds:
                yield method, density, seed


def cell_name(method: str, density: float, seed: int) -> str:
    """A grid cell's run directory under the compare directory."""
    return f"{method}-d{density:g}-s{seed}"


def _without_plan(argv: Sequence[str]) -> List[str]:
    """``argv`` less its ``--plan [FILE]`` (or an abbreviation argparse accepted)."""
    out: List[str] = []
    skip = False
    for i, tok in enumerate(argv):
        if skip:
            skip = False
            continue
        flag = tok.split("=", 1)[0]
        if len(flag) >= 4 and "--plan".startswith(flag):
            # "--plan FILE": the next token is the file unless it is an option
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            skip = "=" not in tok and nxt is not None and (nxt == "-" or not nxt.startswith("-"))
            continue
        out.append(tok)
    return out


def plan_lines(argv: Sequence[str], n_cells: int, prefix: str = "regrow") -> List[str]:
    """One shell command per cell: the compare command line ``argv`` (as given, less
    ``--plan``) with ``--cell I``."""
    base = _without_plan(argv)
    return [shlex.join([*shlex.split(prefix), *base, "--cell", str(i)]) for i in range(n_cells)]


def _write_shared(path: Path, text: str) -> None:
    """Write a file several cells may write at once with the same text (compare.json): left
    alone when it already says ``text``, else replaced atomically through a temp file of
    this process's own (never another writer's)."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _compare(args: argparse.Namespace) -> int:
    from ..report import render_compare
    from ..train.loop import train

    _check_stop(args.stop_after_steps)
    if args.plan is not None and args.cell is not None:
        raise ValueError("--plan writes every cell's command and --cell runs one: give one of them")
    argv = getattr(args, "_argv", sys.argv[1:])
    if args.plan is not None:  # the cell commands must mean this command: parse one back
        again = vars(build_parser().parse_args(_without_plan(argv) + ["--cell", "0"]))
        ignore = ("plan", "cell", "_argv", "_run")
        if {k: v for k, v in again.items() if k not in ignore} != {k: v for k, v in vars(args).items()
                                                                    if k not in ignore}:
            raise ValueError(f"could not take --plan out of the command line {argv}; give it as --plan=FILE")
    file_values, methods, densities, seeds, per_method = compare_grid(args)
    out = Path(args.out or "runs/compare")
    flags = flag_layer(args)
    common = {**C.coerce("method_options", file_values.pop("method_options", {}) or {}),
              **flags.pop("method_options", {})}
    structure = flags.get("structure", file_values.get("structure"))
    options = cell_options(methods, common, per_method, structure)
    cells = []
    for method, density, seed in _cells(methods, densities, seeds):
        cell_out = out / cell_name(method, density, seed)
        cfg = C.build(file_values, flags, {"method": method, "density": density, "seed": seed,
                                           "out": str(cell_out), "method_options": options[method]})
        C.validate(cfg)  # every cell is checked before the first one trains
        from ..train.loop import check_method_config
        check_method_config(cfg)
        cells.append(cfg)
    total = len(cells)
    numbers = list(range(1, total + 1))
    if args.cell is not None:
        if not 0 <= args.cell < total:
            raise ValueError(f"--cell must be in 0..{total - 1} (the grid has {total} cells; "
                             f"'regrow compare ... --plan' lists them), got {args.cell}")
        cells, numbers = [cells[args.cell]], [args.cell + 1]
    plan = plan_cells(cells, args.overwrite)
    bad = [(cfg, why) for cfg, (action, why) in zip(cells, plan) if action == "refuse"]
    if bad:
        listed = "\n".join(f"  {cfg.out}: {why}" for cfg, why in bad)
        raise ValueError(f"{len(bad)} cell(s) of {out} hold runs of other settings than asked:\n{listed}\n"
                         "rerun them with --overwrite (or choose another --out)")
    # the late checks (data, model, method built) of every cell to be trained, before any
    # trains: a typo in the last cell must not cost the first one's results
    checked = set()
    for cfg, (action, _) in zip(cells, plan):
        key = C.fingerprint(dataclasses.replace(cfg, seed=0))
        if action in ("train", "overwrite") and key not in checked:
            train(cfg, check_only=True)
            checked.add(key)
    out.mkdir(parents=True, exist_ok=True)
    _write_shared(out / "compare.json", json.dumps(
        {"methods": methods, "densities": densities, "seeds": seeds,
         "cells": [cell_name(m, d, s) for m, d, s in _cells(methods, densities, seeds)]}, indent=2) + "\n")
    if args.plan is not None:
        lines = plan_lines(argv, total)
        text = "".join(line + "\n" for line in lines)
        if args.plan == "-":
            sys.stdout.write(text)
        else:
            Path(args.plan).parent.mkdir(parents=True, exist_ok=True)
            Path(args.plan).write_text(text)
            print(f"{total} cell command(s) written to {args.plan}; run them with any scheduler, then "
                  f"'regrow report {out}'", file=sys.stderr)
        return 0
    t0 = time.perf_counter()
    for i, cfg, (action, _) in zip(numbers, cells, plan):
        if action == "keep":
            print(f"[{i}/{total}] {cfg.method} d={cfg.density:g} seed={cfg.seed}: kept", flush=True)
            continue
        s = train(cfg, resume=action == "resume", overwrite=action in ("overwrite", "restart"),
                  stop_after_steps=args.stop_after_steps)
        if _is_main() and "test_top1" in s:
            print(f"[{i}/{total}] {cfg.method} d={cfg.density:g} seed={cfg.seed}: "
                  f"top-1 {100 * s['test_top1']:.2f}%"
                  + (f", val perplexity {s['val_perplexity']:.3f}" if "val_perplexity" in s else "")
                  + f"  ({s['wall_seconds']:.1f} s)", flush=True)
    if args.cell is not None:
        if _is_main():
            print(f"cell {args.cell} of {out}: {cells[0].out}; 'regrow report {out}' aggregates the "
                  "finished cells")
        return 0
    runs = [Path(c.out) for c in cells]
    if _is_main() and not any((r / "summary.json").is_file() for r in runs):
        print(f"no cell finished yet; continue with the same 'regrow compare' command ({out})")
    elif _is_main():
        table = render_compare(out, order=methods, runs=runs)
        print(table)
        print(f"compare directory: {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


def plan_cells(cells: List[C.RunConfig], overwrite: bool) -> List[tuple]:
    """What ``compare`` does with each cell: ``(action, why)``, action one of train (empty),
    keep (finished with the asked config), resume (checkpoint of the asked config),
    restart (stopped before its first checkpoint), overwrite (--overwrite), refuse
    (holds a run of other settings; ``why`` names the differing fields)."""
    from ..train import checkpoint as ckpt
    from ..train.loop import CHECKPOINT, CONFIG, METRICS, SUMMARY

    plan = []
    for cfg in cells:
        d = Path(cfg.out)
        present = [n for n in (CHECKPOINT, SUMMARY, METRICS, CONFIG) if (d / n).exists()]
        if not present:
            plan.append(("train", ""))
            continue
        if overwrite:
            plan.append(("overwrite", ""))
            continue
        try:
            if (d / CONFIG).is_file():
                stored = C.load_yaml(str(d / CONFIG))
            elif (d / CHECKPOINT).is_file():
                stored = ckpt.load(d / CHECKPOINT)["config"]
            else:
                stored = None
            diff = C.differences(stored, cfg) if stored is not None else {"config.yaml": ("missing", "")}
            if not diff and (d / SUMMARY).is_file():
                fp = json.loads((d / SUMMARY).read_text()).get("config_fingerprint")
                if fp is not None and fp != C.fingerprint(cfg):
                    diff = {"summary.json": ("another run's", "")}
        except (ValueError, FileNotFoundError) as e:
            plan.append(("refuse", f"unreadable ({e})"))
            continue
        if diff:
            why = "; ".join(f"{k} {a!r} (asked {b!r})" if b != "" else f"{k} {a}" for k, (a, b) in diff.items())
            plan.append(("refuse", why))
        elif (d / SUMMARY).is_file():
            plan.append(("keep", ""))
        elif (d / CHECKPOINT).is_file():
            plan.append(("resume", ""))
        else:
            plan.append(("restart", ""))
    return plan


# ---- report --------------------------------------------------------------------
def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a run directory (summary.json) or a compare directory (*/summary.json)")


def _report(args: argparse.Namespace) -> int:
    from ..report import render

    print(render(args.path))
    grid = Path(args.path) / "compare.json"
    if grid.is_file() and not (Path(args.path) / "summary.json").is_file():
        try:
            names = [n for n in json.loads(grid.read_text()).get("cells") or [] if isinstance(n, str)]
        except (ValueError, AttributeError, TypeError):
            names = []
        missing = [n for n in names if not (Path(args.path) / n / "summary.json").is_file()]
        if missing:  # on stderr: stdout stays the table
            print(f"{len(names) - len(missing)} of {len(names)} cells of the grid have finished; not yet: "
                  f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}", file=sys.stderr)
    return 0


COMMANDS: List[Command] = [
    Command("train", "train one model with one sparsity method", add_run_arguments, _train),
    Command("compare", "run a grid of methods x densities x seeds and aggregate it", _compare_args, _compare),
    Command("resume", "continue an interrupted run from its checkpoint.pt", _resume_args, _resume),
    Command("report", "re-render tables and plots of a run or compare directory", _report_args, _report),
]


def all_commands() -> List[Command]:
    cmds = list(COMMANDS)
    for ref in EXTERNAL:
        module, attr = ref.split(":")
        cmds.extend(getattr(importlib.import_module(module), attr))
    return cmds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regrow", description="Train sparse neural networks by pruning and regrowing weights and channels.",
        epilog="Distributed: torchrun --nproc_per_node=N -m regrow train ... (batch_size is the global batch).")
    parser.add_argument("--version", action="version", version=f"regrow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in all_commands():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._argv = argv  # compare --plan writes each cell's command from it
    from ..train.distributed import RankMismatch

    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, RankMismatch) as e:
        print(f"regrow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
