"""The training forward's output layer: per-token log-probs straight from the final-norm hidden states and the
vocab-parallel output weight, so the [tokens x vocab] logits never exist (``model.fused_output``, the default).

    with final_hidden_states(chunk) as cap:          # GPTModel.output_layer stood in for by a capture
        hidden = chunk(tokens, position_ids, attention_mask=...)        # [B, S, H] on the last pipeline stage
    out = fused_logprobs(hidden, cap.weight_used, targets, opts, temperature, loss=TokenLossInputs | None)

How the hidden states are reached. megatron-core's ``GPTModel._postprocess`` (0.16 and 0.19 alike) calls
``self.output_layer(hidden [S, B, H], weight=output_weight, runtime_gather_output=...)`` and returns
``logits.transpose(0, 1).contiguous()``. For the duration of one call :func:`final_hidden_states` puts a
:class:`_HiddenCapture` in the ``output_layer`` slot: it records the weight the model passes (the shared embedding
when embeddings are tied -- on the last stage of PP > 1 that is the stage's copy, whose gradient megatron's
``finalize_model_grads`` all-reduces with the first stage's embedding -- else the output layer's own weight) and
returns the hidden states in place of logits, so the model returns hidden [B, S, H]. Everything the model does
before the output layer (final norm, MTP, ...) is unchanged, and no hook on the real output layer runs (none is
registered here: megatron DDP adds forward pre-hooks only for ``overlap_param_gather``, which this project does not
turn on; with it, an untied output weight would have to wait for its all-gather here).

The output layer's input communication is kept: with sequence parallelism the capture all-gathers the sequence
shards (backward: reduce-scatter of dhidden, as ``ColumnParallelLinear`` does); otherwise the kernel all-reduces
its partial dhidden over the TP group in its backward (``allreduce_dhidden``; the all-reduce that
``ColumnParallelLinear`` does for its input). Not megatron's ``copy_to_tensor_model_parallel_region``: in 0.16 its
backward all-reduces a ``.contiguous()`` copy and returns the unreduced input when the gradient is not contiguous
-- here it is a transposed view -- so TP>1 gradients came out wrong. The fused kernel
(``meml_kernels.linear_logprobs``) then sees this rank's vocabulary shard of the weight, its global offset
``tp_rank * V_local`` and ``vocab_limit = model.vocab_size`` (padded embedding rows take no probability mass,
like the masked logits of the logits path), and needs only two [T] all-reduces.

The logits path (``model.fused_output=false``) is the obviously-correct twin: the model's own output layer, then
``meml_kernels.logprobs`` on the logits with the same ``vocab_limit``. Generation always uses the logits.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from meml_kernels.linear_logprobs import linear_token_logprobs
from meml_kernels.logprobs import LogprobsOutput
from meml_kernels.token_loss import TokenLossInputs

ATTR = "meml_output_options"


@dataclass(frozen=True)
class OutputOptions:
    """How the training forward turns the last stage's hidden states into log-probs.

    fused: hidden x W through the fused kernel (no logits); False: logits, then log-softmax.
    vocab_limit: the real vocabulary size (``model.vocab_size``); ids at or above it are padding (None: no padding).
    impl: kernel implementation (``auto`` = Triton on CUDA, torch twin on CPU).
    """

    fused: bool = True
    vocab_limit: Optional[int] = None
    impl: str = "auto"


def _gpt(chunk: torch.nn.Module) -> torch.nn.Module:
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def set_options(chunk: torch.nn.Module, options: OutputOptions) -> None:
    """Attach ``options`` to the GPTModel inside ``chunk`` (done by ``backend.train.model.build_gpt``)."""
    object.__setattr__(_gpt(chunk), ATTR, options)


def options_of(chunk: torch.nn.Module) -> OutputOptions:
    """The chunk's options; a model built elsewhere gets the defaults (fused, no padding limit)."""
    return getattr(_gpt(chunk), ATTR, OutputOptions())


class _HiddenCapture(torch.nn.Module):
    """Stands in for ``GPTModel.output_layer`` during one forward: returns (hidden, None) instead of (logits, bias)
    and records the weight the model asked the output layer to use."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "layer", layer)     # not a submodule: its parameters stay the model's
        object.__setattr__(self, "weight_used", None)

    @property
    def weight(self):                                # GPTModel.shared_embedding_or_output_weight reads it
        return self.layer.weight

    @property
    def sequence_parallel(self) -> bool:
        return bool(getattr(self.layer, "sequence_parallel", False))

    @property
    def tp_group(self):
        return getattr(self.layer, "tp_group", None)

    def forward(self, hidden: torch.Tensor, weight: Optional[torch.Tensor] = None, runtime_gather_output=None,
                **_ignored):
        from megatron.core import tensor_parallel as tpl

        object.__setattr__(self, "weight_used", self.layer.weight if weight is None else weight)
        if self.sequence_parallel:   # backward: reduce-scatter (sums the TP ranks' partial dhidden)
            hidden = tpl.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True,
                                                              group=self.tp_group)
        return hidden, None


@contextlib.contextmanager
def final_hidden_states(chunk: torch.nn.Module) -> Iterator[Optional[_HiddenCapture]]:
    """Within the block, ``chunk(...)`` returns the final-norm hidden states [B, S, H] instead of logits on the last
    pipeline stage; yields the capture (``.weight_used`` after the call), or None on a stage without an output
    layer (its output is unchanged)."""
    gpt = _gpt(chunk)
    layer = gpt._modules.get("output_layer") if getattr(gpt, "post_process", False) else None
    if layer is None:
        yield None
        return
    cap = _HiddenCapture(layer)
    gpt._modules["output_layer"] = cap
    try:
        yield cap
    finally:
        gpt._modules["output_layer"] = layer


def _tp(cap: _HiddenCapture, v_local: int):
    """(group or None, vocab_start) of this rank's vocabulary shard."""
    import torch.distributed as dist

    group = cap.tp_group
    if group is None or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return None, 0
    return group, dist.get_rank(group) * v_local


def fused_logprobs(hidden: torch.Tensor, cap: _HiddenCapture, targets: torch.Tensor, options: OutputOptions,
                   temperature: float = 1.0, loss: Optional[TokenLossInputs] = None) -> LogprobsOutput:
    """log softmax(hidden @ W^T / temperature)[targets] over the real vocabulary, vocab-parallel, without logits.

    hidden [B, S, H] (the capture's output); targets [B, S] global ids. dhidden is summed over the TP ranks by the
    kernel, or by the sequence-parallel gather's reduce-scatter. With ``loss`` the token-loss epilogue runs in the same
    forward (``LogprobsOutput.loss`` / ``.clipped``)."""
    weight = cap.weight_used
    if weight is None:
        raise RuntimeError("the output layer was not called during the forward (no hidden states captured)")
    group, start = _tp(cap, weight.shape[0])
    if hidden.dtype != weight.dtype:   # e.g. an fp32 final norm output with bf16 weights
        hidden = hidden.to(weight.dtype)
    return linear_token_logprobs(hidden, weight, targets, temperature=temperature, vocab_start=start,
                                 vocab_limit=options.vocab_limit, tp_group=group, loss=loss,
                                 allreduce_dhidden=not cap.sequence_parallel, impl=options.impl)
