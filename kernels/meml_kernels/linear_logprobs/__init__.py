"""Per-token log-probs straight from hidden states and the output weight: [T, V] logits never exist.

    out = linear_token_logprobs(hidden [T, H], weight [V_local, H], targets [T], temperature=1.0,
                                ignore_index=-100, mask=None, vocab_start=None, vocab_limit=None, tp_group=None,
                                return_entropy=False, loss=None, allreduce_dhidden=True, impl="auto")
    out.logp / out.entropy / out.loss / out.clipped   as in ``meml_kernels.logprobs`` (fp32 [T])

Gradients reach ``hidden`` and ``weight``. Vocab parallel: ``weight`` is this rank's row shard of the output layer
(global ids vocab_start ..., default rank * V_local), ``hidden`` is replicated over ``tp_group``; two [T]
all-reduces in the forward, and (if ``allreduce_dhidden``) one [T, H] all-reduce of dhidden in the backward.
No bias (output layers of the supported models have none). hidden and weight must share a dtype (bf16 or fp32).
``vocab_limit``: the real vocabulary size; global ids >= vocab_limit (the embedding's padding rows) are left out of
the softmax -- no probability mass, zero gradient in their dweight rows (``meml_kernels._vocab_parallel``); the
same as setting those logits to -inf. Targets must lie below it.
"""
from __future__ import annotations

import torch

from .._dispatch import resolve_impl
from .._vocab_parallel import default_vocab_start, local_vocab_end, valid_rows
from ..logprobs import LogprobsOutput
from ..token_loss import TokenLossInputs
from . import reference
from .autograd import LinearLogprobsFunction

__all__ = ["linear_token_logprobs", "LogprobsOutput", "TokenLossInputs"]


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                          temperature: float = 1.0, ignore_index: int = -100, mask: torch.Tensor | None = None,
                          vocab_start: int | None = None, vocab_limit: int | None = None, tp_group=None,
                          return_entropy: bool = False,
                          loss: TokenLossInputs | None = None, allreduce_dhidden: bool = True,
                          impl: str = "auto") -> LogprobsOutput:
    """See the module docstring. Shapes: hidden [..., H], targets/mask [...] -> outputs [...]."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} disagree on H")
    shape = targets.shape
    hidden2 = hidden.reshape(-1, hidden.shape[-1])
    targets1 = targets.reshape(-1)
    if hidden2.shape[0] != targets1.shape[0]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(shape)} disagree on the token count")
    if vocab_start is None:
        vocab_start = default_vocab_start(weight.shape[0], tp_group)
    v_end = local_vocab_end(weight.shape[0], vocab_start, vocab_limit)
    valid = valid_rows(targets1, ignore_index, mask)
    if resolve_impl(impl, hidden, weight, targets) == "triton":
        from . import triton_impl as engine
        impl = "triton"
    else:
        engine = reference
        impl = "torch"
    flat_loss = None if loss is None else loss.flat()
    logp, ent, loss_t, clipped = LinearLogprobsFunction.apply(
        hidden2, weight, targets1, valid, 1.0 / temperature, vocab_start, tp_group, engine, return_entropy,
        flat_loss, impl, allreduce_dhidden, v_end)
    return LogprobsOutput(
        logp.view(shape),
        ent.view(shape) if return_entropy else None,
        loss_t.view(shape) if loss is not None else None,
        clipped.view(shape) if loss is not None else None,
    )
