"""Per-token log p(target) (and entropy) from bf16/fp32 logits, vocab-parallel, with an optional fused loss.

    out = token_logprobs(logits [T, V_local], targets [T], temperature=1.0, ignore_index=-100, mask=None,
                         vocab_start=None, vocab_limit=None, tp_group=None, return_entropy=False, loss=None,
                         impl="auto")
    out.logp     fp32 [T]   log softmax(logits / temperature)[target]; 0 on ignored / masked tokens
    out.entropy  fp32 [T]   (when return_entropy) entropy of softmax(logits / temperature); 0 on ignored tokens
    out.loss     fp32 [T]   (when loss=TokenLossInputs(...)) weight * mask * l  -- see ``meml_kernels.token_loss``
    out.clipped  bool [T]   (with loss) clip indicator of GRPO tokens

All outputs are differentiable (except ``clipped``); gradients reach ``logits`` only.
Vocab parallel: ``logits`` holds the shard [vocab_start, vocab_start + V_local) of the vocabulary on each rank of
``tp_group`` (default vocab_start: rank * V_local); ``targets`` are global ids. Two all-reduces of [T]-sized
tensors, no [T, V] gather. Leading dims are flattened: logits [..., V] with targets [...] works too.
``vocab_limit``: the real vocabulary size; logits of global ids >= vocab_limit (embedding padding) are left out
of the softmax (as if -inf) and get a zero gradient. Targets must lie below it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._dispatch import resolve_impl
from .._vocab_parallel import default_vocab_start, local_vocab_end, valid_rows
from ..token_loss import TokenLossInputs
from . import reference
from .autograd import LogprobsFunction

__all__ = ["token_logprobs", "LogprobsOutput", "TokenLossInputs"]


class LogprobsOutput(NamedTuple):
    logp: torch.Tensor
    entropy: torch.Tensor | None
    loss: torch.Tensor | None
    clipped: torch.Tensor | None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                   ignore_index: int = -100, mask: torch.Tensor | None = None, vocab_start: int | None = None,
                   vocab_limit: int | None = None, tp_group=None, return_entropy: bool = False, loss: TokenLossInputs | None = None,
                   impl: str = "auto") -> LogprobsOutput:
    """See the module docstring. Shapes: logits [..., V_local], targets/mask [...] -> outputs [...]."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shape = targets.shape
    v_local = logits.shape[-1]
    logits2 = logits.reshape(-1, v_local)
    targets1 = targets.reshape(-1)
    if logits2.shape[0] != targets1.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(shape)} disagree on the token count")
    if vocab_start is None:
        vocab_start = default_vocab_start(v_local, tp_group)
    v_end = local_vocab_end(v_local, vocab_start, vocab_limit)
    valid = valid_rows(targets1, ignore_index, mask)
    if resolve_impl(impl, logits, targets) == "triton":
        from . import triton_impl as engine
        impl = "triton"
    else:
        engine = reference
        impl = "torch"
    flat_loss = None if loss is None else loss.flat()
    logp, ent, loss_t, clipped = LogprobsFunction.apply(logits2, targets1, valid, 1.0 / temperature, vocab_start,
                                                        tp_group, engine, return_entropy, flat_loss, impl, v_end)
    return LogprobsOutput(
        logp.view(shape),
        ent.view(shape) if return_entropy else None,
        loss_t.view(shape) if loss is not None else None,
        clipped.view(shape) if loss is not None else None,
    )
