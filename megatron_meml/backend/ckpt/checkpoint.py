"""Training checkpoints: model shards + optimizer state + every RNG + the trainer's own state, written atomically.

Layout (one folder per save, on a filesystem every rank sees)::

    <root>/step_00000012/rank_00000.pt ...   one file per global rank: model chunk state dicts (local shards),
                                             optimizer state (main params + Adam moments of this rank's shard),
                                             LR scheduler, RNG states, trainer state
    <root>/step_00000012/meta.json           written last: step, world size, TP/PP, files
    <root>/latest                            name of the newest complete folder (replaced atomically)

Atomicity: every rank writes into ``step_X.tmp``; after a barrier rank 0 writes ``meta.json``, renames the folder to
``step_X`` and replaces ``latest``. A crash at any point leaves the previous complete checkpoint untouched and
``latest`` pointing at it; leftover ``*.tmp`` folders are ignored and cleaned up by the next save.

Resume is exact for the same parallel layout (the per-rank optimizer shards follow megatron's DP bucket layout).

Integrity: ``meta.json`` records every rank file's size and CRC-32 (computed while the file is written, no second
read) and each rank's (tp, pp, dp) position, plus the model's shape fields (``model``, ``vocab_size``,
``padded_vocab_size``) so the model weights can be read without the run's config (``checkpoint_source``: HF export,
``model.init_from`` at another TP/PP). :func:`resolve` picks the newest checkpoint that passes :func:`verify`
(meta readable, every file present with its recorded size, optionally its CRC); a truncated file, a missing shard
or a garbled ``latest`` pointer makes it fall back, with a warning, to the next older complete one.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..train.model import padded_vocab_size
from .checkpoint_io import CheckpointError, model_fields

FORMAT = "meml-train-ckpt-v1"


def _leaf_optimizers(optimizer) -> List[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _params_in_order(opt) -> List[torch.nn.Parameter]:
    return sorted(opt.model_param_group_index_map, key=lambda p: opt.model_param_group_index_map[p])


def optimizer_state(optimizer) -> List[Dict[str, Any]]:
    """Per leaf optimizer: its non-parameter state, and for the distributed optimizer the main param + Adam
    moments of every model parameter's local shard (in a stable order)."""
    out = []
    for opt in _leaf_optimizers(optimizer):
        entry: Dict[str, Any] = {"meta": opt.state_dict()}
        if hasattr(opt, "_get_main_param_and_optimizer_states"):
            entry["shards"] = [{k: (v.detach().clone() if torch.is_tensor(v) else v)
                                for k, v in opt._get_main_param_and_optimizer_states(p).items()}
                               for p in _params_in_order(opt)]
        out.append(entry)
    return out


def load_optimizer_state(optimizer, state: List[Dict[str, Any]]) -> None:
    leaves = _leaf_optimizers(optimizer)
    if len(leaves) != len(state):
        raise CheckpointError(f"checkpoint has {len(state)} optimizer groups, this run has {len(leaves)}")
    for opt, entry in zip(leaves, state):
        opt.load_state_dict(entry["meta"])
        if "shards" in entry:
            params = _params_in_order(opt)
            if len(params) != len(entry["shards"]):
                raise CheckpointError("checkpoint optimizer shards do not match this run's parameters "
                                      "(different layout?)")
            with torch.no_grad():  # main params can be views of the (grad-requiring) model params
                for p, tensors in zip(params, entry["shards"]):
                    _set_shard_state(opt, p, tensors)


def _set_shard_state(opt, model_param, tensors: Dict[str, Any]) -> None:
    """Restore main param + *every* saved optimizer-state entry of one parameter's shard. megatron's own
    ``_set_main_param_and_optimizer_states`` copies only the keys already allocated, which drops torch Adam's
    per-parameter ``step`` (bias correction restarts at 1 and the resumed run diverges)."""
    if getattr(opt.config, "use_precision_aware_optimizer", False):
        opt._set_main_param_and_optimizer_states(model_param, tensors)
        return
    group_index, group_order = opt.model_param_group_index_map[model_param]
    main = opt.optimizer.param_groups[group_index]["params"][group_order]
    main.copy_(tensors["param"])
    state = opt.optimizer.state[main]
    for k, v in tensors.items():
        if k != "param":
            state[k] = v.clone() if torch.is_tensor(v) else v


