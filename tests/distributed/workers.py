"""Worker functions run on every rank by ``launcher.spawn`` (module-level so spawn can import them)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.distributed as dist

TINY = ["model.num_layers=4", "model.hidden_size=32", "model.ffn_hidden_size=64", "model.num_attention_heads=4",
        "model.num_query_groups=2", "model.vocab_size=100", "model.padded_vocab_size=112",
        "model.max_position_embeddings=64", "optimizer.lr=1e-3", "optimizer.clip_grad=1.0"]


def global_batch(n: int = 8, seq: int = 12, vocab: int = 100, seed: int = 7):
    """The same random global batch on every rank: tokens [n, seq] and a ragged loss mask."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, seq), generator=g)
    lens = torch.randint(seq // 2, seq, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lens[:, None] - 1).float()
    return tokens, mask


def gather_dp_grad_buffers(chunks) -> None:
    """After a reduce-scatter (distributed optimizer) each DP rank holds only its shard of the reduced grads; make
    the whole buffer valid on every rank so grads can be compared."""
    from megatron.core import parallel_state as ps

    dp = ps.get_data_parallel_world_size()
    if dp == 1:
        return
    group, rank = ps.get_data_parallel_group(), ps.get_data_parallel_rank()
    for c in chunks:
        for buf in c.buffers:
            for bucket in buf.buckets:
                parts = list(bucket.grad_data.view(dp, -1).unbind(0))
                mine = parts[rank].clone()
                dist.all_gather(parts, mine, group=group)


def train_steps(overrides: Sequence[str], steps: int = 3, num_microbatches: int = 1) -> Dict[str, Any]:
    """Train ``steps`` optimizer steps on :func:`global_batch` with token-mean NLL over the global batch.
    Returns losses, full grads per step and full params at the end (on rank 0; {} elsewhere)."""
    from megatron.core import parallel_state as ps
    from megatron_meml.backend import model as M, optimizer as O, parallel, state, step as S
    from megatron_meml.config import load_config
    from megatron_meml.types import MicroBatch, TokenKind

    cfg = load_config(None, list(TINY) + list(overrides))
    info = parallel.initialize(cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size,
                               seed=cfg.seed)
    chunks = M.build_model(cfg)
    opt, sch = O.build_optimizer(cfg, chunks, total_steps=steps)
    tokens, mask = global_batch()
    total = mask.sum()
    per_rank = tokens.shape[0] // info.dp_size
    lo = info.dp_rank * per_rank
    my_tok, my_mask = tokens[lo:lo + per_rank], mask[lo:lo + per_rank]
    mbs: List[MicroBatch] = []
    for t, m in zip(my_tok.chunk(num_microbatches), my_mask.chunk(num_microbatches)):
        mbs.append(MicroBatch(tokens=t, loss_mask=m, kind=torch.full_like(t, int(TokenKind.SFT), dtype=torch.int8),
                              weight=m / total))

    def loss_fn(logp, mb):
        return -(logp * mb.weight * mb.loss_mask).sum(), {}

    losses, grads = [], []
    for _ in range(steps):
        O.zero_grads(chunks, opt)
        res = S.forward_backward(chunks, mbs, loss_fn)
        local = torch.tensor([sum(r["loss"] for r in res)], dtype=torch.float64)
        if ps.is_pipeline_last_stage():
            dist.all_reduce(local, group=ps.get_data_parallel_group())
        all_losses = [None] * dist.get_world_size()
        dist.all_gather_object(all_losses, float(local) if (ps.is_pipeline_last_stage() and info.tp_rank == 0) else None)
        losses.append(next(x for x in all_losses if x is not None))
        gather_dp_grad_buffers(chunks)
        grads.append(state.full_state_dict(chunks, cfg.model.num_layers, value=lambda n, p: p.main_grad))
        O.optimizer_step(opt, sch)
    params = state.full_state_dict(chunks, cfg.model.num_layers)
    if dist.get_rank() != 0:
        return {}
    return {"losses": losses, "grads": grads, "params": params}
