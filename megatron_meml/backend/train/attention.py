"""Attention inputs and core attention of the local (non-Transformer-Engine) layer spec.

1. :class:`SDPAttention`: core attention through ``torch.nn.functional.scaled_dot_product_attention``.
2. :func:`segment_attention_mask`, :class:`PositionedRotaryEmbedding`, :func:`rope_positions`: what prompt-sharing
   rows (``rollout/packing.shared_rows``) need: a per-row attention mask and per-slot RoPE positions.

Core attention.

megatron-core's local ``DotProductAttention`` materialises the scores ``[b, np, sq, sk]`` and makes several passes
over them (baddbmm, mask fill, softmax, bmm, and as many again in backward), after expanding the key/value groups
with ``repeat_interleave``. :class:`SDPAttention` computes the same function with one fused call: on the CPU that is
torch's flash-attention kernel (never materialises the scores), on a GPU without TE the flash / memory-efficient
kernels. It is a subclass, so everything that checks for ``DotProductAttention`` (e.g. the inference runner's
explicit-mask support) still holds, and it falls back to the parent for the cases it does not reproduce exactly.

Semantics, for query q ``[sq, b, np, hn]`` and key/value ``[sk, b, ng, hn]`` (ng divides np, GQA):

    out[i] = Σ_j softmax_j(scale · q_i·k_j + M_ij) · v_j,   scale = softmax_scale (1/√hn by default)

    attention_mask None, sq == sk > 1  ->  M causal (j ≤ i)                (training, prefill)
    attention_mask None, sq == 1       ->  M = 0                            (KV-cache decode: all cached slots)
    attention_mask given (bool, True = masked, broadcastable to [b, 1, sq, sk])
                                       ->  M = −10000 where masked, else 0  (megatron's ``attention_mask_func``
                                           fills −10000; a finite value keeps fully masked padding rows finite,
                                           where −inf would give NaN that reaches the next layer's keys)

Kernel choice on GPU (:func:`sdpa`, used by every call here and by the slot model's prefill). SDPA's fused CUDA
kernels split the cases: FlashAttention takes grouped KV heads (``enable_gqa``) and ``is_causal`` but no explicit
mask; the memory-efficient kernel takes any mask but not grouped heads; anything else falls to the math path,
which materialises the fp32 ``[b, np, sq, sk]`` scores (silently: ~S² memory, several passes). So: no mask ->
``is_causal`` + ``enable_gqa`` (flash); a mask with GQA on CUDA -> the KV groups are expanded to the query heads
(one contiguous ``[b, np, sk, hn]`` copy of K and V, rep x the KV bytes of *this call*, never the scores) and the
mask goes to the memory-efficient kernel. Prompt-sharing rows reach the masked case only for the continuations
(each against its prompt and itself, :func:`segment_attention`); the shared prefixes are causal (flash). Chosen
over FlexAttention (block masks) because (1) its gradients can be checked on the CPU -- compiled FlexAttention
raises ``NotImplementedError`` for the backward on the CPU (torch 2.13) -- so the GPU path is the tested path,
(2) no ``torch.compile`` per mask shape (prompt-sharing plans change every step), (3) no new dependency
(flash-attn's varlen API would also do it, but is an optional CUDA wheel). Cost on GPU: the expanded K/V copy of
the masked continuation calls. On the CPU torch's flash kernel takes masks and grouped heads alike (no copy); the
A/B on the CPU: benchmarks/attention_backend_cpu_20261207.md. :func:`attention_backend` names the choice (the
trainer prints it at start-up).

Returns the context ``[sq, b, np·hn]`` exactly as the parent does. Falls back to the parent for: a softmax offset
(off-by-one / learnable softmax), query-key layer scaling, sliding windows, packed sequences, attention bias,
attention dropout while training, and sq ≠ sk > 1 without a mask.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.dot_product_attention import DotProductAttention

from .state import unwrap

MASKED_SCORE = -10000.0  # megatron.core.transformer.utils.attention_mask_func

# When grouped KV heads are expanded for a masked call: "cuda" (only there: see the module docstring), "always"
# (tests run the GPU formulation on the CPU), "never" (enable_gqa with a mask, which sends CUDA to the math kernel).
EXPAND_KV = ["cuda"]


def expands_kv(q: torch.Tensor, k: torch.Tensor, masked: bool) -> bool:
    """Whether :func:`sdpa` expands the KV groups of this call (a mask, grouped heads, and the policy)."""
    if not masked or k.shape[-3] == q.shape[-3]:
        return False
    return EXPAND_KV[0] == "always" or (EXPAND_KV[0] == "cuda" and q.is_cuda)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
         is_causal: bool = False, scale: Optional[float] = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` for q ``[..., np, sq, hn]`` and k/v ``[..., ng, sk, hn]`` (ng divides np)
    on a fused kernel: grouped heads go to ``enable_gqa`` when there is no mask, and are expanded to ``np`` heads
    (contiguous) when there is one on CUDA (module docstring). Same function either way."""
    np_, ng = q.shape[-3], k.shape[-3]
    if expands_kv(q, k, attn_mask is not None):
        rep = np_ // ng
        shape = (*k.shape[:-3], ng, rep, *k.shape[-2:])
        k = k.unsqueeze(-3).expand(shape).reshape(*k.shape[:-3], np_, *k.shape[-2:])
        v = v.unsqueeze(-3).expand(shape).reshape(*v.shape[:-3], np_, *v.shape[-2:])
        ng = np_
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=ng != np_)