def rng_state() -> Dict[str, Any]:
    from megatron.core import tensor_parallel

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def load_rng_state(state: Dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _name(step: int) -> str:
    return f"step_{step:08d}"


_STEP_DIR = re.compile(r"^step_(\d{8})$")


class _CRCFile:
    """File wrapper for ``torch.save``: counts bytes and keeps a running CRC-32 of what is written."""

    def __init__(self, f):
        self.f, self.size, self.crc = f, 0, 0

    def write(self, b) -> int:
        self.crc = zlib.crc32(b, self.crc)
        self.size += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def file_crc32(path: str, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return crc
            crc = zlib.crc32(b, crc)


def read_meta(path: str) -> Dict[str, Any]:
    """``meta.json`` of a training checkpoint folder; CheckpointError naming the file when missing or unreadable."""
    mpath = os.path.join(path, "meta.json")
    try:
        with open(mpath) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{mpath}: not found (not a complete training checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mpath}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                         f"expected {FORMAT!r}")
    return meta


def verify(path: str, checksum_files: Optional[List[str]] = None) -> Optional[str]:
    """None when the checkpoint folder is complete, else a short reason naming the file. Checks meta.json, that
    every rank file exists with the size recorded at save time, and the CRC-32 of ``checksum_files`` (names in
    the folder; None = no CRC). Checkpoints written before sizes were recorded are checked for presence only."""
    try:
        meta = read_meta(path)
    except CheckpointError as e:
        return str(e)
    info = meta.get("file_info", {})
    for name in meta.get("files", []):
        fpath = os.path.join(path, name)
        if not os.path.isfile(fpath):
            return f"{fpath}: missing"
        want = info.get(name, {}).get("size")
        if want is not None and os.path.getsize(fpath) != want:
            return f"{fpath}: {os.path.getsize(fpath)} bytes, {want} recorded at save time (truncated?)"
    for name in checksum_files or []:
        want = info.get(name, {}).get("crc32")
        if want is not None and os.path.isfile(os.path.join(path, name)) \
                and file_crc32(os.path.join(path, name)) != want:
            return f"{os.path.join(path, name)}: CRC-32 differs from the one recorded at save time (corrupt)"
    return None


def candidates(root: str) -> List[str]:
    """Checkpoint folders under ``root``, newest first: the one ``latest`` names, then every other complete
    ``step_XXXXXXXX`` folder by step, descending (a crash between the folder rename and the ``latest`` update leaves
    a newer complete folder; it comes first)."""
    if not os.path.isdir(root):
        return []
    steps = sorted((d for d in os.listdir(root) if _STEP_DIR.match(d)), reverse=True)
    out = [os.path.join(root, d) for d in steps if os.path.isfile(os.path.join(root, d, "meta.json"))]
    ptr = latest_pointer(root)
    if ptr is not None and ptr in out:
        out.remove(ptr)
        newer = [p for p in out if os.path.basename(p) > os.path.basename(ptr)]
        out = newer + [ptr] + [p for p in out if p not in newer]
    return out


def latest_pointer(root: str) -> Optional[str]:
    """The folder the ``latest`` file names, or None when it is absent or does not name a step folder."""
    try:
        with open(os.path.join(root, "latest")) as f:
            name = f.read(64).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return os.path.join(root, name) if _STEP_DIR.match(name) else None


def resolve(root: str, checksum_files: Callable[[Dict[str, Any]], List[str]] = lambda meta: [],
            agree: Callable[[Optional[str]], Optional[str]] = lambda reason: reason,
            warn: Callable[[str], None] = lambda msg: None) -> Optional[str]:
    """The newest checkpoint under ``root`` that passes :func:`verify` (None when there is none). Each one that
    does not is reported through ``warn`` (one line) and the next older is tried. ``checksum_files(meta)`` names
    the files whose CRC to check; ``agree(reason)`` turns this rank's verdict into the one every rank uses (a
    collective in a distributed run; identity otherwise)."""
    ptr = latest_pointer(root)
    if os.path.isfile(os.path.join(root, "latest")) and (ptr is None or not os.path.isdir(ptr)):
        warn(f"warning: {os.path.join(root, 'latest')} does not name a checkpoint folder; using the newest complete "
             f"one found in {root}")
    rejected: List[Tuple[str, str]] = []
    for path in candidates(root):
        try:
            files = checksum_files(read_meta(path))
        except CheckpointError:
            files = []
        reason = agree(verify(path, files))
        if reason is None:
            for bad, why in rejected:
                warn(f"warning: checkpoint {bad} is unusable ({why}); falling back to {path}")
            return path
        rejected.append((path, reason))
    for bad, why in rejected:
        warn(f"warning: checkpoint {bad} is unusable ({why}); no older complete checkpoint, starting fresh")
    return None


def latest(root: str) -> Optional[str]:
    """Path of the newest complete checkpoint under ``root`` (sizes verified, no CRC; None when there is none)."""
    return resolve(root)


def model_meta(cfg) -> Dict[str, Any]:
    """What a training checkpoint records about the model so its weights can be read without the run's config."""
    return {"model": model_fields(cfg.model), "vocab_size": cfg.model.vocab_size,
            "padded_vocab_size": padded_vocab_size(cfg)}


def save(root: str, step: int, chunks, optimizer, scheduler, trainer_state: Dict[str, Any],
         keep_last: int = 2, extra_meta: Optional[Dict[str, Any]] = None,
         extra_files: Optional[Dict[str, str]] = None) -> str:
    """Collective: every rank writes its file; returns the final folder path. ``extra_meta`` goes into
    meta.json (readable without loading any shard); ``extra_files`` {name: source path} are copied into the folder
    by rank 0 (e.g. the HF config.json the model came from, used by HF export)."""
    from megatron.core import parallel_state as ps

    rank, world = dist.get_rank(), dist.get_world_size()
    final = os.path.join(root, _name(step))
    tmp = final + ".tmp"
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    dist.barrier()
    blob = {"format": FORMAT, "step": step, "model": [c.state_dict() for c in chunks],
            "optimizer": optimizer_state(optimizer), "scheduler": scheduler.state_dict(), "rng": rng_state(),
            "trainer": trainer_state}
    name = f"rank_{rank:05d}.pt"
    path = os.path.join(tmp, name)
    with open(path + ".part", "wb") as f:
        w = _CRCFile(f)
        torch.save(blob, w)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".part", path)
    mine = {"file": name, "size": w.size, "crc32": w.crc, "tp_rank": ps.get_tensor_model_parallel_rank(),
            "pp_rank": ps.get_pipeline_model_parallel_rank(), "dp_rank": ps.get_data_parallel_rank()}
    every: List[Optional[Dict[str, Any]]] = [None] * world
    dist.all_gather_object(every, mine)
    if rank == 0:
        for fname, src in (extra_files or {}).items():
            shutil.copyfile(src, os.path.join(tmp, fname))
        meta = {"format": FORMAT, "step": step, "world_size": world,
                "tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
                "files": [e["file"] for e in every],
                "file_info": {e["file"]: {"size": e["size"], "crc32": e["crc32"]} for e in every},
                "ranks": [{k: e[k] for k in ("file", "tp_rank", "pp_rank", "dp_rank")} for e in every],
                **(extra_meta or {})}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        with open(os.path.join(root, "latest.part"), "w") as f:
            f.write(_name(step))
            f.flush()
            os.fsync(f.fileno())
        os.replace(os.path.join(root, "latest.part"), os.path.join(root, "latest"))
        _prune(root, keep_last)
    dist.barrier()
    return final


