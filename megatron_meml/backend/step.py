"""One forward-backward pass over a list of typed microbatches through megatron-core's pipeline schedules.

Loss contract: ``loss_fn(logp, mb) -> (loss, metrics)`` where ``logp`` [B, S] fp32 holds log π(tokens[:, t+1] |
tokens[:, :t+1]) / temperature-scaled as documented in :mod:`.logprobs`, and ``loss`` is a scalar that is already
*globally* normalised (``mb.weight`` carries the normaliser). The global loss is the plain **sum** over
microbatches and DP ranks. megatron's schedule divides each microbatch loss by the number of microbatches and DDP
divides gradients by the DP size, so we multiply by ``num_microbatches * dp_size`` before handing the loss back:
gradients are then identical however the global batch is cut (the equivalence tests check 1e-6).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..types import MicroBatch
from .logprobs import token_logprobs

LossFn = Callable[[torch.Tensor, MicroBatch], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


def shift_targets(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """targets[:, t] = tokens[:, t + 1]; the last column gets ``pad_id`` (always masked by the caller)."""
    out = torch.full_like(tokens, pad_id)
    out[:, :-1] = tokens[:, 1:]
    return out


def position_ids_for(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


def model_logits(model: torch.nn.Module, tokens: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                 segment_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run one model chunk on right-padded ``tokens`` [B, S] (causal attention; padding sits after real tokens and
    never influences them). On the last stage returns vocab-parallel logits [B, S, V/TP].

    Prompt-sharing rows (``rollout/packing.shared_rows``) also give ``position_ids`` [B, S] (RoPE position per slot)
    and ``segment_ids`` [B, S] (the attention mask of ``attention.segment_attention_mask``); they need the local
    layer spec, whose attention honours explicit masks."""
    if segment_ids is None:
        return model(tokens, position_ids_for(tokens), attention_mask=None)
    from .attention import rope_positions, segment_attention_mask

    with rope_positions(position_ids):
        return model(tokens, position_ids, attention_mask=segment_attention_mask(segment_ids))


def forward_backward(chunks: List[torch.nn.Module], microbatches: List[MicroBatch], loss_fn: LossFn,
                     temperature: float = 1.0, forward_only: bool = False) -> List[Dict[str, float]]:
    """Forward (and unless ``forward_only``, backward) over all ``microbatches``; gradients accumulate in the DDP
    grad buffers (call the optimizer afterwards). Returns per-microbatch metrics on the last pipeline stage (an
    empty list elsewhere)."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not microbatches:
        return []
    device = next(chunks[0].parameters()).device
    n = len(microbatches)
    scale = float(n * ps.get_data_parallel_world_size())

    def loss_func(mb: MicroBatch, logits: torch.Tensor):
        targets = shift_targets(mb.tokens)
        logp = token_logprobs(logits, targets, temperature=temperature)
        loss, metrics = loss_fn(logp, mb)
        out = {k: (v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v)))
               for k, v in metrics.items()}
        out["loss"] = loss.detach().clone().float()
        return loss * scale, out

    def forward_step(data_iterator, model):
        mb = next(data_iterator).to(device)
        return model_logits(model, mb.tokens, mb.position_ids, mb.segment_ids), partial(loss_func, mb)

    fb = get_forward_backward_func()
    results = fb(forward_step_func=forward_step, data_iterator=iter(microbatches), model=chunks,
                 num_microbatches=n, seq_length=max(mb.tokens.shape[1] for mb in microbatches),
                 micro_batch_size=max(mb.tokens.shape[0] for mb in microbatches), forward_only=forward_only)
    return [{k: float(v) for k, v in r.items()} for r in results] if ps.is_pipeline_last_stage() else []


@torch.no_grad()
def forward_logprobs(chunks: List[torch.nn.Module], microbatches: List[MicroBatch],
                     temperature: float = 1.0) -> Optional[List[torch.Tensor]]:
    """Per-token log-probs [B, S] of each microbatch without gradients (reference / old-policy scoring). Returns the
    list on the last pipeline stage, None elsewhere."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    device = next(chunks[0].parameters()).device
    store: List[torch.Tensor] = []

    def loss_func(mb: MicroBatch, logits: torch.Tensor):
        logp = token_logprobs(logits, shift_targets(mb.tokens), temperature=temperature)
        store.append(logp.cpu())
        return logp.sum() * 0.0, {}

    def forward_step(data_iterator, model):
        mb = next(data_iterator).to(device)
        return model_logits(model, mb.tokens, mb.position_ids, mb.segment_ids), partial(loss_func, mb)

    was_training = [c.training for c in chunks]
    for c in chunks:
        c.eval()
    try:
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(microbatches), model=chunks,
            num_microbatches=len(microbatches), seq_length=max(mb.tokens.shape[1] for mb in microbatches),
            micro_batch_size=max(mb.tokens.shape[0] for mb in microbatches), forward_only=True)
    finally:
        for c, t in zip(chunks, was_training):
            c.train(t)
    return store if ps.is_pipeline_last_stage() else None
