"""This rank's stage of a megatron GPTModel run over a slot-major KV cache that this object owns: the model side of
the continuous engine (``rollout/continuous_engine.py`` schedules; everything that touches megatron is here).

Why not ``GPTModel.forward``: profiling the static engine's decode step on the CPU (4 layers, hidden 128, 64 rows,
~170 cached tokens, fp32, one thread; cProfile) gave 55 ms per step, of which megatron's attention module took 38 ms:
16 ms re-applying RoPE to every *cached* key each step (the static cache stores un-rotated keys), 11 ms SDPA with
a dense float mask and a GQA expansion, the rest module plumbing (the CPU runtime's ``TorchFunctionMode`` saw
36k calls per generation). Here the layers are driven directly with megatron's own submodules and weights --
``input_layernorm``, ``self_attention.get_query_key_value_tensors`` (``linear_qkv`` + split + optional q/k norms),
``linear_proj`` (row-parallel: all-reduces under TP), ``pre_mlp_layernorm``, ``mlp``, ``final_layernorm``,
``output_layer`` (gathered over TP) and the vocab-parallel ``embedding`` -- with our own attention:
  * keys are rotated **once**, when written; RoPE cos/sin come from megatron's ``rotary_pos_emb.get_emb`` (the
    same ``cos(freqs).to(dtype)`` values megatron multiplies by, llama3 scaling included);
  * decode attention is ``meml_kernels.decode_attention`` (GQA without copies, ragged per-slot lengths);
  * prefill attention is SDPA over the slot's cached prefix plus the new chunk (causal by absolute position), through
    ``attention.sdpa`` (a mask with grouped KV heads: the memory-efficient CUDA kernel, never the math path);
  * on the local layer spec the linear layers are applied as ``F.linear`` on megatron's weight tensors (the
    row-parallel all-reduce done here), skipping megatron's autograd-function wrappers, and the CPU runtime's
    ``TorchFunctionMode`` is bypassed inside the forward: together 1.7x tokens/s (megatron_meml.bench.rollout
    defaults, 16 rows, best of 5 under load).
Under TP each rank holds its ``nh/TP`` query heads and ``ng/TP`` key/value groups (megatron's partition of
``linear_qkv``) and attends over them; ``linear_proj`` sums the heads across ranks. Under PP each stage caches its
own layers and hands ``[T, 1, H]`` hidden states to the next (``dist.send``/``recv``); the last stage returns logits.

Cache layout: **slot-contiguous**, ``k, v: [layers, N slots, ng, C + 1, hn]``; slot s holds one request's positions
``0..C-1``; column C is a scratch column that idle rows of a padded decode batch write to. Chosen over paging
because every request's footprint is known when it is admitted (prompt + ``max_new_tokens``), so a pool of
``token_budget / C`` slots has no fragmentation to page away; decode then reads ``k[:B]`` as a plain strided view
(no block-table gather in the torch twin, no indirection in the kernel), prefix sharing is a copy of the prompt's
rows into the group's other slots (``copy_prefix``), and the decode step has fixed shapes per batch bucket, which
CUDA graphs need. The cost is memory: each slot reserves C = max(prompt + max_new) of the call.

CUDA graphs (CUDA only, ``cuda_graphs=True``): the decode step (embedding or received hidden -> layers -> logits)
is captured once per batch bucket (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, ... <= N) into a shared memory pool and
replayed with the batch padded to its bucket (padded rows: token 0, the scratch column, length 0 -- their attention
output is 0 and their logits are ignored). Off on the CPU, where there is nothing to capture.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from ..train.attention import sdpa
from ..train.model import unwrap


def plain_torch():
    """Run the body without the CPU runtime's ``TorchFunctionMode`` (``backend/runtime/cpu_runtime.py``): the slot
    model and
    the continuous engine's scheduler never ask for a CUDA device, and the mode's per-op Python hook (~8 us a call)
    was ~10% of a CPU decode step. A no-op on CUDA (no mode is installed there)."""
    if torch.cuda.is_available():
        return contextlib.nullcontext()
    return torch._C.DisableTorchFunction()


def sync_free_vocab_embedding(layer, ids: torch.Tensor) -> torch.Tensor:
    """megatron's ``VocabParallelEmbedding.forward`` (this rank's rows ``[vocab_start, vocab_end)`` of the table,
    0 for ids outside them, summed over the tensor-parallel group) without its boolean-mask writes
    ``masked_input[input_mask] = 0`` / ``output_parallel[input_mask, :] = 0``: those are ``index_put_`` with a bool
    index, which needs ``nonzero`` -- a device-to-host sync that a CUDA-graph capture refuses. Here the id is
    clamped into the shard and the row is selected by ``torch.where`` (same values exactly, fixed shapes, no sync).
    ids [...] int -> [..., H] in the table's dtype. Forward only (generation)."""
    weight = layer.weight
    tp_group = getattr(layer, "tp_group", None)
    if tp_group is None or dist.get_world_size(tp_group) == 1:
        return torch.nn.functional.embedding(ids, weight)
    local = ids - layer.vocab_start_index
    inside = (local >= 0) & (local < weight.shape[0])
    out = torch.nn.functional.embedding(local.clamp(0, weight.shape[0] - 1), weight)
    out = torch.where(inside[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    dist.all_reduce(out, group=tp_group)
    return out


def _plain_vocab_parallel(emb, cfg) -> bool:
    """Whether :func:`sync_free_vocab_embedding` computes ``emb``'s forward (megatron's ``LanguageModelEmbedding``
    with a TP > 1 ``VocabParallelEmbedding`` and nothing else); else the module itself runs."""
    from megatron.core.tensor_parallel.layers import VocabParallelEmbedding

    wemb = getattr(emb, "word_embeddings", None)
    if not isinstance(wemb, VocabParallelEmbedding) or getattr(wemb, "tp_group", None) is None:
        return False
    if not dist.is_initialized() or dist.get_world_size(wemb.tp_group) == 1:
        return False
    return not (getattr(emb, "add_position_embedding", False) or getattr(emb, "tokentype_embeddings", None)
                is not None or getattr(emb, "reduce_scatter_embeddings", False) or cfg.sequence_parallel
                or cfg.fp32_residual_connection)


class UnsupportedModel(ValueError):
    """The model uses a feature the slot model does not reproduce (the engine falls back to ``static``)."""


def _ps():
    from megatron.core import parallel_state as ps

    return ps


@dataclass
class StageComm:
    """Pipeline hand-off of one rank: who sends hidden states to whom, who samples (the last stage). Defaults from
    megatron's parallel state; pass your own for an engine on other process groups."""

    first: bool = True
    last: bool = True
    pp_size: int = 1
    group: object = None
    prev_rank: Optional[int] = None
    next_rank: Optional[int] = None
    last_rank: Optional[int] = None

    @classmethod
    def from_megatron(cls) -> "StageComm":
        ps = _ps()
        if not ps.model_parallel_is_initialized() or ps.get_pipeline_model_parallel_world_size() == 1:
            return cls()
        return cls(first=ps.is_pipeline_first_stage(), last=ps.is_pipeline_last_stage(),
                   pp_size=ps.get_pipeline_model_parallel_world_size(), group=ps.get_pipeline_model_parallel_group(),
                   prev_rank=ps.get_pipeline_model_parallel_prev_rank(),
                   next_rank=ps.get_pipeline_model_parallel_next_rank(),
                   last_rank=ps.get_pipeline_model_parallel_last_rank())


def unsupported_reason(chunks: Sequence[torch.nn.Module]) -> Optional[str]:
    """Why these chunks cannot run on the slot model (None when they can)."""
    if len(chunks) != 1:
        return "one model chunk per rank (no virtual pipeline stages)"
    model = unwrap(chunks[0])
    cfg = model.config
    checks = {
        "rotary position embedding": getattr(model, "position_embedding_type", "rope") == "rope",
        "no interleaved RoPE": not getattr(cfg, "rotary_interleaved", False),
        "no multi-latent attention": not getattr(cfg, "multi_latent_attention", False),
        "no residual after the layer norm": not getattr(cfg, "apply_residual_connection_post_layernorm", False),
        "vanilla softmax": getattr(cfg, "softmax_type", "vanilla") == "vanilla",
        "no sliding window": getattr(cfg, "window_size", None) is None,
        "no attention output gate": not getattr(cfg, "attention_output_gate", False),
        "no query-key layer scaling": not getattr(cfg, "apply_query_key_layer_scaling", False),
        "no sequence parallelism": not getattr(cfg, "sequence_parallel", False),
        "no context parallelism": getattr(cfg, "context_parallel_size", 1) == 1,
        "no MoE": not getattr(cfg, "num_moe_experts", None),
    }
    bad = [k for k, ok in checks.items() if not ok]
    return None if not bad else "needs " + ", ".join(bad)


def batch_buckets(n_slots: int) -> List[int]:
    """Decode batch sizes captured as CUDA graphs: powers of two to 32, then steps of 16 / 32 / 64 up to N."""
    out, b = [], 1
    while b < min(32, n_slots):
        out.append(b)
        b *= 2
    b = 32
    while b < n_slots:
        out.append(b)
        b += 16 if b < 128 else (32 if b < 256 else 64)
    out.append(n_slots)
    return sorted(set(x for x in out if x <= n_slots))


class SlotModel:
    """The decode/prefill forward of this rank's stage over ``num_slots`` cache slots of ``capacity`` tokens.

    Methods (every rank of the model-parallel group calls them with the same arguments, in the same order):
      * :meth:`prefill` -- segments (slot, start, tokens): writes their K/V and returns logits ``[nb, V]`` of each
        segment's last token (last stage; None elsewhere);
      * :meth:`decode` -- one token for each of the slots ``0..B-1``: writes K/V at ``positions`` and returns logits
        ``[B, V]``; rows with ``active[b] == False`` compute garbage into the scratch column;
      * :meth:`copy_prefix` -- copy cache positions ``[0, n)`` of one slot into others (a group's shared prompt);
      * :meth:`move_slot` -- relocate a slot's first n positions (compaction);
      * :meth:`broadcast_from_last_stage`.
    Must run inside :func:`backend.inference.generation_mode` (eval, no_grad).
    """

    def __init__(self, chunks: Sequence[torch.nn.Module], num_slots: int, capacity: int,
                 comm: Optional[StageComm] = None, attention_impl: str = "auto", cuda_graphs: bool = False):
        reason = unsupported_reason(chunks)
        if reason:
            raise UnsupportedModel(reason)
        self.model = model = unwrap(chunks[0])
        self.comm = comm or StageComm.from_megatron()
        cfg = model.config
        self.layers = list(model.decoder.layers)
        self.device = next(model.parameters()).device
        self.dtype = cfg.params_dtype
        self.hidden = cfg.hidden_size
        att = self.layers[0].self_attention if self.layers else None
        self.nh = att.num_attention_heads_per_partition if att else 0
        self.ng = att.num_query_groups_per_partition if att else 0
        self.hn = att.hidden_size_per_attention_head if att else 0
        self.scale = cfg.softmax_scale if getattr(cfg, "softmax_scale", None) else self.hn ** -0.5
        self.num_slots, self.capacity = int(num_slots), int(capacity)
        self.C = self.capacity + 1  # + the scratch column
        shape = (len(self.layers), self.num_slots, self.ng, self.C, self.hn)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        emb = model.rotary_pos_emb.get_emb(self.C)  # megatron's own frequencies [C, 1, 1, rot]
        self.rot = emb.shape[-1]
        self.cos = torch.cos(emb).to(self.dtype)[:, 0, 0]  # [C, rot], exactly what megatron multiplies by
        self.sin = torch.sin(emb).to(self.dtype)[:, 0, 0]
        self.attention_impl = attention_impl
        self.use_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.buckets = batch_buckets(self.num_slots)
        self._graphs: Dict[int, tuple] = {}
        self._pool = None
        self.tp_group, self.tp_size = None, 1
        self.fast = self._fast_plan(model)
        self.last_hidden: Optional[torch.Tensor] = None   # final-norm hidden states of the latest logits' rows
        self.sync_free_embedding = True   # False: megatron's VocabParallelEmbedding (a host sync under TP > 1)

    def _fast_plan(self, model):
        """Per-layer modules for :meth:`_layers_fast` when every layer is the plain local spec (megatron's
        Column/RowParallelLinear, no q/k norms, no clamped GLU); None otherwise (Transformer Engine layers run through
        their module calls, where CUDA graphs take the Python cost away)."""
        from types import SimpleNamespace

        from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
        from megatron.core.transformer.identity_op import IdentityOp

        cfg = model.config
        if getattr(cfg, "activation_func_clamp_value", None) is not None or getattr(cfg, "glu_linear_offset", 0.0):
            return None
        if getattr(cfg, "use_te_activation_func", False) or cfg.bias_activation_fusion or cfg.sequence_parallel:
            return None
        plan = []
        for layer in self.layers:
            att, mlp = layer.self_attention, layer.mlp
            linears = (getattr(att, "linear_qkv", None), getattr(att, "linear_proj", None),
                       getattr(mlp, "linear_fc1", None), getattr(mlp, "linear_fc2", None))
            if [type(m) for m in linears] != [ColumnParallelLinear, RowParallelLinear, ColumnParallelLinear,
                                             RowParallelLinear]:
                return None
            if any(not (n is None or isinstance(n, IdentityOp)) for n in (getattr(att, "q_layernorm", None),
                                                                           getattr(att, "k_layernorm", None))):
                return None
            if att.num_query_groups_per_partition * att.world_size != cfg.num_query_groups:
                return None  # fewer KV groups than TP ranks: megatron all-gathers the QKV output
            plan.append(SimpleNamespace(ln1=layer.input_layernorm, ln2=layer.pre_mlp_layernorm, wqkv=linears[0],
                                        wproj=linears[1], wfc1=linears[2], wfc2=linears[3],
                                        glu=cfg.gated_linear_unit, act=cfg.activation_func))
        if plan:
            self.tp_group = getattr(plan[0].wproj, "tp_group", None) or _ps().get_tensor_model_parallel_group()
            self.tp_size = dist.get_world_size(self.tp_group) if dist.is_initialized() else 1
        return plan

    # ---------------------------------------------------------------------------------------------- pieces
    def _rope(self, t: torch.Tensor, positions: torch.Tensor, cs=None) -> torch.Tensor:
        """t [T, heads, hn] rotated at ``positions`` [T] (megatron's non-interleaved rotate-half formula);
        ``cs`` = :meth:`_cos_sin` of the positions, computed once per forward and shared by every layer."""
        cos, sin = cs if cs is not None else self._cos_sin(positions)
        x, rest = t[..., :self.rot], t[..., self.rot:]
        x1, x2 = torch.chunk(x, 2, dim=-1)
        x = x * cos + torch.cat((-x2, x1), dim=-1) * sin
        return x if rest.shape[-1] == 0 else torch.cat((x, rest), dim=-1)

    def _cos_sin(self, positions: torch.Tensor):
        return self.cos[positions][:, None, :], self.sin[positions][:, None, :]

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[T, 1, H]: megatron's ``LanguageModelEmbedding`` of ``tokens`` [T], or under TP > 1 the same values
        without a host sync (:func:`sync_free_vocab_embedding`) when the module is the plain case (word embeddings
        only: no learned positions, token types, sequence parallelism or fp32 residual)."""
        emb = self.model.embedding
        if self.sync_free_embedding and _plain_vocab_parallel(emb, self.model.config):
            x = sync_free_vocab_embedding(emb.word_embeddings, tokens[:, None])     # [T, 1, H]
            return emb.embedding_dropout(x)
        return emb(input_ids=tokens[None], position_ids=positions[None])

    def _stage_input(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[T, 1, H]: the embedding on the first stage, the previous stage's output elsewhere."""
        if self.comm.first:
            return self._embed(tokens, positions)
        x = torch.empty(tokens.shape[0], 1, self.hidden, dtype=self.dtype, device=self.device)
        dist.recv(x, src=self.comm.prev_rank, group=self.comm.group)
        return x

    def _stage_output(self, x: torch.Tensor, rows: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Send to the next stage, or (last stage) fp32 logits ``[R, V_padded]`` of ``rows`` (None: all)."""
        if not self.comm.last:
            dist.send(x.contiguous(), dst=self.comm.next_rank, group=self.comm.group)
            return None
        return self._logits(x if rows is None else x.index_select(0, rows))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 copy of the (model-dtype) logits ``[R, V_padded]``; the final-norm hidden states they came from are
        kept in ``self.last_hidden`` [R, H] for :meth:`sampled_logprobs`."""
        m = self.model
        x = m.decoder.final_layernorm(x) if getattr(m.decoder, "final_layernorm", None) is not None else x
        self.last_hidden = x[:, 0]
        weight = m.shared_embedding_or_output_weight() if m.share_embeddings_and_output_weights else None
        logits, _ = m.output_layer(x, weight=weight, runtime_gather_output=True)
        return logits[:, 0].float()

    def sampled_logprobs(self, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float,
                         vocab_limit: Optional[int]) -> torch.Tensor:
        """fp32 ``log softmax(hidden @ W^T / temperature)[tokens]`` over ids < ``vocab_limit``, computed the way the
        training forward computes log-probs (``backend/output_layer.fused_logprobs``: the fused hidden x W kernel,
        fp32 accumulation, vocab-parallel over this rank's shard of the output weight, two [R] all-reduces) from
        the final-norm hidden states ``hidden`` [R, H] (``last_hidden`` rows). The logits the sampler reads are
        the output layer's in the model dtype: in bf16 their log-softmax differs from training's by ~1e-2, so the
        GRPO ratio would not start at 1. Last pipeline stage only; every TP rank of it must call (collective)."""
        from meml_kernels.linear_logprobs import linear_token_logprobs

        m = self.model
        weight = m.shared_embedding_or_output_weight() if m.share_embeddings_and_output_weights else \
            m.output_layer.weight
        group = getattr(m.output_layer, "tp_group", None) or _ps().get_tensor_model_parallel_group()
        if not dist.is_initialized() or group is None or dist.get_world_size(group) == 1:
            group, start = None, 0
        else:
            start = dist.get_rank(group) * weight.shape[0]
        return linear_token_logprobs(hidden.to(weight.dtype), weight, tokens.to(hidden.device),
                                     temperature=temperature, vocab_start=start, vocab_limit=vocab_limit,
                                     tp_group=group).logp

    def _layers(self, x: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """x [T, 1, H] through this stage's layers; token t's K/V go to (slots[t], positions[t]);
        ``attend(li, q [T, nh, hn]) -> [T, nh * hn]`` reads the cache after the write."""
        if self.fast is not None:
            return self._layers_fast(x, slots, positions, attend)
        for li, layer in enumerate(self.layers):
            att = layer.self_attention
            h = layer.input_layernorm(x)
            q, k, v = att.get_query_key_value_tensors(h)[:3]          # [T, 1, nh|ng, hn]
            q = self._rope(q[:, 0], positions)
            self.k[li][slots, :, positions] = self._rope(k[:, 0], positions)
            self.v[li][slots, :, positions] = v[:, 0]
            ctx = attend(li, q)[:, None]                               # [T, 1, nh * hn]
            out, bias = att.linear_proj(ctx)
            x = x + (out if bias is None else out + bias)
            h = layer.pre_mlp_layernorm(x)
            out, bias = layer.mlp(h)
            x = x + (out if bias is None else out + bias)
        return x

    def _layers_fast(self, x, slots, positions, attend):
        """The same function on the local layer spec with the linear layers' weights applied by ``F.linear``:
        column-parallel ``linear_qkv`` / ``linear_fc1`` need no communication in the forward (no sequence
        parallelism), row-parallel ``linear_proj`` / ``linear_fc2`` all-reduce their partial sums over the
        tensor-parallel group, then add their bias -- megatron's own order. The QKV split is megatron's layout,
        ``[T, ng, (nh/ng + 2), hn]`` per rank; the GLU is ``act(x_gate) * x_up`` of megatron's MLP."""
        F = torch.nn.functional
        x = x[:, 0]
        rep = self.nh // self.ng if self.ng else 0
        cs = self._cos_sin(positions)
        for li, f in enumerate(self.fast):
            h = f.ln1(x)
            qkv = F.linear(h, f.wqkv.weight, f.wqkv.bias).view(-1, self.ng, rep + 2, self.hn)
            qk = self._rope(qkv[:, :, :rep + 1].reshape(-1, self.ng * (rep + 1), self.hn), positions, cs)
            qk = qk.view(-1, self.ng, rep + 1, self.hn)               # q and k rotated in one pass
            q = qk[:, :, :rep].reshape(-1, self.nh, self.hn)
            self.k[li][slots, :, positions] = qk[:, :, rep]
            self.v[li][slots, :, positions] = qkv[:, :, rep + 1]
            x = x + self._row_parallel(attend(li, q), f.wproj)
            h = F.linear(f.ln2(x), f.wfc1.weight, f.wfc1.bias)
            if f.glu:
                gate, up = torch.chunk(h, 2, dim=-1)
                h = f.act(gate) * up
            else:
                h = f.act(h)
            x = x + self._row_parallel(h, f.wfc2)
        return x[:, None]

    def _row_parallel(self, x: torch.Tensor, layer) -> torch.Tensor:
        out = torch.nn.functional.linear(x, layer.weight)
        if self.tp_size > 1:
            dist.all_reduce(out, group=self.tp_group)
        return out if layer.bias is None else out + layer.bias

    # ---------------------------------------------------------------------------------------------- prefill
    def prefill(self, tokens: torch.Tensor, seg_slot: Sequence[int], seg_start: Sequence[int],
                seg_len: Sequence[int]) -> Optional[torch.Tensor]:
        """Segments b = 0..nb-1, concatenated in ``tokens`` [T]: segment b is ``seg_len[b]`` tokens of slot
        ``seg_slot[b]`` at positions ``seg_start[b]..``; it attends to the slot's cached positions before it and
        causally within itself (chunked prefill = later segments of the same prompt). Returns logits ``[nb, V]``
        of each segment's last token on the last stage, None elsewhere."""
        dev = self.device
        nb = len(seg_slot)
        lens = torch.tensor(seg_len, dtype=torch.long)
        starts = torch.tensor(seg_start, dtype=torch.long)
        seg_of = torch.repeat_interleave(torch.arange(nb), lens)                 # [T]
        offs = torch.arange(int(lens.sum())) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        positions = (starts[seg_of] + offs).to(dev)
        slots = torch.tensor(seg_slot, dtype=torch.long)[seg_of].to(dev)
        maxq, maxk = int(lens.max()), int((starts + lens).max())
        flat = (seg_of * maxq + offs).to(dev)                                    # token -> padded [nb, maxq] cell
        qpos = torch.full((nb * maxq,), -1, dtype=torch.long, device=dev)
        qpos[flat] = positions
        allowed = torch.arange(maxk, device=dev)[None, :] <= qpos.view(nb, maxq)[:, :, None].clamp_min(0)
        slot_idx = torch.tensor(seg_slot, dtype=torch.long, device=dev)

        def attend(li: int, q: torch.Tensor) -> torch.Tensor:
            qp = torch.zeros(nb * maxq, self.nh, self.hn, dtype=q.dtype, device=dev)
            qp[flat] = q
            qp = qp.view(nb, maxq, self.nh, self.hn).transpose(1, 2)            # [nb, nh, maxq, hn]
            kk = self.k[li].index_select(0, slot_idx)[:, :, :maxk]               # [nb, ng, maxk, hn]
            vv = self.v[li].index_select(0, slot_idx)[:, :, :maxk]
            ctx = sdpa(qp, kk, vv, attn_mask=allowed[:, None], scale=self.scale)   # fused with GQA on CUDA too
            return ctx.transpose(1, 2).reshape(nb * maxq, self.nh * self.hn)[flat]

        with plain_torch():
            x = self._layers(self._stage_input(tokens.to(dev), positions), slots, positions, attend)
            last_tok = (torch.cumsum(lens, 0) - 1).to(dev)
            return self._stage_output(x, last_tok)

    # ---------------------------------------------------------------------------------------------- decode
    def _decode_eager(self, x: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor,
                      max_len: int, nonempty: bool = False) -> torch.Tensor:
        from meml_kernels.decode_attention import decode_attention
        from meml_kernels.decode_attention.reference import length_mask

        slots = torch.arange(x.shape[0], device=self.device)
        L = max(1, min(int(max_len), self.C))
        # the CPU path's length mask, built once for every layer (the Triton path reads lengths itself)
        mask = length_mask(lengths, L) if self.device.type == "cpu" and self.attention_impl == "auto" else None

        def attend(li: int, q: torch.Tensor) -> torch.Tensor:
            out = decode_attention(q, self.k[li], self.v[li], lengths, self.scale, max_len=L,
                                   impl=self.attention_impl, mask=mask, nonempty=nonempty)
            return out.reshape(q.shape[0], self.nh * self.hn)

        return self._layers(x, slots, positions, attend)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, active: Optional[torch.Tensor],
               max_len: int) -> Optional[torch.Tensor]:
        """One token per slot ``0..B-1`` (``tokens``, ``positions`` [B]); inactive rows are redirected to the
        scratch column with length 0 (``active=None``: every row is active). ``max_len`` (host int) >= every
        active row's ``position + 1``. Returns logits ``[B, V]`` on the last stage (None elsewhere)."""
        dev = self.device
        full = active is None
        if full:  # every row decodes (the caller knows it on the host): no redirection, no empty rows
            lengths = positions + 1
        else:
            positions = torch.where(active, positions, torch.full_like(positions, self.capacity))
            lengths = torch.where(active, positions + 1, torch.zeros_like(positions))
            tokens = torch.where(active, tokens, torch.zeros_like(tokens))
        if self.use_graphs:
            return self._decode_graph(tokens.to(dev), positions.to(dev), lengths.to(dev))
        with plain_torch():
            x = self._stage_input(tokens.to(dev), positions.to(dev))
            x = self._decode_eager(x, positions.to(dev), lengths.to(dev), max_len, nonempty=full)
            return self._stage_output(x, None)

    def _decode_graph(self, tokens, positions, lengths):
        """Pad the batch to its bucket and replay (capturing on first use) that bucket's CUDA graph. The graph
        covers embedding (first stage) or the static hidden input, the layers, and the logits (last stage); the
        pipeline send/recv stay outside it."""
        B = tokens.shape[0]
        bucket = next(b for b in self.buckets if b >= B)
        if bucket not in self._graphs:
            self._capture(bucket)
        g, tok_buf, pos_buf, len_buf, x_buf, out, hid = self._graphs[bucket]
        tok_buf.zero_()
        pos_buf.fill_(self.capacity)
        len_buf.zero_()
        tok_buf[:B], pos_buf[:B], len_buf[:B] = tokens, positions, lengths
        if not self.comm.first:
            dist.recv(x_buf[:B], src=self.comm.prev_rank, group=self.comm.group)
        g.replay()
        if not self.comm.last:
            dist.send(out[:B].contiguous(), dst=self.comm.next_rank, group=self.comm.group)
            return None
        self.last_hidden = hid[:B].clone()
        return out[:B].clone()

    def _graph_body(self, tok_buf, pos_buf, len_buf, x_buf):
        x = self._embed(tok_buf, pos_buf) if self.comm.first else x_buf
        x = self._decode_eager(x, pos_buf, len_buf, self.C)
        return self._logits(x) if self.comm.last else x

    def _capture(self, bucket: int) -> None:
        dev = self.device
        tok_buf = torch.zeros(bucket, dtype=torch.long, device=dev)
        pos_buf = torch.full((bucket,), self.capacity, dtype=torch.long, device=dev)
        len_buf = torch.zeros(bucket, dtype=torch.long, device=dev)
        x_buf = torch.zeros(bucket, 1, self.hidden, dtype=self.dtype, device=dev)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (allocator, Triton autotune/compile) outside the capture
            for _ in range(2):
                self._graph_body(tok_buf, pos_buf, len_buf, x_buf)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self._pool):
            out = self._graph_body(tok_buf, pos_buf, len_buf, x_buf)
        hid = self.last_hidden if self.comm.last else None   # the captured final-norm output (a static buffer)
        self._graphs[bucket] = (g, tok_buf, pos_buf, len_buf, x_buf, out, hid)

    # ---------------------------------------------------------------------------------------------- cache ops
    def copy_prefix(self, src: int, dst: Sequence[int], n: int) -> None:
        """Positions ``[0, n)`` of slot ``src`` into every slot of ``dst`` (all layers)."""
        if not dst or not self.layers:
            return
        idx = torch.tensor(list(dst), dtype=torch.long, device=self.device)
        self.k[:, idx, :, :n] = self.k[:, src:src + 1, :, :n]
        self.v[:, idx, :, :n] = self.v[:, src:src + 1, :, :n]

    def move_slot(self, src: int, dst: int, n: int) -> None:
        """Relocate positions ``[0, n)`` of slot ``src`` to slot ``dst`` (decode batch compaction)."""
        if self.layers:
            self.k[:, dst, :, :n] = self.k[:, src, :, :n]
            self.v[:, dst, :, :n] = self.v[:, src, :, :n]

    def broadcast_from_last_stage(self, tensor: torch.Tensor) -> torch.Tensor:
        """The last stage's ``tensor`` on every stage (same shape and dtype everywhere); identity without PP."""
        if self.comm.pp_size > 1:
            tensor = tensor.contiguous()
            dist.broadcast(tensor, src=self.comm.last_rank, group=self.comm.group)
        return tensor

    def close(self) -> None:
        """Free the cache and the captured graphs."""
        self.k = self.v = None
        self._graphs.clear()
        self._pool = None
