"""One forward-backward pass over a list of typed microbatches through megatron-core's pipeline schedules.

Loss contract: ``loss_fn(logp, mb) -> (loss, metrics)`` where ``logp`` [B, S] fp32 holds log π(tokens[:, t+1] |
tokens[:, :t+1]) / temperature-scaled as documented in :mod:`.logprobs`, and ``loss`` is a scalar that is already
*globally* normalised (``mb.weight`` carries the normaliser). The global loss is the plain **sum** over
microbatches and DP ranks. megatron's schedule divides each microbatch loss by the number of microbatches and DDP
divides gradients by the DP size, so we multiply by ``num_microbatches * dp_size`` before handing the loss back:
gradients are then identical however the global batch is cut (the equivalence tests check 1e-6).

Output layer (``model.fused_output``, read from the model chunk: ``backend/train/output_layer.py``): fused (default),
the
last stage returns final-norm hidden states and the log-probs come from hidden x W in the fused kernel -- no
[tokens, vocab] logits in the forward or the backward; a loss function with ``loss_inputs`` (``algo.objective``'s
``TokenObjective``: RIEL, SFT) has its per-token loss and dL/dlogp computed as that kernel's epilogue, and its
``reduce`` makes the scalar and metrics. Otherwise (logits path, or a plain loss callable) ``loss_fn(logp, mb)``.
Both paths leave ids >= ``model.vocab_size`` (embedding padding) out of the softmax.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ...types import MicroBatch
from .attention import rope_positions, segment_attention_mask
from .logprobs import token_logprobs
from .output_layer import OutputOptions, final_hidden_states, fused_logprobs, options_of

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

    with rope_positions(position_ids):
        return model(tokens, position_ids, attention_mask=segment_attention_mask(segment_ids))


def _logprobs_and_loss(output: torch.Tensor, cap, mb: MicroBatch, opts: OutputOptions, temperature: float,
                       loss_fn: Optional[LossFn]):
    """(logp [B, S], loss or None, metrics) of one microbatch on the last stage. ``output``: hidden states [B, S, H]
    when ``cap`` (fused path), else vocab-parallel logits [B, S, V/TP]."""
    targets = shift_targets(mb.tokens)
    if cap is None:
        logp = token_logprobs(output, targets, temperature=temperature, vocab_limit=opts.vocab_limit,
                              impl=opts.impl)
    else:
        spec = loss_fn.loss_inputs(mb) if hasattr(loss_fn, "loss_inputs") else None
        out = fused_logprobs(output, cap, targets, opts, temperature, loss=spec)
        if spec is not None:
            loss, metrics = loss_fn.reduce(out.loss, out.clipped, mb)
            return out.logp, loss, metrics
        logp = out.logp
    if loss_fn is None:
        return logp, None, {}
    loss, metrics = loss_fn(logp, mb)
    return logp, loss, metrics


def _forward_step(device, opts: OutputOptions, loss_func):
    """megatron's forward_step_func: the model on one microbatch (hidden states or logits on the last stage), and
    ``loss_func(mb, cap, output)`` bound to it."""

    def forward_step(data_iterator, model):
        mb = next(data_iterator).to(device)
        if not opts.fused:
            return model_logits(model, mb.tokens, mb.position_ids, mb.segment_ids), partial(loss_func, mb, None)
        with final_hidden_states(model) as cap:
            out = model_logits(model, mb.tokens, mb.position_ids, mb.segment_ids)
        return out, partial(loss_func, mb, cap)

    return forward_step


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
    opts = options_of(chunks[0])
    n = len(microbatches)
    scale = float(n * ps.get_data_parallel_world_size())

    def loss_func(mb: MicroBatch, cap, output: torch.Tensor):
        _, loss, metrics = _logprobs_and_loss(output, cap, mb, opts, temperature, loss_fn)
        out = {k: (v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v)))
               for k, v in metrics.items()}
        out["loss"] = loss.detach().clone().float()
        return loss * scale, out

    fb = get_forward_backward_func()
    results = fb(forward_step_func=_forward_step(device, opts, loss_func), data_iterator=iter(microbatches),
                 model=chunks, num_microbatches=n, seq_length=max(mb.tokens.shape[1] for mb in microbatches),
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
    opts = options_of(chunks[0])
    store: List[torch.Tensor] = []

    def loss_func(mb: MicroBatch, cap, output: torch.Tensor):
        logp, _, _ = _logprobs_and_loss(output, cap, mb, opts, temperature, None)
        store.append(logp.cpu())
        return logp.sum() * 0.0, {}

    was_training = [c.training for c in chunks]
    for c in chunks:
        c.eval()
    try:
        get_forward_backward_func()(
            forward_step_func=_forward_step(device, opts, loss_func), data_iterator=iter(microbatches),
            model=chunks, num_microbatches=len(microbatches),
            seq_length=max(mb.tokens.shape[1] for mb in microbatches),
            micro_batch_size=max(mb.tokens.shape[0] for mb in microbatches), forward_only=True)
    finally:
        for c, t in zip(chunks, was_training):
            c.train(t)
    return store if ps.is_pipeline_last_stage() else None
