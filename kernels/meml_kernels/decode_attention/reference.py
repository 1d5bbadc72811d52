"""Decode attention over a slot-major KV cache with ragged lengths (plain torch; the spec of the Triton kernel).

One query token per row; row b is cache slot b and attends to that slot's first ``lengths[b]`` keys:

    q        [B, nh, hn]          nh query heads (this TP rank's), hn head dim
    k_cache  [N, ng, C, hn]       N >= B slots, ng key/value groups (ng divides nh), C slots of capacity
    v_cache  [N, ng, C, hn]
    lengths  [B] int              valid keys of each row (0 -> the row's output is 0)

    out[b, h] = Σ_{j < len_b} softmax_j(scale · q[b, h] · k[b, g(h), j]) · v[b, g(h), j],   g(h) = h // (nh / ng)

GQA without copies: the nh/ng query heads of a group are one [rep, hn] matrix against the group's keys (no
``repeat_interleave`` of the cache). Scores and softmax in fp32 (megatron's ``attention_softmax_in_fp32``), the
value product in the cache dtype. ``max_len`` (a host int >= max(lengths), default C) bounds the keys read, so
the call needs no host sync.
"""
from __future__ import annotations

from typing import Optional

import torch


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                     scale: float, max_len: Optional[int] = None) -> torch.Tensor:
    B, nh, hn = q.shape
    ng = k_cache.shape[1]
    L = k_cache.shape[2] if max_len is None else max(1, min(int(max_len), k_cache.shape[2]))
    k = k_cache[:B, :, :L]                                                   # [B, ng, L, hn] (a view)
    v = v_cache[:B, :, :L]
    qg = q.view(B, ng, nh // ng, hn)
    s = torch.matmul(qg, k.transpose(-1, -2)).float() * scale                # [B, ng, rep, L]
    valid = torch.arange(L, device=q.device)[None, :] < lengths.to(q.device)[:, None]   # [B, L]
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.where(valid.any(-1)[:, None, None, None], p, torch.zeros_like(p))   # empty rows: 0, not NaN
    out = torch.matmul(p.to(v.dtype), v)                                    # [B, ng, rep, hn]
    return out.reshape(B, nh, hn)


def length_mask(lengths: torch.Tensor, L: int) -> torch.Tensor:
    """[B, 1, 1, L] bool: key j of row b is valid iff j < lengths[b] (the SDPA mask of :func:`decode_attention_sdpa`;
    a caller with several layers builds it once per step)."""
    return (torch.arange(L, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]


def decode_attention_sdpa(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                          scale: float, max_len: Optional[int] = None, mask: Optional[torch.Tensor] = None,
                          nonempty: bool = False) -> torch.Tensor:
    """The same function through one ``F.scaled_dot_product_attention`` call over the strided cache view (no
    copy); empty rows are set to 0. GQA by *folding*: the ``nh / ng`` query heads of a group are passed as that
    many query positions of one head, ``q.view(B, ng, rep, hn)`` against ``[B, ng, L, hn]`` keys under the same
    length mask, so each group's keys are read once (SDPA's ``enable_gqa`` read them per query head: 8-23% slower
    at 64 slots, 4 layers, CPU). ``mask``: :func:`length_mask` of ``lengths`` at this ``max_len``, when the caller
    already has it; ``nonempty``: the caller knows every length is >= 1 (the empty-row fix-up is skipped)."""
    B, nh, hn = q.shape
    ng = k_cache.shape[1]
    L = k_cache.shape[2] if max_len is None else max(1, min(int(max_len), k_cache.shape[2]))
    lengths = lengths.to(q.device)
    if mask is None:
        mask = length_mask(lengths, L)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.reshape(B, ng, nh // ng, hn), k_cache[:B, :, :L], v_cache[:B, :, :L], attn_mask=mask,
        scale=scale).reshape(B, nh, hn)
    return out if nonempty else torch.where((lengths > 0)[:, None, None], out, torch.zeros_like(out))