def attention_backend(chunks, device: Optional[torch.device] = None) -> str:
    """One line naming the core attention of ``chunks`` and the kernels it reaches on ``device`` (start-up log)."""
    layers = [layer for c in chunks for layer in unwrap(c).decoder.layers]
    if not layers:
        return "none (no layers on this stage)"
    core = type(layers[0].self_attention.core_attention)
    name = f"{core.__module__}.{core.__qualname__}"
    dev = device or next(chunks[0].parameters()).device
    if issubclass(core, SDPAttention):
        if dev.type == "cuda":
            kern = "SDPA: causal/unmasked -> flash (enable_gqa); masked -> memory-efficient (KV expanded)"
        else:
            kern = "SDPA on the CPU: flash kernel (masks and grouped heads native)"
        return f"{name} [{kern}; prompt-sharing rows: per-segment]"
    return name


class SDPAttention(DotProductAttention):
    """``DotProductAttention`` computed by ``F.scaled_dot_product_attention`` (see module docstring)."""

    def _sdpa_applies(self, query, key, attention_mask, attention_bias, packed_seq_params) -> bool:
        cfg = self.config
        if self.softmax_offset is not None or cfg.apply_query_key_layer_scaling or packed_seq_params is not None:
            return False
        if attention_bias is not None or getattr(self.scale_mask_softmax, "window_size", None) is not None:
            return False
        if self.training and self.attention_dropout.p > 0:  # the parent draws dropout from megatron's RNG tracker
            return False
        sq, sk = query.shape[0], key.shape[0]
        return attention_mask is not None or sq == 1 or sq == sk

    def forward(self, query, key, value, attention_mask: Optional[torch.Tensor], attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        layout = _segment_layout(attention_mask)
        if layout is not None and query.shape[0] == key.shape[0] and \
                self._sdpa_applies(query, key, attention_mask, attention_bias, packed_seq_params):
            return segment_attention(query, key, value, layout, self.softmax_scale)
        if not self._sdpa_applies(query, key, attention_mask, attention_bias, packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type=attn_mask_type,
                                   attention_bias=attention_bias, packed_seq_params=packed_seq_params)
        sq, b, np_, hn = query.shape
        q = query.permute(1, 2, 0, 3)   # [b, np, sq, hn]
        k = key.permute(1, 2, 0, 3)     # [b, ng, sk, hn]
        v = value.permute(1, 2, 0, 3)
        mask, causal = None, False
        if attention_mask is not None:
            mask = torch.zeros(attention_mask.shape, dtype=q.dtype, device=q.device)
            mask.masked_fill_(attention_mask.to(torch.bool), MASKED_SCORE)
        elif sq > 1:
            causal = True
        ctx = sdpa(q, k, v, attn_mask=mask, is_causal=causal, scale=self.softmax_scale)  # a kv group: np/ng heads
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)


