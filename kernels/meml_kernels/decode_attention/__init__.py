"""Decode attention over ragged per-slot lengths (GQA, one query token per slot), flash-decoding style.

    out = decode_attention(q [B, nh, hn], k_cache [N, ng, C, hn], v_cache [N, ng, C, hn], lengths [B] int,
                           scale, max_len=None, impl="auto")   -> [B, nh, hn] in q's dtype

Row b of ``q`` is cache slot b (the continuous engine keeps its decoding slots at the front of the pool). The
formula, the GQA layout and the empty-row rule: ``reference.py``; the Triton kernel (split over KV blocks, then a
log-sum-exp combine): ``triton_impl.py``. Dispatch as every op here (``meml_kernels._dispatch``): Triton on CUDA
tensors, torch on the CPU unless ``impl="triton"`` under ``TRITON_INTERPRET=1``; ``impl="auto"`` on the CPU runs
``reference.decode_attention_sdpa`` (the same function as one SDPA call over the strided cache view, ~1.3x faster
than the twin's two batched matmuls at 64 slots), ``impl="torch"`` the twin itself.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._dispatch import resolve_impl
from . import reference

__all__ = ["decode_attention"]


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                     scale: float, max_len: Optional[int] = None, impl: str = "auto",
                     mask: Optional[torch.Tensor] = None, nonempty: bool = False) -> torch.Tensor:
    """See the module docstring. ``mask`` / ``nonempty``: hints for the CPU SDPA path (``auto`` on the CPU), see
    ``reference.decode_attention_sdpa``; the other paths ignore them."""
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"expected q [B, nh, hn] and caches [N, ng, C, hn], got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    B, nh, hn = q.shape
    if k_cache.shape[0] < B or k_cache.shape[3] != hn or nh % k_cache.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)} (B <= N, same head dim, "
                         f"ng divides nh)")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be [B]={B}, got {tuple(lengths.shape)}")
    if resolve_impl(impl, q, k_cache, v_cache) == "triton":
        from . import triton_impl
        return triton_impl.decode_attention(q, k_cache, v_cache, lengths, scale, max_len)
    if impl == "auto":  # the production torch path: one fused SDPA call (tested against the twin)
        return reference.decode_attention_sdpa(q, k_cache, v_cache, lengths, scale, max_len, mask, nonempty)
    return reference.decode_attention(q, k_cache, v_cache, lengths, scale, max_len)
