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
"""
from __future__ import annotations

import json
import os
import random
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

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
        raise ValueError(f"checkpoint has {len(state)} optimizer groups, this run has {len(leaves)}")
    for opt, entry in zip(leaves, state):
        opt.load_state_dict(entry["meta"])
        if "shards" in entry:
            params = _params_in_order(opt)
            if len(params) != len(entry["shards"]):
                raise ValueError("checkpoint optimizer shards do not match this run's parameters (different layout?)")
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


def latest(root: str) -> Optional[str]:
    """Path of the newest complete checkpoint under ``root`` (None when there is none)."""
    ptr = os.path.join(root, "latest")
    if not os.path.isfile(ptr):
        return None
    with open(ptr) as f:
        path = os.path.join(root, f.read().strip())
    return path if os.path.isfile(os.path.join(path, "meta.json")) else None


def save(root: str, step: int, chunks, optimizer, scheduler, trainer_state: Dict[str, Any],
         keep_last: int = 2, extra_meta: Optional[Dict[str, Any]] = None) -> str:
    """Collective: every rank writes its file; returns the final folder path. ``extra_meta`` goes into
    meta.json (readable without loading any shard)."""
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
    path = os.path.join(tmp, f"rank_{rank:05d}.pt")
    torch.save(blob, path + ".part")
    with open(path + ".part", "rb") as f:
        os.fsync(f.fileno())
    os.replace(path + ".part", path)
    dist.barrier()
    if rank == 0:
        meta = {"format": FORMAT, "step": step, "world_size": world,
                "tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
                "files": [f"rank_{r:05d}.pt" for r in range(world)], **(extra_meta or {})}
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
    done = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))
    for d in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    for d in os.listdir(root):
        if d.endswith(".tmp"):
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def _read_rank_file(path: str) -> Dict[str, Any]:
    from megatron.core import parallel_state as ps

    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    layout = (dist.get_world_size(), ps.get_tensor_model_parallel_world_size(),
              ps.get_pipeline_model_parallel_world_size())
    if (meta["world_size"], meta["tp"], meta["pp"]) != layout:
        raise ValueError(f"checkpoint {path}: saved with world/TP/PP {meta['world_size']}/{meta['tp']}/{meta['pp']}, "
                         f"this run is {layout[0]}/{layout[1]}/{layout[2]}; exact resume needs the same layout")
    return torch.load(os.path.join(path, f"rank_{dist.get_rank():05d}.pt"), map_location="cpu", weights_only=False)


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
