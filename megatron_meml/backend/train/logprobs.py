"""The backend's per-token log-prob path: Megatron's vocab-parallel logits -> log pi(target), via meml_kernels.

    logp = token_logprobs(logits_local, targets, tp_group=None, temperature=1.0, vocab_start=None, impl="auto")

logits_local: [B, S, V/TP] or [T, V/TP] (bf16 or fp32), this rank's vocabulary shard as Megatron's output layer
produces it (``parallel_output=True``); targets: [B, S] or [T] global token ids. Returns fp32 log-probs of the
targets' shape: ``log softmax(logits / temperature)[target]`` over the *full* vocabulary, i.e. exactly
``-megatron.core.tensor_parallel.vocab_parallel_cross_entropy(logits / temperature, targets)`` (tested at TP=1 and
TP=2), differentiable w.r.t. the logits. Rows with target == ``ignore_index`` (or mask == 0) give 0.

Tensor-parallel group: ``tp_group`` if given (vocab_start default rank * V_local); otherwise Megatron's
``parallel_state`` TP group and rank when it is initialised; otherwise TP = 1. Only two all-reduces of [T]-sized
tensors cross ranks; [T, V] is never gathered. On CUDA the Triton kernels run, on CPU their torch twins
(``impl`` forces one: see ``meml_kernels._dispatch``).

``token_logprobs_and_loss`` is the fused variant: the per-token RL/SFT loss (``meml_kernels.token_loss``) and its
dL/dlogp are computed in the same forward, so the backward is one pass from the loss straight to the logits.
``vocab_limit`` (the real vocabulary size) leaves the padded embedding columns out of the softmax. The training
forward's fused path (hidden x W, no logits) is ``backend/train/output_layer.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from meml_kernels.logprobs import LogprobsOutput
from meml_kernels.logprobs import token_logprobs as _kernel_token_logprobs
from meml_kernels.token_loss import TokenLossInputs

__all__ = ["token_logprobs", "token_logprobs_and_loss", "resolve_tp", "TokenLossInputs"]


def resolve_tp(v_local: int, tp_group=None, vocab_start: Optional[int] = None):
    """(group or None, vocab_start) for a vocabulary shard of ``v_local`` ids on this rank.

    Explicit ``tp_group`` wins; else Megatron's TP group when parallel_state is initialised and its size is > 1;
    else (None, 0 or the given vocab_start).
    """
    if tp_group is not None:
        rank = dist.get_rank(tp_group)
        return tp_group, rank * v_local if vocab_start is None else vocab_start
    try:
        from megatron.core import parallel_state as ps
    except ImportError:  # megatron-core absent: single shard
        return None, 0 if vocab_start is None else vocab_start
    if ps.model_parallel_is_initialized() and ps.get_tensor_model_parallel_world_size() > 1:
        rank = ps.get_tensor_model_parallel_rank()
        return ps.get_tensor_model_parallel_group(), rank * v_local if vocab_start is None else vocab_start
    return None, 0 if vocab_start is None else vocab_start


def token_logprobs_and_loss(logits_local: torch.Tensor, targets: torch.Tensor, tp_group=None,
                            temperature: float = 1.0, vocab_start: Optional[int] = None, impl: str = "auto",
                            ignore_index: int = -100, mask: Optional[torch.Tensor] = None,
                            return_entropy: bool = False, loss: Optional[TokenLossInputs] = None,
                            vocab_limit: Optional[int] = None) -> LogprobsOutput:
    """Full form: LogprobsOutput(logp, entropy or None, loss or None, clipped or None), each shaped like targets."""
    group, start = resolve_tp(logits_local.shape[-1], tp_group, vocab_start)
    return _kernel_token_logprobs(logits_local, targets, temperature=temperature, ignore_index=ignore_index,
                                  mask=mask, vocab_start=start, vocab_limit=vocab_limit, tp_group=group,
                                  return_entropy=return_entropy, loss=loss, impl=impl)


def token_logprobs(logits_local: torch.Tensor, targets: torch.Tensor, tp_group=None, temperature: float = 1.0,
                   vocab_start: Optional[int] = None, impl: str = "auto", ignore_index: int = -100,
                   mask: Optional[torch.Tensor] = None, vocab_limit: Optional[int] = None) -> torch.Tensor:
    """fp32 log-probs shaped like ``targets``; see the module docstring."""
    return token_logprobs_and_loss(logits_local, targets, tp_group, temperature, vocab_start, impl, ignore_index,
                                   mask, vocab_limit=vocab_limit).logp