def _prune(root: str, keep_last: int) -> None:
    done = sorted(d for d in os.listdir(root) if _STEP_DIR.match(d))
    for d in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    for d in os.listdir(root):
        if d.endswith(".tmp"):
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def _read_rank_file(path: str) -> Dict[str, Any]:
    from megatron.core import parallel_state as ps

    meta = read_meta(path)
    layout = (dist.get_world_size(), ps.get_tensor_model_parallel_world_size(),
              ps.get_pipeline_model_parallel_world_size())
    if (meta["world_size"], meta["tp"], meta["pp"]) != layout:
        raise CheckpointError(f"checkpoint {path}: saved with world/TP/PP "
                              f"{meta['world_size']}/{meta['tp']}/{meta['pp']}, "
                         f"this run is {layout[0]}/{layout[1]}/{layout[2]}; exact resume needs the same layout "
                         f"(model.init_from={path} starts from its weights at any layout)")
    return load_rank_file(os.path.join(path, f"rank_{dist.get_rank():05d}.pt"))


def load_rank_file(fpath: str, mmap: bool = False) -> Dict[str, Any]:
    """One rank file; CheckpointError naming it when it cannot be read (truncated, corrupt). ``mmap`` maps tensors
    lazily from the file (only what is touched is read)."""
    try:
        return torch.load(fpath, map_location="cpu", weights_only=False, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{fpath}: not found") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{fpath}: unreadable checkpoint file ({str(e).splitlines()[0] if str(e) else e!r})") \
            from None


def load_model_only(path: str, chunks) -> None:
    """Model weights of a checkpoint (same layout), e.g. to start RIEL from the finished MEF stage."""
    blob = _read_rank_file(path)
    for c, sd in zip(chunks, blob["model"]):
        c.load_state_dict(sd)


def load(path: str, chunks, optimizer, scheduler) -> Dict[str, Any]:
    """Restore everything saved by :func:`save` into this rank; returns the trainer state."""
    blob = _read_rank_file(path)
    for c, sd in zip(chunks, blob["model"]):
        c.load_state_dict(sd)
    load_optimizer_state(optimizer, blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    load_rng_state(blob["rng"])
    return blob["trainer"]
