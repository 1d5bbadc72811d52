"""What the vLLM rollout engine (``rollout/vllm_engine.py``) needs from Megatron: the HF config.json of the run's
model, the full HF-named weights gathered from the TP/PP shards in memory (the refit), and the model-parallel
group's leader that generates for the group.

Refit (per optimizer step): ``state.full_state_dict`` all-gathers every parameter's TP shards (collective over the
TP group) and the stages' dicts (all_gather_object over the PP group), so every rank of a model-parallel group
holds the full model for the duration of the call; ``hf_convert.to_hf`` maps each megatron tensor to its HF
names (the importer's name mapping: QKV split per query group, SwiGLU fc1 split into gate / up, vocab padding
removed). Only the group's leader keeps the result and hands it to vLLM (``model_runner.reload_weights``, which
repacks HF names into vLLM's fused qkv / gate_up parameters). Memory, transient: one fp32 copy of the full model
per rank during the gather; resident: vLLM's own copy of the model in ``precision.dtype`` on every rank (the
engine must exist on every rank for vLLM's process groups), plus the KV cache.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from ...planning import ModelShape
from ..ckpt import checkpoint_io as io
from ..ckpt.hf_convert import export_config, to_hf
from ..train.state import full_state_dict

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def hf_config(cfg) -> dict:
    """The HF config.json (Qwen2ForCausalLM / LlamaForCausalLM) of ``cfg.model`` at ``precision.dtype`` --
    the exporter's (``hf_convert.export_config``), so vLLM reads the same rope / norm / tying facts."""
    fields = io.model_fields(cfg.model)
    meta = io.CheckpointMeta(path=os.devnull, tp=1, pp=1, model=fields, vocab_size=cfg.model.vocab_size,
                             padded_vocab_size=cfg.model.vocab_size, shards=[], source={})
    return export_config(meta, getattr(torch, DTYPES[cfg.precision.dtype]))


def leader() -> Tuple[bool, int, Optional[object]]:
    """(this rank leads its model-parallel (TP x PP) group, the leader's global rank, the group); without
    megatron's groups or with a one-rank group: (True, this rank, None)."""
    from megatron.core import parallel_state as ps

    if not dist.is_initialized() or not ps.model_parallel_is_initialized():
        return True, 0, None
    group = ps.get_model_parallel_group()
    if dist.get_world_size(group) == 1:
        return True, dist.get_rank(), None
    src = dist.get_process_group_ranks(group)[0]
    return dist.get_rank() == src, src, group


def broadcast_from_leader(obj):
    """The leader's ``obj`` on every rank of its model-parallel group (one object collective)."""
    _, src, group = leader()
    if group is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def hf_weights(chunks, cfg) -> Optional[List[Tuple[str, torch.Tensor]]]:
    """The full model as HF (name, fp32 tensor) pairs on the model-parallel leader (None elsewhere). Collective
    over the model-parallel group (module docstring)."""
    is_leader, _, _ = leader()
    full = full_state_dict(chunks, cfg.model.num_layers, dst=None)
    if not is_leader:
        return None
    s = replace(ModelShape.from_config(cfg), vocab=cfg.model.vocab_size)  # to_hf drops rows >= the real vocabulary
    out: List[Tuple[str, torch.Tensor]] = []
    for name, t in full.items():
        out.extend(to_hf(name, t, s))
    return out
