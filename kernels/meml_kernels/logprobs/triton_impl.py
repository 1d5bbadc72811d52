"""Triton kernels of the log-probs from logits (twins of ``reference.row_stats`` / ``reference.dlogits``).

Forward (``_row_stats_kernel``): one program per row, one pass over the row in BLOCK_V tiles with an online
softmax (running max m, shifted sum-exp s, and for the entropy u = sum e^(z-m) (z-m)); the target logit is one
scalar load. Reads the logits once, writes 4 fp32 per row: bandwidth floor T*V*bytes. Invalid rows (ignored or
masked) are skipped entirely (no read).
Backward (``_dlogits_kernel``): grid (row, V block); recomputes p = exp(z - lse) tile by tile from the saved fp32
[T] lse and writes dlogits = [g (onehot - p) - h p (log p + H)] / tau in the logits dtype: one read + one write.
No fp32 [T, V] temporaries. Pure pointer arithmetic (no block pointers / descriptors): works on triton 3.6-3.9.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting
from .._vocab_parallel import RowStats


@triton.jit
def _row_stats_kernel(logits_ptr, stride_t, targets_ptr, valid_ptr, m_ptr, s_ptr, u_ptr, tgt_ptr, V,
                      inv_temp, vocab_start, ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    valid = tl.load(valid_ptr + row)
    if valid != 0:
        base = logits_ptr + row.to(tl.int64) * stride_t
        m = tl.full([], -1e30, tl.float32)
        s = tl.zeros([], tl.float32)
        u = tl.zeros([], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            z = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(z, 0))
            zm = z - m_new
            e = tl.exp(zm)
            alpha = tl.exp(m - m_new)
            if ENTROPY:  # e == 0 where z = -inf: keep e * (z - m) at 0 instead of 0 * inf
                u = alpha * (u + (m - m_new) * s) + tl.sum(e * tl.where(e > 0.0, zm, 0.0), 0)
            s = alpha * s + tl.sum(e, 0)
            m = m_new
        local = tl.load(targets_ptr + row).to(tl.int64) - vocab_start
        hit = (local >= 0) & (local < V)
        tgt = tl.load(base + local, mask=hit, other=0.0).to(tl.float32) * inv_temp
        tgt = tl.where(hit, tgt, 0.0)
    else:
        m = tl.zeros([], tl.float32)
        s = tl.full([], 1.0, tl.float32)
        u = tl.zeros([], tl.float32)
        tgt = tl.zeros([], tl.float32)
    tl.store(m_ptr + row, m)
    tl.store(s_ptr + row, s)
    tl.store(u_ptr + row, u)
    tl.store(tgt_ptr + row, tgt)


@triton.jit
def _dlogits_kernel(logits_ptr, stride_t, out_ptr, stride_out, targets_ptr, valid_ptr, lse_ptr, ent_ptr,
                    g_ptr, h_ptr, V, inv_temp, vocab_start, ENT_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    inb = cols < V
    out = out_ptr + row.to(tl.int64) * stride_out + cols
    valid = tl.load(valid_ptr + row)
    if valid != 0:
        z = tl.load(logits_ptr + row.to(tl.int64) * stride_t + cols, mask=inb, other=0.0).to(tl.float32)
        logq = z * inv_temp - tl.load(lse_ptr + row)
        p = tl.exp(logq)
        g = tl.load(g_ptr + row)
        local = tl.load(targets_ptr + row).to(tl.int64) - vocab_start
        dz = tl.where(cols == local, g, 0.0) - g * p
        if ENT_GRAD:
            dz -= tl.load(h_ptr + row) * p * (logq + tl.load(ent_ptr + row))
        tl.store(out, (dz * inv_temp).to(out_ptr.dtype.element_ty), mask=inb)
    else:
        tl.store(out, tl.zeros([BLOCK_V], tl.float32).to(out_ptr.dtype.element_ty), mask=inb)


# Fixed configs, picked with `megatron_meml.bench.kernels --gpu --configs` on an H200 (T=16384, V=151936 bf16):
# forward 8192-wide tiles / 8 warps 1.35 ms (4096/8: 1.48, 8192/16: 1.65); backward 4096 / 8 warps.
GPU_FWD = dict(BLOCK_V=8192, num_warps=8)
GPU_BWD = dict(BLOCK_V=4096, num_warps=8)
INTERPRETER = dict(BLOCK_V=64, num_warps=4)


def _launch_config(v: int, gpu: dict) -> dict:
    cfg = dict(INTERPRETER if interpreting() else gpu)
    cfg["BLOCK_V"] = min(cfg["BLOCK_V"], triton.next_power_of_2(max(v, 16)))
    return cfg


def row_stats(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, inv_temp: float,
              vocab_start: int, entropy: bool) -> RowStats:
    """Triton twin of ``reference.row_stats``; invalid rows get (m, s, u, tgt) = (0, 1, 0, 0)."""
    t, v = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    stats = torch.empty(4, t, dtype=torch.float32, device=logits.device)
    if t == 0:
        return RowStats(*stats)
    _row_stats_kernel[(t,)](logits, logits.stride(0), targets.contiguous(), valid.contiguous().view(torch.uint8),
                            stats[0], stats[1], stats[2], stats[3], v, float(inv_temp), int(vocab_start),
                            ENTROPY=bool(entropy), **_launch_config(v, GPU_FWD))
    return RowStats(*stats)


def dlogits(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, lse: torch.Tensor,
            entropy: torch.Tensor, g_logp: torch.Tensor, g_entropy: torch.Tensor | None, inv_temp: float,
            vocab_start: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of ``reference.dlogits``: dlogits [T, V] in the logits dtype (into ``out`` when given: a
    [T, V] tensor or column slice with unit column stride)."""
    t, v = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if out is None:
        out = torch.empty((t, v), dtype=logits.dtype, device=logits.device)
    elif out.stride(1) != 1 or out.shape != (t, v):
        raise ValueError(f"out must be [{t}, {v}] with unit column stride, got {tuple(out.shape)} {out.stride()}")
    if t == 0:
        return out
    cfg = _launch_config(v, GPU_BWD)
    g = g_logp.float().contiguous()
    h = g if g_entropy is None else g_entropy.float().contiguous()
    _dlogits_kernel[(t, triton.cdiv(v, cfg["BLOCK_V"]))](
        logits, logits.stride(0), out, out.stride(0), targets.contiguous(), valid.contiguous().view(torch.uint8),
        lse.contiguous(), entropy.contiguous(), g, h, v, float(inv_temp), int(vocab_start),
        ENT_GRAD=g_entropy is not None, **cfg)
    return out