def segment_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[B, 1, S, S]`` (True = masked) for prompt-sharing rows: slot i attends to slot j iff j <= i
    and slot j is in the shared prompt (segment 0) or in i's own segment. The returned tensor is remembered with its
    ``segment_ids``: :class:`SDPAttention` then computes the same attention segment by segment
    (:func:`segment_attention`) instead of over the dense ``S x S`` mask."""
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    S = segment_ids.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal[None] & ((seg_k == 0) | (seg_k == seg_q))
    mask = ~allowed[:, None]
    _SEGMENTS[0] = (mask, segment_ids, None)
    return mask


_SEGMENTS: list = [None]  # (the latest segment mask, its segment_ids, its index plan once built)


def _segment_layout(attention_mask):
    """The index plan of ``attention_mask`` when it is the latest :func:`segment_attention_mask` (else None)."""
    entry = _SEGMENTS[0]
    if attention_mask is None or entry is None or attention_mask is not entry[0]:
        return None
    if entry[2] is None:
        plan = _segment_plan(entry[1])
        _SEGMENTS[0] = (entry[0], entry[1], plan)
        return plan
    return entry[2]


def _segment_plan(seg: torch.Tensor):
    """Index tensors of :func:`segment_attention` for segment ids ``seg`` [B, S] (0 = the row's shared prefix, a
    contiguous run at the start; k >= 1 = continuation k, contiguous; -1 = padding). None when a row does not
    have that shape (the dense-mask path then runs)."""
    B, S = seg.shape
    dev = seg.device
    P = (seg == 0).sum(1)                                                     # [B] prefix length
    ar = torch.arange(S, device=dev)
    if not bool(((seg == 0) == (ar[None, :] < P[:, None])).all()):
        return None
    cont = seg > 0
    starts = cont & torch.cat([torch.ones(B, 1, dtype=torch.bool, device=dev), seg[:, 1:] != seg[:, :-1]], 1)
    sb, ss = starts.nonzero(as_tuple=True)                                    # [n] segment (row, first slot)
    n = sb.numel()
    sid = seg[sb, ss]
    lens = (seg[sb] == sid[:, None]).sum(1)                                   # [n]
    if n and not bool((seg[sb, (ss + lens - 1).clamp_max(S - 1)] == sid).all()):
        return None
    Pm = int(P.max()) if B else 0
    rm = int(lens.max()) if n else 0
    pad = B * S                                                               # index of an appended zero row
    qi = ss[:, None] + torch.arange(rm, device=dev)[None, :]                  # [n, rm]
    qvalid = torch.arange(rm, device=dev)[None, :] < lens[:, None]
    q_idx = torch.where(qvalid, sb[:, None] * S + qi.clamp_max(S - 1), torch.full_like(qi, pad))
    pj = torch.arange(Pm, device=dev)[None, :]
    pvalid = pj < P[sb][:, None]                                              # [n, Pm]
    p_idx = torch.where(pvalid, sb[:, None] * S + pj, torch.full_like(qi[:, :1].expand(-1, Pm), pad))
    k_idx = torch.cat([p_idx, q_idx], 1)                                      # [n, Pm + rm]
    own = torch.arange(rm, device=dev)
    allowed = torch.cat([pvalid[:, None, :].expand(-1, rm, -1),
                         (own[None, None, :] <= own[None, :, None]) & qvalid[:, None, :]], 2)   # [n, rm, Pm + rm]
    allowed |= ~qvalid[:, :, None]                                             # padded queries: anything finite
    return dict(B=B, S=S, P=P, Pm=Pm, n=n, q_idx=q_idx, k_idx=k_idx, qvalid=qvalid, allowed=allowed[:, None],
                pref_valid=ar[None, :Pm] < P[:, None], scatter=q_idx[qvalid])


def segment_attention(query, key, value, plan, scale) -> torch.Tensor:
    """The attention of :func:`segment_attention_mask` without the dense ``S x S`` mask (same function, up to fp32
    rounding; tests/distributed/test_shared_rows.py compares losses and gradients with one row per sequence):
      * each row's shared prefix (segment 0, slots ``[0, P_b)``): causal SDPA over the first ``max P`` slots
        (``is_causal``: the flash kernel skips the upper triangle; keys beyond ``P_b`` are never visible to a
        prefix query);
      * each continuation (row b, slots ``[s, s + r)``): its queries against ``[prefix of b] ++ [itself]`` gathered
        into ``[n_segments, max P + max r]`` keys, causal within itself -- cost ``Σ r·(P + r)`` instead of ``S²``
        per row (a 507-slot row of a 100-token prompt and seven 57-token continuations: 4.5x fewer scores);
      * padding slots (-1) get 0 (they carry no loss and no real slot attends to them).
    query ``[S, B, np, hn]``, key/value ``[S, B, ng, hn]`` -> ``[S, B, np·hn]``."""
    S, B, np_, hn = query.shape
    ng = key.shape[2]
    q = query.transpose(0, 1)                                                  # [B, S, np, hn]
    k = key.transpose(0, 1)
    v = value.transpose(0, 1)
    out = torch.zeros(B * S + 1, np_, hn, dtype=query.dtype, device=query.device)
    Pm = plan["Pm"]
    if Pm:
        ctx = sdpa(q[:, :Pm].transpose(1, 2), k[:, :Pm].transpose(1, 2), v[:, :Pm].transpose(1, 2),
                   is_causal=True, scale=scale)                                 # [B, np, Pm, hn]
        rows = torch.arange(B, device=query.device)[:, None] * S + torch.arange(Pm, device=query.device)[None, :]
        out = out.index_copy(0, rows[plan["pref_valid"]], ctx.transpose(1, 2)[plan["pref_valid"]])
    if plan["n"]:
        zq = torch.zeros(1, np_, hn, dtype=query.dtype, device=query.device)
        zk = torch.zeros(1, ng, hn, dtype=key.dtype, device=key.device)
        qf = torch.cat([q.reshape(B * S, np_, hn), zq])
        kf = torch.cat([k.reshape(B * S, ng, hn), zk])
        vf = torch.cat([v.reshape(B * S, ng, hn), zk])
        qs = qf[plan["q_idx"]].transpose(1, 2)                                 # [n, np, rm, hn]
        ks = kf[plan["k_idx"]].transpose(1, 2)                                 # [n, ng, Pm + rm, hn]
        vs = vf[plan["k_idx"]].transpose(1, 2)
        ctx = sdpa(qs, ks, vs, attn_mask=plan["allowed"], scale=scale)
        out = out.index_copy(0, plan["scatter"], ctx.transpose(1, 2)[plan["qvalid"]])
    return out[:B * S].view(B, S, np_ * hn).transpose(0, 1).contiguous()


class PositionedRotaryEmbedding(RotaryEmbedding):
    """megatron's ``RotaryEmbedding`` that, inside :func:`rope_positions`, returns per-row frequencies
    ``[S, B, 1, D]`` gathered at explicit ``position_ids`` [B, S] instead of positions ``0..S-1`` (``[S, 1, 1, D]``).
    megatron's rotary application broadcasts over the batch dimension, so attention needs no change (its M-RoPE
    path passes the same shape). Outside the context it is the parent, cache included. Installed on a built model
    by swapping the instance's class (:func:`enable_explicit_positions`), so parameters, buffers and checkpoint
    names do not change."""

    def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False, cp_group=None):
        pos = _POSITIONS[0]
        if pos is None:
            return super().forward(max_seq_len, offset, packed_seq, cp_group)
        if pos.shape[1] != max_seq_len or offset:
            raise ValueError(f"explicit RoPE positions cover {pos.shape[1]} slots, the forward has {max_seq_len}")
        emb = self.get_emb(int(pos.max()) + 1)[:, 0, 0, :]   # [P, D]
        return emb[pos.t().to(emb.device)].unsqueeze(2)      # [S, B, 1, D]


_POSITIONS: list = [None]


@contextlib.contextmanager
def rope_positions(position_ids: Optional[torch.Tensor]):
    """Within the block, models whose rotary module is a :class:`PositionedRotaryEmbedding` rotate slot (b, s) by
    position ``position_ids[b, s]`` (None: the usual 0..S-1)."""
    prev, _POSITIONS[0] = _POSITIONS[0], position_ids
    try:
        yield
    finally:
        _POSITIONS[0] = prev


def enable_explicit_positions(model) -> bool:
    """Make ``model.rotary_pos_emb`` a :class:`PositionedRotaryEmbedding` when it is megatron's plain RoPE module.
    Returns whether explicit positions are available."""
    rope = getattr(model, "rotary_pos_emb", None)
    if type(rope) is RotaryEmbedding:
        rope.__class__ = PositionedRotaryEmbedding
    return isinstance(rope, PositionedRotaryEmbedding)


def supports_shared_rows(chunks) -> bool:
    """Whether every model chunk can run prompt-sharing rows: core attention that honours an explicit mask
    (megatron's local ``DotProductAttention`` or :class:`SDPAttention`; Transformer Engine's ignores it) and a
    :class:`PositionedRotaryEmbedding`."""
    for chunk in chunks:
        gpt = unwrap(chunk)
        if not isinstance(getattr(gpt, "rotary_pos_emb", None), PositionedRotaryEmbedding):
            return False
        if not all(isinstance(layer.self_attention.core_attention, DotProductAttention)
                   for layer in gpt.decoder.layers):
            return False
    return True
