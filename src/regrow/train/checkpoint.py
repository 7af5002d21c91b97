"""Run checkpoints: written atomically, validated on load, RNG states included.

A checkpoint is a dict tagged ``format: regrow.checkpoint/1`` holding the model,
optimizer, LR scheduler, ``method.state_dict()``, the RNG states (torch CPU and
CUDA, numpy, python), the loop position (step, epoch, steps taken in that epoch,
metrics.jsonl lines written, running log accumulators) and the resolved config.

Writing goes to a temporary file in the same directory, is flushed to disk and
then ``os.replace``-d over the old file (and the directory fsynced), so a crash
mid-write never damages the previous checkpoint; temp files of killed writes are
removed by the next write. Everything is stored as tensors and plain Python values,
so loading uses ``torch.load(weights_only=True)``, which refuses any other global:
the checkpoint itself executes no pickled code. (The data a run reads is another
file: see ``regrow.train.data`` and docs/security.md.)
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

FORMAT = "regrow.checkpoint/1"
REQUIRED = ("format", "model", "optimizer", "method", "rng", "loop", "config")


def rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _python_state(random.getstate()),
    }


def _python_state(state):
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def set_rng_state(sd: Dict[str, Any]) -> None:
    torch.set_rng_state(sd["torch"])
    if sd.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(sd["cuda"][: torch.cuda.device_count()])
    n = sd["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = sd["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: fsync the directory entry (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _remove_orphans(path: Path) -> None:
    """Temp files of writes killed before their rename (the caller holds the run's lock)."""
    for orphan in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            orphan.unlink()
        except OSError:
            pass


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _umask_mode())  # mkstemp makes 0600; match the run's other files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save(path: os.PathLike, payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temp file in the same directory (temp
    files of earlier killed writes are removed first), fsync, rename, fsync the directory."""
    payload = {"format": FORMAT, **payload}
    _atomic_write(Path(path), lambda f: torch.save(payload, f))


def write_text(path: os.PathLike, text: str) -> None:
    """Atomic text write (config.yaml, summary.json, a truncated metrics.jsonl)."""
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def load(path: os.PathLike, map_location: Any = "cpu", required=REQUIRED) -> Dict[str, Any]:
    """Read a regrow checkpoint; a missing, truncated or foreign file raises with its path.
    ``required``: the keys it must hold (a run checkpoint's by default)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        sd = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, unpickling refused, ...
        raise ValueError(
            f"checkpoint {path} is unreadable (truncated or not a torch file): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(sd, dict) or sd.get("format") != FORMAT:
        found = sd.get("format") if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"checkpoint {path} is not a regrow run checkpoint "
                         f"(expected format '{FORMAT}', found {found!r})")
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}")
    return sd


