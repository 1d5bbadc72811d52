"""Worker for tests/distributed/test_graph_sync.py: the continuous engine's CUDA-graph decode body at TP=2 (gloo,
CPU), under :class:`tests.distributed.sync_ops.SyncOpRecorder`."""
from __future__ import annotations

from typing import Any, Dict

import torch


def decode_step_sync_ops(tp: int = 2) -> Dict[str, Any]:
    """Prefill two prompts into a 4-slot pool, then run ``SlotModel._graph_body`` -- exactly what ``_capture``
    records into the graph (embedding, layers with decode attention, logits) -- once with megatron's embedding and
    once with the sync-free one, recording the sync-forcing ops of each; both outputs are returned to compare."""
    from megatron_meml.backend.infer.inference import generation_mode
    from megatron_meml.backend.infer.slot_model import SlotModel
    from tests.distributed.sync_ops import SyncOpRecorder
    from tests.unit.rollout.engine_workers import _setup

    cfg, info, chunks = _setup([f"parallel.tensor_model_parallel_size={tp}"])
    out: Dict[str, Any] = {"tp_rank": info.tp_rank}
    with generation_mode(chunks):
        m = SlotModel(chunks, num_slots=4, capacity=24)
        out["fast_layers"] = m.fast is not None
        prompt = torch.tensor([40, 300 % 259, 72, 101, 108, 250, 33, 9], dtype=torch.long)
        m.prefill(prompt, [0, 1], [0, 0], [5, 3])
        # one token per slot; the ids fall in both ranks' vocabulary shards (320 padded rows / 2 = 160 each)
        tok = torch.tensor([7, 200, 150, 0], dtype=torch.long)
        pos = torch.tensor([5, 3, m.capacity, m.capacity], dtype=torch.long)   # slots 2, 3: padded rows
        lens = torch.tensor([6, 4, 0, 0], dtype=torch.long)
        x_buf = torch.zeros(4, 1, m.hidden, dtype=m.dtype)
        for name, sync_free in (("megatron", False), ("sync_free", True)):
            m.sync_free_embedding = sync_free
            m.k[:, :, :, 5:] = 0   # every run writes the same cells: start each from the same cache
            m.v[:, :, :, 5:] = 0
            with SyncOpRecorder() as rec:
                logits = m._graph_body(tok, pos.clone(), lens, x_buf)
            out[name] = {"ops": rec.found, "logits": logits.clone()}
        m.close()
    return out
