"""Triton decode attention (twin of ``reference.py``), flash-decoding: split each row's keys over programs.

Grid ``(B, ng, SPLITS)``: program (b, g, s) owns the keys ``[s·chunk, min((s+1)·chunk, len_b))`` of slot b, group
g, and all ``rep = nh / ng`` query heads of that group (the group's K/V tiles are loaded once for its rep heads:
GQA without copies). It walks its range in ``BLOCK_N`` tiles with the online softmax (running max m, sum l,
accumulator acc, fp32) and writes the partial ``o = acc / l`` and ``lse = m + log l`` of each head to a scratch
buffer ``[B, nh, SPLITS, (hn + 1)]``; an empty range writes ``lse = -inf``. A second kernel combines the splits of
each (b, head):  ``out = Σ_s exp(lse_s - M) o_s / Σ_s exp(lse_s - M)``, ``M = max_s lse_s`` (0 when every split is
empty). Decode is memory-bound (each K/V byte is read once per step), so the score and value products are plain
broadcast-multiply-reduce (rep is 1..8: too few rows for tensor cores) and the work is spread by splitting the
sequence, not the batch: SPLITS is chosen from ``max_len`` (a host int, not the lengths tensor), so the launch
shape does not depend on device data and the call is CUDA-graph capturable.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, len_ptr, mid_ptr, scale, chunk,
                  sq_b, sq_h, sk_n, sk_g, sk_c, sv_n, sv_g, sv_c, NH, SPLITS, HN,
                  REP: tl.constexpr, REP_P: tl.constexpr, HN_P: tl.constexpr, BLOCK_N: tl.constexpr):
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
                other=0.0).to(tl.float32)                                        # [REP_P, HN_P]
    m = tl.full([REP_P], float("-inf"), tl.float32)
    l = tl.zeros([REP_P], tl.float32)
    acc = tl.zeros([REP_P, HN_P], tl.float32)
    n = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        cols = start + n
        cmask = cols < hi
        kv_mask = cmask[:, None] & dmask[None, :]
        k = tl.load(k_ptr + b * sk_n + g * sk_g + cols[:, None] * sk_c + d[None, :], mask=kv_mask,
                    other=0.0).to(tl.float32)                                    # [BLOCK_N, HN_P]
        v = tl.load(v_ptr + b * sv_n + g * sv_g + cols[:, None] * sv_c + d[None, :], mask=kv_mask,
                    other=0.0).to(tl.float32)
        sc = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale               # [REP_P, BLOCK_N]
        sc = tl.where(cmask[None, :], sc, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(sc - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
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


def _splits(B: int, ng: int, max_len: int, block_n: int, device: torch.device) -> int:
    """Enough programs to fill the device (~4 per SM) without splits shorter than one tile."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the interpreter runs programs one after another: still exercise several splits
        target = 4 * B * ng
    return max(1, min(triton.cdiv(max_len, block_n), triton.cdiv(target, B * ng)))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                     scale: float, max_len: Optional[int] = None, block_n: int = 32) -> torch.Tensor:
    B, nh, hn = q.shape
    ng, C = k_cache.shape[1], k_cache.shape[2]
    L = C if max_len is None else max(1, min(int(max_len), C))
    rep = nh // ng
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("decode_attention: the head dimension must be contiguous")
    splits = _splits(B, ng, L, block_n, q.device)
    chunk = triton.cdiv(triton.cdiv(L, splits), block_n) * block_n
    splits = triton.cdiv(L, chunk)
    mid = torch.empty(B, nh, splits, hn + 1, dtype=torch.float32, device=q.device)
    out = torch.empty(B, nh, hn, dtype=q.dtype, device=q.device)
    lens = lengths.to(device=q.device, dtype=torch.int32).clamp(max=L)
    _split_kernel[(B, ng, splits)](
        q, k_cache, v_cache, lens, mid, float(scale), chunk,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), nh, splits, hn,
        REP=rep, REP_P=max(1, triton.next_power_of_2(rep)), HN_P=triton.next_power_of_2(hn), BLOCK_N=block_n)
    _combine_kernel[(B, nh)](mid, out, out.stride(0), out.stride(1), nh, splits, hn,
                             SPLITS_P=triton.next_power_of_2(splits), HN_P=triton.next_power_of_2(hn))
    return out