def load_model_weights(path: os.PathLike) -> Dict[str, torch.Tensor]:
    """Weights for ``--pretrained``: a regrow checkpoint's model, or a plain state_dict
    (optionally under ``state_dict``/``model``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"pretrained checkpoint {path} is unreadable: {type(e).__name__}") from None
    if isinstance(sd, dict):
        for key in ("model", "state_dict"):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"pretrained checkpoint {path} holds no model state_dict")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()}


def pretrained_samples(path: os.PathLike) -> Optional[int]:
    """Training samples behind a pretrained regrow run checkpoint (its FLOPs ledger's count,
    else optimizer steps × global batch), or None when ``path`` is not a regrow checkpoint
    (a plain state_dict carries no record of how it was trained)."""
    try:
        sd = load(path)
    except ValueError:
        return None
    ledger = sd.get("ledger")
    if isinstance(ledger, dict) and "samples" in ledger:
        return int(ledger["samples"])
    return int(sd["loop"].get("step", 0)) * int(sd["config"].get("batch_size", 0))


# ---- sharded checkpoints (FSDP2) ---------------------------------------------------
# Under FSDP2 the model, its optimizer state and the method's per-weight state are
# DTensors: each rank holds some rows. ``save_sharded`` writes those through
# ``torch.distributed.checkpoint`` (every rank writes its own shards, no rank gathers
# a whole tensor) into a directory beside the checkpoint file, and the rest of the
# payload (plain tensors and values, identical on every rank) into the checkpoint file
# itself, whose leaves name the sharded tensors they stand for. The file is replaced
# atomically after the shards are complete, so a crash keeps the previous checkpoint
# whole. ``load`` reads that file as ever; ``load_shards`` fills the sharded leaves, as
# shards of a mesh (a run on any number of ranks) or as whole tensors (one process).
SHARDED = "__regrow_sharded__"


def _split(tree: Any, prefix: str, shards: Dict[str, Any]) -> Any:
    from ..sharding import is_sharded

    if is_sharded(tree):
        placements = [["shard", p.dim] if p.is_shard() else ["replicate"] for p in tree.placements]
        if any(p.is_partial() for p in tree.placements):
            raise ValueError(f"cannot checkpoint the partial (unreduced) DTensor at '{prefix}'")
        shards[prefix] = tree
        return {SHARDED: prefix, "shape": list(tree.shape), "dtype": str(tree.dtype).removeprefix("torch."),
                "placements": placements}
    if isinstance(tree, dict):
        return {k: _split(v, f"{prefix}/{k}", shards) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        out = [_split(v, f"{prefix}/{i}", shards) for i, v in enumerate(tree)]
        return out if isinstance(tree, list) else tuple(out)
    return tree


def _placeholders(tree: Any, found: Dict[str, Dict[str, Any]]) -> None:
    if isinstance(tree, dict):
        if SHARDED in tree:
            found[tree[SHARDED]] = tree
            return
        for v in tree.values():
            _placeholders(v, found)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            _placeholders(v, found)


def _fill(tree: Any, loaded: Dict[str, Any]) -> Any:
    if isinstance(tree, dict):
        if SHARDED in tree:
            return loaded[tree[SHARDED]]
        return {k: _fill(v, loaded) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_fill(v, loaded) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_fill(v, loaded) for v in tree)
    return tree


def shards_dir(path: os.PathLike, sd: Dict[str, Any]) -> Optional[Path]:
    """The shard directory a checkpoint file refers to (None for an unsharded one)."""
    name = sd.get("shards")
    return None if name is None else Path(path).parent / name


def save_sharded(path: os.PathLike, payload: Dict[str, Any]) -> None:
    """Write ``payload`` (as :func:`save`) whose tensors may be FSDP2 DTensors: the
    DTensors to a ``torch.distributed.checkpoint`` directory ``PATH.shards-N`` (each rank
    its own shards), everything else to ``path`` (rank 0, atomically, after every shard
    is written). Older shard directories are removed once the new file is in place.
    Collective: call it on every rank with the same payload structure."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    shards: Dict[str, Any] = {}
    skeleton = _split(payload, "", shards)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    name = [f"{path.name}.shards-{time.time_ns()}" if rank == 0 else None]
    if distributed:
        dist.broadcast_object_list(name, src=0)
    target = path.parent / name[0]
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
    if distributed:
        dist.barrier()
    dcp.save(shards, checkpoint_id=str(target), no_dist=not distributed)
    if distributed:
        dist.barrier()   # every rank's shards are on disk before the file points at them
    if rank == 0:
        save(path, {**skeleton, "shards": target.name})
        for old in path.parent.glob(f"{path.name}.shards-*"):
            if old.name != target.name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    if distributed:
        dist.barrier()


def load_shards(path: os.PathLike, sd: Dict[str, Any], mesh: Any = None) -> Dict[str, Any]:
    """``sd`` (a checkpoint :func:`load` read from ``path``) with its sharded leaves read
    from the shard directory: DTensors over ``mesh`` with the placements they were saved
    with (a run on the same mesh shape, any number of ranks), or whole tensors when
    ``mesh`` is None (one process). Collective when ``mesh`` is given."""
    import torch.distributed.checkpoint as dcp

    directory = shards_dir(path, sd)
    if directory is None:
        return sd
    if not (directory / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {path} refers to shard directory {directory}, which is missing "
                                "or incomplete")
    found: Dict[str, Dict[str, Any]] = {}
    _placeholders(sd, found)
    templates: Dict[str, torch.Tensor] = {}
    for key, leaf in found.items():
        try:
            dtype = getattr(torch, leaf["dtype"])
            shape = tuple(int(s) for s in leaf["shape"])
        except (AttributeError, TypeError, ValueError, KeyError):
            raise ValueError(f"checkpoint {path}: malformed sharded entry {key!r}") from None
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"checkpoint {path}: entry {key!r} has no tensor dtype ({leaf['dtype']!r})")
        if mesh is None:
            templates[key] = torch.empty(shape, dtype=dtype)
        else:
            from torch.distributed.tensor import Replicate, Shard
            from torch.distributed.tensor import empty as dempty

            placements = [Shard(int(p[1])) if p[0] == "shard" else Replicate() for p in leaf["placements"]]
            if len(placements) != mesh.ndim:
                raise ValueError(f"checkpoint {path}: entry {key!r} was sharded over a {len(placements)}-d "
                                 f"mesh, this run's mesh is {mesh.ndim}-d")
            templates[key] = dempty(shape, dtype=dtype, device_mesh=mesh, placements=placements)
    with warnings.catch_warnings():   # one process reading: torch warns that it assumes so
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.load(templates, checkpoint_id=str(directory), no_dist=mesh is None)
    out = _fill({k: v for k, v in sd.items() if k != "shards"}, templates)
    return out
