"""Triton decode attention (twin of ``reference.py``), flash-decoding: split each row's keys over programs.

Grid ``(B, ng, SPLITS)``: program (b, g, s) owns the keys ``[s·chunk, min((s+1)·chunk, len_b))`` of slot b, group
g, and all ``rep = nh / ng`` query heads of that group (the group's K/V tiles are loaded once for its rep heads:
GQA without copies). It walks its range in ``BLOCK_N`` tiles with the online softmax (running max m, sum l,
accumulator acc, fp32) and writes the partial ``o = acc / l`` and ``lse = m + log l`` of each head to a scratch
buffer ``[B, nh, SPLITS, (hn + 1)]``; an empty range writes ``lse = -inf``. A second kernel combines the splits of
each (b, head):  ``out = Σ_s exp(lse_s - M) o_s / Σ_s exp(lse_s - M)``, ``M = max_s lse_s`` (0 when every split is
empty). The score and value products are ``tl.dot`` over the group's ``rep`` query rows padded with zero
rows to ``REP_P = max(16, next_pow2(rep))`` (tensor-core MMA needs M >= 16; the padded rows are computed, never
stored): bf16 inputs with fp32 accumulation on GPU (``p`` rounded to the cache dtype for P·V, as flash attention
does), exact fp32 (``input_precision="ieee"``) for fp32 caches and in the interpreter. The earlier form -- a
broadcast multiply-reduce over a ``[REP_P, BLOCK_N, HN_P]`` fp32 product -- needed 255 registers and 1.3 KB of stack
per thread on sm_90 at Qwen2.5-1.5B's shape (rep 6 -> 8, head dim 128); the dot form keeps a [16, 128] fp32
accumulator and spills nothing (``python -m meml_kernels.aot``). Decode is memory-bound (each K/V byte is read once
per step) and the work is spread by splitting the sequence, not the batch: SPLITS is chosen from ``max_len`` (a
host int, not the lengths tensor), so the launch shape does not depend on device data and the call is CUDA-graph
capturable.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting

BLOCK_N = 32    # keys per tile
ROWS_MIN = 16   # tl.dot needs M >= 16: the rep query heads of a group are padded with zero rows up to this


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, len_ptr, mid_ptr, scale, chunk,
                  sq_b, sq_h, sk_n, sk_g, sk_c, sv_n, sv_g, sv_c, NH, SPLITS, HN,
                  REP: tl.constexpr, REP_P: tl.constexpr, HN_P: tl.constexpr, BLOCK_N: tl.constexpr,
                  DOT_FP32: tl.constexpr):
    b = tl.program_id(0)
    g = tl.program_id(1)
    s = tl.program_id(2)
    length = tl.load(len_ptr + b).to(tl.int32)
    lo = s * chunk
    hi = tl.minimum(lo + chunk, length)
    r = tl.arange(0, REP_P)
    d = tl.arange(0, HN_P)
    rmask = r < REP
    dmask = d < HN
    heads = g * REP + r
    q = tl.load(q_ptr + b * sq_b + heads[:, None] * sq_h + d[None, :], mask=rmask[:, None] & dmask[None, :],
                other=0.0)                                                       # [REP_P, HN_P], rows >= REP: 0
    if DOT_FP32:
        q = q.to(tl.float32)
    m = tl.full([REP_P], float("-inf"), tl.float32)
    l = tl.zeros([REP_P], tl.float32)
    acc = tl.zeros([REP_P, HN_P], tl.float32)
    n = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        cols = start + n
        cmask = cols < hi
        kv_mask = cmask[:, None] & dmask[None, :]
        k = tl.load(k_ptr + b * sk_n + g * sk_g + cols[:, None] * sk_c + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + b * sv_n + g * sv_g + cols[:, None] * sv_c + d[None, :], mask=kv_mask, other=0.0)
        if DOT_FP32:   # exact fp32 products (fp32 caches, and the interpreter, whose bf16 dot is wrong)
            sc = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")      # [REP_P, BLOCK_N]
        else:          # bf16 x bf16 -> fp32 accumulate (tensor cores)
            sc = tl.dot(q, tl.trans(k))
        sc = tl.where(cmask[None, :], sc * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(sc - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        if DOT_FP32:
            acc = tl.dot(p, v.to(tl.float32), acc * alpha[:, None], input_precision="ieee")
        else:          # p rounded to the cache dtype for the tensor-core product, as flash attention does
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m = m_new
    nonempty = l > 0
    o = acc / tl.where(nonempty, l, 1.0)[:, None]
    lse = tl.where(nonempty, m + tl.log(tl.where(nonempty, l, 1.0)), float("-inf"))
    base = mid_ptr + ((b * NH + heads) * SPLITS + s) * (HN + 1)                  # [REP_P] row starts
    tl.store(base[:, None] + d[None, :], o, mask=rmask[:, None] & dmask[None, :])
    tl.store(base + HN, lse, mask=rmask)


@triton.jit
def _combine_kernel(mid_ptr, out_ptr, so_b, so_h, NH, SPLITS, HN, SPLITS_P: tl.constexpr, HN_P: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.arange(0, SPLITS_P)
    d = tl.arange(0, HN_P)
    smask = sp < SPLITS
    base = mid_ptr + ((b * NH + h) * SPLITS + sp) * (HN + 1)                    # [SPLITS_P]
    lse = tl.load(base + HN, mask=smask, other=float("-inf"))
    mx = tl.max(lse, axis=0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    w = tl.where(smask & (lse > float("-inf")), tl.exp(lse - mx), 0.0)           # [SPLITS_P]
    o = tl.load(base[:, None] + d[None, :], mask=smask[:, None] & (d < HN)[None, :], other=0.0)
    tot = tl.sum(w, axis=0)
    res = tl.sum(w[:, None] * o, axis=0) / tl.where(tot > 0, tot, 1.0)
    tl.store(out_ptr + b * so_b + h * so_h + d, res.to(out_ptr.dtype.element_ty), mask=d < HN)


def _splits(B: int, ng: int, max_len: int, block_n: int, sms: int | None) -> int:
    """Enough programs to fill the device (~4 per SM; ``sms=None``: the interpreter, which runs programs one after
    another -- still exercise several splits) without splits shorter than one tile."""
    target = 4 * B * ng if sms is None else 4 * sms
    return max(1, min(triton.cdiv(max_len, block_n), triton.cdiv(target, B * ng)))


def launch_plan(B: int, nh: int, ng: int, hn: int, L: int, block_n: int, sms: int | None, dot_fp32: bool) -> dict:
    """Everything about the two launches that is not a tensor: grid sizes, ``chunk`` and the constexprs. Shared by
    :func:`decode_attention` and the ahead-of-time resource check (``meml_kernels.aot``)."""
    rep = nh // ng
    splits = _splits(B, ng, L, block_n, sms)
    chunk = triton.cdiv(triton.cdiv(L, splits), block_n) * block_n
    splits = triton.cdiv(L, chunk)
    hn_p = max(ROWS_MIN, triton.next_power_of_2(hn))   # tl.dot also needs K, N >= 16
    # exact-fp32 dots (fp32 caches) are FMA loops, not MMA: at 4 warps they spill 328 B on sm_90 at head dim 128
    return dict(splits=splits, chunk=chunk, num_warps=8 if dot_fp32 else 4,
                split_const=dict(REP=rep, REP_P=max(ROWS_MIN, triton.next_power_of_2(rep)), HN_P=hn_p,
                                 BLOCK_N=block_n, DOT_FP32=dot_fp32),
                combine_const=dict(SPLITS_P=triton.next_power_of_2(splits), HN_P=hn_p))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                     scale: float, max_len: Optional[int] = None, block_n: int = BLOCK_N) -> torch.Tensor:
    B, nh, hn = q.shape
    ng, C = k_cache.shape[1], k_cache.shape[2]
    L = C if max_len is None else max(1, min(int(max_len), C))
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("decode_attention: the head dimension must be contiguous")
    sms = None if interpreting() else torch.cuda.get_device_properties(q.device).multi_processor_count
    dot_fp32 = interpreting() or k_cache.dtype == torch.float32 or q.dtype == torch.float32
    plan = launch_plan(B, nh, ng, hn, L, block_n, sms, dot_fp32)
    splits, chunk = plan["splits"], plan["chunk"]
    mid = torch.empty(B, nh, splits, hn + 1, dtype=torch.float32, device=q.device)
    out = torch.empty(B, nh, hn, dtype=q.dtype, device=q.device)
    lens = lengths.to(device=q.device, dtype=torch.int32).clamp(max=L)
    _split_kernel[(B, ng, splits)](
        q, k_cache, v_cache, lens, mid, float(scale), chunk,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), nh, splits, hn, **plan["split_const"],
        num_warps=plan["num_warps"])
    _combine_kernel[(B, nh)](mid, out, out.stride(0), out.stride(1), nh, splits, hn, **plan["combine_const"])
    return out
