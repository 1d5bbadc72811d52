"""Worker functions run on every rank by ``launcher.spawn`` (module-level so spawn can import them)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

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
    from megatron_meml.backend.train import model as M, optimizer as O, state, step as S
    from megatron_meml.backend.runtime import parallel
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


def riel_sequences(n: int = 8, seq: int = 12, vocab: int = 100, seed: int = 11):
    """A fixed mix of GRPO / KL / SFT training sequences (equal length, so packing is predictable)."""
    from megatron_meml.rollout.packing import TrainSequence
    from megatron_meml.types import TokenKind

    g = torch.Generator().manual_seed(seed)
    kinds = [TokenKind.GRPO, TokenKind.GRPO, TokenKind.KL, TokenKind.SFT] * (n // 4)
    out = []
    for i, k in enumerate(kinds):
        tokens = torch.randint(0, vocab, (seq,), generator=g).tolist()
        prompt = int(torch.randint(3, seq // 2, (1,), generator=g))
        mask = [0] * prompt + [1] * (seq - prompt)
        old = (-torch.rand(seq, generator=g) * 5).tolist() if k != TokenKind.SFT else None
        adv = float(torch.randn(1, generator=g)) if k == TokenKind.GRPO else 0.0
        out.append(TrainSequence(tokens, mask, k, old, adv, tag=f"s{i}"))
    return out


def riel_grads(max_tokens: int, overrides: Sequence[str] = (), sequences: str = "riel", share: bool = False,
               max_row_tokens: Optional[int] = None, by_term: bool = False) -> Dict[str, Any]:
    """One RIEL forward-backward (GRPO + KL + SFT, token-mean over the global batch, λ1 = 0.5, λ2 = 2) over fixed
    sequences (``riel_sequences`` or ``shared_prompt_sequences``) packed with ``max_tokens`` per microbatch, flat or
    into prompt-sharing rows, and split over DP. On rank 0: summed loss and per-kind token counts, full grads, the
    microbatch count, padded slots and how many microbatches hold shared rows. ``by_term``: one pass per term
    (``backend.train.term_grads``); also returns its per-term norms and, as their reference, the norm of each term's
    gradient computed from that term's rows alone (full grads gathered, plain torch norm)."""
    from functools import partial

    from megatron.core import parallel_state as ps
    from megatron_meml.algo.objective import riel_loss
    from megatron_meml.backend.train import model as M, optimizer as O, state, step as S
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.config import load_config
    from megatron_meml.rollout.packing import assign_weights, plan_microbatches

    cfg = load_config(None, list(TINY) + list(overrides) + ["riel.lambda_kl=0.5", "riel.lambda_sft=2.0"])
    info = parallel.initialize(cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size,
                               seed=cfg.seed)
    chunks = M.build_model(cfg)
    opt, _ = O.build_optimizer(cfg, chunks, total_steps=1)
    seqs = {"riel": riel_sequences, "shared": shared_prompt_sequences}[sequences]()
    assign_weights(seqs, "token_mean", [1.0, cfg.riel.lambda_kl, cfg.riel.lambda_sft])
    pack = lambda rows: plan_microbatches(rows, max_tokens, dp_size=info.dp_size, share_prompts=share,  # noqa: E731
                                          max_row_tokens=max_row_tokens)[info.dp_rank]
    loss_fn = partial(riel_loss, riel_cfg=cfg.riel, impl="torch")
    extra: Dict[str, Any] = {}
    if by_term:
        from megatron_meml.backend.train.term_grads import forward_backward_by_term
        from megatron_meml.types import TokenKind

        reference = {}
        for k in TokenKind:  # each term alone: the norm its gradient should have
            O.zero_grads(chunks, opt)
            S.forward_backward(chunks, pack([q for q in seqs if q.kind == k]), loss_fn, temperature=0.7)
            gather_dp_grad_buffers(chunks)
            g = state.full_state_dict(chunks, cfg.model.num_layers, value=lambda n, p: p.main_grad)
            if g is not None:  # rank 0 holds the full state dict
                reference[k.name.lower()] = float(torch.sqrt(sum((v.double() ** 2).sum() for v in g.values())))
        terms = [(k, pack([q for q in seqs if q.kind == k])) for k in TokenKind]
        mbs = [mb for _, m in terms for mb in m]
        O.zero_grads(chunks, opt)
        res, norms = forward_backward_by_term(chunks, opt, terms, loss_fn, temperature=0.7)
        extra = {"term_norms": norms, "reference_norms": reference}
    else:
        mbs = pack(seqs)
        O.zero_grads(chunks, opt)
        res = S.forward_backward(chunks, mbs, loss_fn, temperature=0.7)
    keys = ["loss", "count/grpo", "count/kl", "count/sft"]
    local = torch.tensor([sum(r[k] for r in res) for k in keys], dtype=torch.float64)
    if ps.is_pipeline_last_stage():
        dist.all_reduce(local, group=ps.get_data_parallel_group())
    dist.all_reduce(local, group=ps.get_pipeline_model_parallel_group())  # from the last stage to rank 0
    gather_dp_grad_buffers(chunks)
    grads = state.full_state_dict(chunks, cfg.model.num_layers, value=lambda n, p: p.main_grad)
    if dist.get_rank() != 0:
        return {}
    return {"grads": grads, **dict(zip(keys, local.tolist())), **extra, "microbatches": len(mbs),
            "slots": sum(mb.tokens.numel() for mb in mbs),
            "shared_microbatches": sum(int(mb.segment_ids is not None) for mb in mbs)}


def shared_prompt_sequences(seed: int = 5, vocab: int = 100):
    """Three prompts (lengths 9, 6, 2), each continued by 1-5 responses of different lengths and kinds, plus one
    sequence with no prompt-mates; the order interleaves prompts."""
    from megatron_meml.rollout.packing import TrainSequence
    from megatron_meml.types import TokenKind

    g = torch.Generator().manual_seed(seed)
    kinds = [TokenKind.GRPO, TokenKind.KL, TokenKind.GRPO, TokenKind.SFT, TokenKind.GRPO]
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (9, 6, 2)]
    out = []
    for i in range(12):
        p = prompts[i % 3] if i < 11 else torch.randint(0, vocab, (4,), generator=g).tolist()
        k = kinds[i % len(kinds)]
        resp = torch.randint(0, vocab, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        old = (-torch.rand(len(resp), generator=g) * 5).tolist() if k != TokenKind.SFT else None
        adv = float(torch.randn(1, generator=g)) if k == TokenKind.GRPO else 0.0
        out.append(TrainSequence.from_prompt_response(p, resp, k, old, adv, tag=f"s{i}"))
    return out
