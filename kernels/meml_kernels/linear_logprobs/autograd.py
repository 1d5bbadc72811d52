"""Autograd of the fused hidden x W log-probs, shared by the torch twin and the Triton kernels ("engines").

forward:  partial row stats (engine; [P, T] for P vocabulary splits) -> merge -> two [T] all-reduces over the
          TP group -> logp, lse, entropy -> optional loss epilogue (per-token loss and dL/dlogp, O(T)).
backward: g = grad_logp + grad_loss * dL/dlogp, then (dhidden, dweight) from the engine, which recomputes the
          logits tile by tile. Under TP each rank's dhidden is the partial sum over its vocabulary shard;
          ``allreduce_dhidden`` sums it over the group (one [T, H] all-reduce -- the one Megatron's
          copy_to_tensor_model_parallel_region does; pass False when the caller's graph already does it).
Saved: hidden, weight (inputs) and fp32 [T] lse / entropy / dL/dlogp. Nothing [T, V].
Padded vocabulary: only the shard's first ``v_end`` rows of weight take part (``_vocab_parallel.local_vocab_end``);
the engines see the view weight[:v_end] in the forward and write dweight[v_end:] = 0 in the backward.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .._vocab_parallel import empty_stats, stats_to_logprobs_and_loss


class LinearLogprobsFunction(torch.autograd.Function):
    """apply(hidden [T,H], weight [V,H], targets [T], valid [T] bool, inv_temp, vocab_start, group, engine,
    want_entropy, loss, impl, allreduce_dhidden, v_end) -> (logp [T], entropy [T], loss [T] or [0], clipped)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, valid, inv_temp, vocab_start, group, engine, want_entropy, loss,
                impl, allreduce_dhidden, v_end):
        if v_end > 0:
            partials = engine.row_stats(hidden, weight[:v_end], targets, valid, inv_temp, vocab_start, want_entropy)
        else:
            partials = empty_stats(hidden.shape[0], hidden.device)
        logp, lse, entropy, loss_t, dloss, clipped = stats_to_logprobs_and_loss(partials, group, valid, loss, impl)
        ctx.save_for_backward(hidden, weight, targets, valid, lse, entropy, dloss)
        ctx.inv_temp, ctx.vocab_start, ctx.engine = inv_temp, vocab_start, engine
        ctx.group, ctx.has_loss, ctx.allreduce_dhidden = group, loss is not None, allreduce_dhidden
        ctx.v_end = v_end
        ctx.mark_non_differentiable(clipped)
        ctx.set_materialize_grads(False)
        return logp, entropy, loss_t, clipped

    @staticmethod
    def backward(ctx, g_logp, g_entropy, g_loss, _g_clipped):
        hidden, weight, targets, valid, lse, entropy, dloss = ctx.saved_tensors
        g = torch.zeros_like(lse) if g_logp is None else g_logp.float()
        if ctx.has_loss and g_loss is not None:
            g = g + g_loss.float() * dloss
        dh, dw = ctx.engine.backward(hidden, weight, targets, valid, lse, entropy, g, g_entropy, ctx.inv_temp,
                                     ctx.vocab_start, v_end=ctx.v_end)
        if ctx.allreduce_dhidden and ctx.group is not None and dist.get_world_size(ctx.group) > 1:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=ctx.group)
        return dh, dw, None, None, None, None, None, None, None, None, None, None, None
