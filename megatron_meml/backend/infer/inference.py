"""Megatron side of generation on the training weights. ``rollout/megatron_engine.py`` drives the decode loop and
the sampling; everything that touches megatron-core (KV cache, pipeline hand-off, TP gather, process groups) is here.

KV cache: megatron-core's :class:`StaticInferenceContext` passed to ``GPTModel.forward(inference_context=...)``
(the path of megatron's own static engine; it runs on CPU). Its contract, which the engine follows:
  * one cache per layer ``[max_seq, max_batch, groups, head_dim]`` allocated on first use, keyed by the global
    layer number (so each pipeline stage caches exactly its own layers);
  * every row of the batch sits at the same cache slot ``sequence_len_offset``; a forward of ``s`` new tokens writes
    slots ``[offset, offset + s)``; RoPE is applied by slot;
  * offset 0 = prefill; after it, one token per row and step;
  * the model must be in eval mode, and the output layer must gather over TP (``runtime_gather_output=True``);
    only the last position's logits are materialised.

Prompts of different lengths (the engine picks the layout, see ``rollout/megatron_engine.py``):
  * ``key_mask`` given (slots to ignore, e.g. left padding): an explicit boolean attention mask ``[B, 1, sq, sk]``
    (causal within the prefill, padding slots masked) is passed to the attention. Megatron's own (local-spec)
    ``DotProductAttention`` applies a given mask in prefill and decode alike; RoPE scores depend only on relative
    positions, so a row shifted right by its padding attends exactly as it would at slot 0 (up to fp32 rounding).
    Transformer Engine's attention ignores an explicit mask under megatron's inference mask types, so
    :attr:`PipelineForward.supports_attention_mask` is False there.
  * no mask: every row's tokens must start at slot 0 (contiguous), causal prefill and mask-free decode -- the
    scheme of megatron's own static controller, valid for any attention backend.

Pipeline parallelism: stage k receives the hidden states ``[s, B, H]`` of stage k-1 (``set_input_tensor``), runs its
layers with its own cache and sends its output on; the last stage returns logits. Tokens sampled on the last stage
are broadcast over the pipeline group (:meth:`PipelineForward.broadcast_from_last_stage`) so every rank holds
the same tokens. Under TP every rank of a stage gets the full gathered logits and computes the same thing.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist

from ..train.state import unwrap


@contextlib.contextmanager
def _megatron_inference_flag() -> Iterator[None]:
    """megatron-core >= 0.19 decides "inference path" by a process-wide ``InferenceMode`` flag (0.16: eval mode +
    an inference context). Set it for the body and restore its previous value; a no-op where it does not exist."""
    try:
        from megatron.core.inference.utils import InferenceMode
    except ImportError:
        InferenceMode = None
    if InferenceMode is None or not hasattr(InferenceMode, "set_active"):
        yield
        return
    was_active = InferenceMode.is_active()
    InferenceMode.set_active()
    try:
        yield
    finally:
        if not was_active:
            InferenceMode.unset_active()


@contextlib.contextmanager
def generation_mode(chunks: Sequence[torch.nn.Module]) -> Iterator[None]:
    """eval() + no_grad (+ megatron's inference flag where the version has one) for the body; afterwards every
    chunk gets its previous training flag back and the pipeline input tensor is cleared, so the model is exactly as
    it was found (no inference state lives on the model: the KV cache belongs to the :class:`PipelineForward`)."""
    was_training = [c.training for c in chunks]
    for c in chunks:
        c.eval()
    try:
        with torch.no_grad(), _megatron_inference_flag():
            yield
    finally:
        for c, t in zip(chunks, was_training):
            unwrap(c).set_input_tensor(None)
            c.train(t)


def _ps():
    from megatron.core import parallel_state as ps

    return ps


def model_parallel_initialized() -> bool:
    return _ps().model_parallel_is_initialized()


def data_parallel_rank_size():
    """(dp_rank, dp_size) of this process; (0, 1) when megatron's groups are not initialised."""
    ps = _ps()
    if not ps.model_parallel_is_initialized():
        return 0, 1
    return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()


def dp_all_gather_objects(obj: Any) -> List[Any]:
    """Every data-parallel rank's ``obj`` in DP-rank order (picklable objects; one collective)."""
    ps = _ps()
    if not ps.model_parallel_is_initialized() or ps.get_data_parallel_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * ps.get_data_parallel_world_size()
    dist.all_gather_object(out, obj, group=ps.get_data_parallel_group())
    return out


class PipelineForward:
    """The whole model's forward for one generation batch of ``batch_size`` rows, on this rank's stage.

    ``use_cache=True``: :meth:`forward` takes the *new* tokens ``[B, s]`` of every row, stores their keys/values at
    slots ``[offset, offset + s)`` and advances the offset by ``s`` (``s > 1`` only for the first call, the
    prefill); ``key_mask`` [B, >= offset + s] bool marks slots no query may attend to (None: contiguous rows).
    ``use_cache=False`` (the obviously-correct twin): :meth:`forward` takes whole right-padded sequences
    ``[B, L]`` and re-runs them from scratch with the plain causal mask of training; ``last_index`` [B] picks each
    row's last real position (default ``L - 1``). Either way it returns fp32 logits ``[B, V_padded]`` on the last
    pipeline stage (TP-gathered: the full padded vocabulary) and None on other stages.
    Must be used inside :func:`generation_mode`.
    """

    def __init__(self, chunks: Sequence[torch.nn.Module], batch_size: int, max_seq_len: int, use_cache: bool = True):
        if len(chunks) != 1:
            raise ValueError("generation supports one model chunk per rank (no virtual pipeline stages)")
        ps = _ps()
        self.model = unwrap(chunks[0])
        self.device = next(self.model.parameters()).device
        self.dtype = self.model.config.params_dtype
        self.hidden = self.model.config.hidden_size
        self.use_cache = use_cache
        self.first = ps.is_pipeline_first_stage()
        self.last = ps.is_pipeline_last_stage()
        self.pp = ps.get_pipeline_model_parallel_world_size()
        if self.pp > 1:
            self.pp_group = ps.get_pipeline_model_parallel_group()
            self.prev_rank = ps.get_pipeline_model_parallel_prev_rank()
            self.next_rank = ps.get_pipeline_model_parallel_next_rank()
            self.last_rank = ps.get_pipeline_model_parallel_last_rank()
        from megatron.core.transformer.dot_product_attention import DotProductAttention

        self.supports_attention_mask = all(isinstance(layer.self_attention.core_attention, DotProductAttention)
                                           for layer in self.model.decoder.layers)
        self.context = None
        if use_cache:
            from megatron.core.inference.contexts import StaticInferenceContext

            self.context = StaticInferenceContext(batch_size, max_seq_len)

    @property
    def offset(self) -> int:
        return self.context.sequence_len_offset if self.context is not None else 0

    def forward(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
                last_index: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        b, s = tokens.shape
        start = self.offset
        if self.context is not None and start > 0 and s != 1:
            raise ValueError("after the prefill, the static KV cache takes one token per row and step")
        mask = None
        if key_mask is not None:
            if self.context is None or not self.supports_attention_mask:
                raise ValueError("key_mask needs the KV cache and megatron's DotProductAttention")
            mask = key_mask[:, None, None, :start + s]
            if s > 1:
                causal = torch.ones(s, start + s, dtype=torch.bool, device=self.device).triu(start + 1)
                mask = mask | causal

        if not self.first:
            recv = torch.empty(s, b, self.hidden, dtype=self.dtype, device=self.device)
            dist.recv(recv, src=self.prev_rank, group=self.pp_group)
            self.model.set_input_tensor(recv)
        position_ids = torch.arange(start, start + s, device=self.device).unsqueeze(0).expand(b, s)
        out = self.model(tokens if self.first else None, position_ids if self.first else None, mask,
                         inference_context=self.context, runtime_gather_output=True)
        if self.context is not None:
            self.context.increment_sequence_len_offset(s)
        if not self.last:
            dist.send(out.contiguous(), dst=self.next_rank, group=self.pp_group)
            return None
        if last_index is not None and self.context is None:
            return out[torch.arange(b, device=out.device), last_index.to(out.device)].float()
        return out[:, -1, :].float()

    def broadcast_from_last_stage(self, tensor: torch.Tensor) -> torch.Tensor:
        """The last stage's ``tensor`` on every stage (same shape and dtype on all ranks); identity without PP."""
        if self.pp > 1:
            tensor = tensor.contiguous()
            dist.broadcast(tensor, src=self.last_rank, group=self.pp_group)
        return tensor

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (indices into the current rows) in the KV cache: finished requests are
        dropped so later decode steps run on fewer rows. The next forward must pass ``len(rows)`` rows."""
        if self.context is None:
            return
        rows = rows.to(self.device)
        mem = self.context.key_value_memory_dict
        for layer in list(mem):
            k, v = mem[layer]
            mem[layer] = (k.index_select(1, rows), v.index_select(1, rows))

    def close(self) -> None:
        """Free the KV cache."""
        if self.context is not None:
            self.context.key_value_memory_dict.clear()
            self.context = None
