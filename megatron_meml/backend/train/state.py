"""Full (unsharded) views of a TP/PP-sharded model: gather to one dict keyed by *global* parameter names, and the
inverse (scatter a full dict into this rank's shards).

Sharding rules (megatron-core layout):
  * ``param.tensor_model_parallel`` with ``partition_dim`` d: shards concatenate along d across TP ranks.
  * ``partition_stride`` 2 (SwiGLU ``linear_fc1``): each shard is ``[gate_r; up_r]``; the full tensor is
    ``[gate_0..gate_{tp-1}; up_0..up_{tp-1}]``.
  * Fused QKV is grouped by query group, so plain concatenation along dim 0 restores the full layout.
  * Pipeline stages name their layers from 0; the global index adds the stage's layer offset.
  * With tied embeddings the last stage's ``output_layer`` is a copy of the embedding and is skipped; so is the
    first stage's embedding when it is not the first stage (it has none).
Used by the distributed equivalence tests, checkpoint conversion and export.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def unwrap(chunk: torch.nn.Module):
    """The GPTModel inside a DDP / Float16Module wrapper. (Lives here, at the bottom of the backend's import graph,
    so that model, attention, inference and the checkpoint code can all use it without importing each other.)"""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def _strip(name: str) -> str:
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def layer_offset(num_layers: int) -> int:
    """Global index of this pipeline stage's first layer (even split)."""
    from megatron.core import parallel_state as ps

    pp = ps.get_pipeline_model_parallel_world_size()
    return ps.get_pipeline_model_parallel_rank() * (num_layers // pp)


def global_name(local: str, offset: int) -> str:
    m = _LAYER.match(local)
    if not m:
        return local
    return f"decoder.layers.{int(m.group(1)) + offset}." + local[m.end():]


def local_name(global_: str, offset: int, layers_per_stage: int) -> Optional[str]:
    """The local name of a global parameter on this stage, or None when it lives on another stage."""
    m = _LAYER.match(global_)
    if not m:
        return global_
    i = int(m.group(1)) - offset
    if 0 <= i < layers_per_stage:
        return f"decoder.layers.{i}." + global_[m.end():]
    return None


def _tp_gather(t: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return t
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.contiguous(), group=ps.get_tensor_model_parallel_group())
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    if stride == 1:
        return torch.cat(parts, dim=dim)
    chunks = [p.chunk(stride, dim=dim) for p in parts]
    return torch.cat([chunks[r][s] for s in range(stride) for r in range(tp)], dim=dim)


def _tp_shard(full: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    r, dim, stride = ps.get_tensor_model_parallel_rank(), param.partition_dim, getattr(param, "partition_stride", 1)
    pieces = full.chunk(stride * tp, dim=dim)
    return torch.cat([pieces[s * tp + r] for s in range(stride)], dim=dim)


def _skip(name: str, model) -> bool:
    tied = getattr(model, "share_embeddings_and_output_weights", False)
    return tied and name == "output_layer.weight"


def full_state_dict(chunks: List[torch.nn.Module], num_layers: int,
                    value: Callable[[str, torch.nn.Parameter], Optional[torch.Tensor]] = lambda n, p: p.data,
                    dst: Optional[int] = 0) -> Optional[Dict[str, torch.Tensor]]:
    """Gather ``value(name, param)`` of every parameter into full tensors keyed by global names. Collective over
    the whole world; the dict is returned on global rank ``dst`` (or every rank when ``dst`` is None)."""
    from megatron.core import parallel_state as ps

    offset = layer_offset(num_layers)
    local: Dict[str, torch.Tensor] = {}
    for chunk in chunks:
        model = unwrap(chunk)
        for name, p in model.named_parameters():
            name = _strip(name)
            if _skip(name, model):
                continue
            v = value(name, p)
            if v is None:
                continue
            full = _tp_gather(v.detach().float(), p)
            local[global_name(name, offset)] = full.cpu().clone()  # never alias live buffers
    out: Dict[str, torch.Tensor] = {}
    if ps.get_pipeline_model_parallel_world_size() > 1:
        gathered: List[Optional[Dict[str, torch.Tensor]]] = [None] * ps.get_pipeline_model_parallel_world_size()
        dist.all_gather_object(gathered, local, group=ps.get_pipeline_model_parallel_group())
        for d in gathered:
            for k, v in d.items():
                out.setdefault(k, v)
    else:
        out = local
    if dst is None or dist.get_rank() == dst:
        return out
    return None


def load_full_state_dict(chunks: List[torch.nn.Module], state: Dict[str, torch.Tensor], num_layers: int,
                         strict: bool = True) -> None:
    """Copy full tensors (global names) into this rank's shards. ``strict`` raises on a missing or extra key."""
    from megatron.core import parallel_state as ps

    offset = layer_offset(num_layers)
    per_stage = num_layers // ps.get_pipeline_model_parallel_world_size()
    wanted = set()
    for chunk in chunks:
        model = unwrap(chunk)
        params = dict(model.named_parameters())
        for gname, full in state.items():
            lname = local_name(gname, offset, per_stage)
            if lname is None:
                continue
            if lname == "output_layer.weight" and getattr(model, "share_embeddings_and_output_weights", False):
                lname = None if "output_layer.weight" not in params else lname
            if lname is None or lname not in params:
                continue
            p = params[lname]
            shard = _tp_shard(full.to(p.dtype), p)
            if shard.shape != p.shape:
                raise ValueError(f"parameter {gname}: checkpoint shard shape {tuple(shard.shape)} != model "
                                 f"{tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(shard.to(p.device))
            wanted.add(lname)
        if strict:
            missing = [n for n in params if n not in wanted and not _skip(n, model)]
            if missing:
                raise KeyError(f"checkpoint is missing parameters: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        tied_out = getattr(model, "share_embeddings_and_output_weights", False) and "output_layer.weight" in params
        if tied_out and "embedding.word_embeddings.weight" in state:
            with torch.no_grad():
                params["output_layer.weight"].copy_(_tp_shard(state["embedding.word_embeddings.weight"],
                                                              params["output_layer.weight"]))


def init_layout_invariant(model: torch.nn.Module, num_layers: int, std: float, seed: int) -> None:
    """Initialise every parameter from a generator seeded by (seed, *global* name) over its *full* shape, then
    keep this rank's shard: the initial model is bit-identical at any TP/PP layout (megatron's own init draws
    from per-rank RNG streams, so PP=2 would start from different weights than PP=1).

    Megatron's init scheme: weights ~ N(0, std); output projections (``linear_proj``, ``linear_fc2``) ~
    N(0, std / sqrt(2 * num_layers)); norm weights 1; biases 0."""
    import math
    import zlib

    from megatron.core import parallel_state as ps

    offset = layer_offset(num_layers)
    tp = ps.get_tensor_model_parallel_world_size()
    out_std = std / math.sqrt(2.0 * num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gname = global_name(_strip(name), offset)
            if gname == "output_layer.weight" and getattr(model, "share_embeddings_and_output_weights", False):
                gname = "embedding.word_embeddings.weight"
            if "layernorm" in gname or gname.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            if gname.endswith(".bias"):
                p.zero_()
                continue
            shape = list(p.shape)
            if tp > 1 and getattr(p, "tensor_model_parallel", False):
                shape[p.partition_dim] *= tp
            g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{gname}".encode()))
            s = out_std if ("linear_proj" in gname or "linear_fc2" in gname) else std
            full = torch.randn(shape, generator=g, dtype=torch.float32) * s
            p.copy_(_tp_shard(full, p).to(device=p.device, dtype=p.dtype))
