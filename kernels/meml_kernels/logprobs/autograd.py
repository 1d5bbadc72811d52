"""Autograd of the log-probs from logits, shared by the torch twin and the Triton kernels ("engines").

forward:  local row stats (engine) -> two [T] all-reduces over the TP group -> logp, lse, entropy (fp32 [T])
          -> optional loss epilogue: per-token loss and dL/dlogp (``meml_kernels.token_loss``), same forward.
backward: g = grad_logp + grad_loss * dL/dlogp (O(T)), then dlogits from the engine. No communication: every
          rank holds the full [T] upstream gradient and its own vocabulary shard.
Saved for backward: the logits (an input), fp32 [T] lse / entropy / dL/dlogp. Nothing [T, V].
Padded vocabulary: only the first ``v_end`` columns of the shard take part (the engines see the view
logits[:, :v_end]); the gradient of the other columns is 0.

Why the loss epilogue is an O(T) kernel after the stats, not inside the V loop: log p needs the *global*
logsumexp, which under tensor parallelism exists only after the all-reduce; at TP = 1 folding it into the V loop
would save one launch over T floats (microseconds against milliseconds). What pays -- dL/dlogp computed in the
forward, the backward a single pass over the logits, no autograd graph on [T] loss tensors -- is done.
"""
from __future__ import annotations

import torch

from .._vocab_parallel import empty_stats, stats_to_logprobs_and_loss


class LogprobsFunction(torch.autograd.Function):
    """apply(logits [T,V], targets [T], valid [T] bool, inv_temp, vocab_start, group, engine, entropy, loss, impl,
    v_end) -> (logp [T], entropy [T], loss [T] or [0], clipped [T] or [0]); all fp32 except clipped (bool)."""

    @staticmethod
    def forward(ctx, logits, targets, valid, inv_temp, vocab_start, group, engine, want_entropy, loss, impl,
                v_end):
        if v_end > 0:
            partials = engine.row_stats(logits[:, :v_end], targets, valid, inv_temp, vocab_start, want_entropy)
        else:
            partials = empty_stats(logits.shape[0], logits.device)
        logp, lse, entropy, loss_t, dloss, clipped = stats_to_logprobs_and_loss(partials, group, valid, loss, impl)
        ctx.save_for_backward(logits, targets, valid, lse, entropy, dloss)
        ctx.inv_temp, ctx.vocab_start, ctx.engine, ctx.has_loss = inv_temp, vocab_start, engine, loss is not None
        ctx.v_end = v_end
        ctx.mark_non_differentiable(clipped)
        ctx.set_materialize_grads(False)
        return logp, entropy, loss_t, clipped

    @staticmethod
    def backward(ctx, g_logp, g_entropy, g_loss, _g_clipped):
        logits, targets, valid, lse, entropy, dloss = ctx.saved_tensors
        g = torch.zeros_like(lse) if g_logp is None else g_logp.float()
        if ctx.has_loss and g_loss is not None:
            g = g + g_loss.float() * dloss
        v_end = ctx.v_end
        if v_end == logits.shape[1]:
            dlogits = ctx.engine.dlogits(logits, targets, valid, lse, entropy, g, g_entropy, ctx.inv_temp,
                                         ctx.vocab_start)
        else:   # padded columns: gradient 0, the engine writes the real ones in place
            dlogits = torch.empty_like(logits)
            dlogits[:, v_end:].zero_()
            if v_end > 0:
                ctx.engine.dlogits(logits[:, :v_end], targets, valid, lse, entropy, g, g_entropy, ctx.inv_temp,
                                   ctx.vocab_start, out=dlogits[:, :v_end])
        return dlogits, None, None, None, None, None, None, None, None, None, None
