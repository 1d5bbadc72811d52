"""Triton kernels of the fused hidden x W log-probs (twins of ``reference.row_stats`` / ``reference.backward``).

Forward (``_linear_stats_kernel``): program (T block, V split). For each [BLOCK_T, BLOCK_V] tile of its split it
computes z = h @ W^T with tl.dot (bf16 inputs, fp32 accumulate on GPU; inputs cast to fp32 in the interpreter,
where bf16 dots are wrong), then folds the tile into per-row online-softmax stats (m, s, u, target logit) held in
registers. Writes 4 fp32 per (split, row): O(T * splits) extra memory, no logits. Splits and the TP ranks are
merged by ``meml_kernels._vocab_parallel`` (same formulas). Program order is grouped (GROUP_T T blocks x all
splits run together) so the h blocks and W tiles they share stay in L2.
Backward: the vocabulary is walked in chunks of VC columns (VC * T * 2 bytes <= 512 MiB by default).
``_linear_dz_kernel`` recomputes the [T, VC] logits chunk tile by tile in fp32 (as the forward did) and writes
dz = [g (onehot - p) - h p (log p + H)] / tau in the input dtype; two cuBLAS GEMMs then give
dW[chunk] = dz^T @ hidden (complete per chunk, fp32 accumulate, no cross-chunk rounding) and dhidden += dz @ W[chunk]
(accumulated in fp32 [T, H]). Extra memory: one dz chunk + fp32 dhidden.
Plain pointer arithmetic only (no block pointers / descriptors): runs on triton 3.6 (GPU) and 3.9 (interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting
from .._vocab_parallel import RowStats

BWD_CHUNK_BYTES = 512 << 20


@triton.jit
def _grouped_tile(pid, n_tb, n_cols, GROUP_T: tl.constexpr):
    """Map a linear program id to (T block, column index), GROUP_T T blocks at a time (L2-friendly order)."""
    per_group = GROUP_T * n_cols
    first_tb = (pid // per_group) * GROUP_T
    size = tl.minimum(n_tb - first_tb, GROUP_T)
    return first_tb + (pid % per_group) % size, (pid % per_group) // size


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_ht, stride_hh, stride_wv, stride_wh,
                 DOT_FP32: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """acc[BLOCK_T, BLOCK_V] = hidden[rows, :] @ weight[cols, :]^T, fp32 accumulate."""
    ks = tl.arange(0, BLOCK_H)
    h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_ht + ks[None, :] * stride_hh
    w_ptrs = w_ptr + cols.to(tl.int64)[None, :] * stride_wv + ks[:, None] * stride_wh
    acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
    for k0 in range(0, H, BLOCK_H):
        k_ok = (k0 + ks) < H
        hb = tl.load(h_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wb = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if DOT_FP32:   # exact fp32 products (and the interpreter, whose bf16 dot is wrong)
            acc = tl.dot(hb.to(tl.float32), wb.to(tl.float32), acc, input_precision="ieee")
        else:          # bf16 x bf16 -> fp32 accumulate (tensor cores)
            acc = tl.dot(hb, wb, acc)
        h_ptrs += BLOCK_H * stride_hh
        w_ptrs += BLOCK_H * stride_wh
    return acc


@triton.jit
def _linear_stats_kernel(h_ptr, w_ptr, targets_ptr, stats_ptr, T, V, H, stride_ht, stride_hh, stride_wv, stride_wh,
                         inv_temp, vocab_start, v_per_split, n_split, ENTROPY: tl.constexpr, DOT_FP32: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_T: tl.constexpr):
    tb, split = _grouped_tile(tl.program_id(0), tl.cdiv(T, BLOCK_T), n_split, GROUP_T)
    rows = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    local = tl.load(targets_ptr + rows, mask=row_ok, other=-1).to(tl.int64) - vocab_start
    v_lo = split * v_per_split
    v_hi = tl.minimum(v_lo + v_per_split, V)
    m = tl.full([BLOCK_T], -1e30, tl.float32)
    s = tl.zeros([BLOCK_T], tl.float32)
    u = tl.zeros([BLOCK_T], tl.float32)
    tgt = tl.zeros([BLOCK_T], tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_hi
        z = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_ht, stride_hh, stride_wv, stride_wh,
                         DOT_FP32, BLOCK_T, BLOCK_V, BLOCK_H) * inv_temp
        z = tl.where(col_ok[None, :], z, float("-inf"))
        tgt += tl.sum(tl.where((cols[None, :] == local[:, None]) & col_ok[None, :], z, 0.0), 1)
        m_new = tl.maximum(m, tl.max(z, 1))
        zm = z - m_new[:, None]
        e = tl.exp(zm)
        alpha = tl.exp(m - m_new)
        if ENTROPY:
            u = alpha * (u + (m - m_new) * s) + tl.sum(e * tl.where(e > 0.0, zm, 0.0), 1)
        s = alpha * s + tl.sum(e, 1)
        m = m_new
    out = stats_ptr + split * T + rows
    plane = n_split * T
    tl.store(out, m, mask=row_ok)
    tl.store(out + plane, s, mask=row_ok)
    tl.store(out + 2 * plane, u, mask=row_ok)
    tl.store(out + 3 * plane, tgt, mask=row_ok)


@triton.jit
def _linear_dz_kernel(h_ptr, w_ptr, targets_ptr, valid_ptr, lse_ptr, ent_ptr, g_ptr, hg_ptr, dz_ptr, stride_dz,
                      T, VC, v_start, H, stride_ht, stride_hh, stride_wv, stride_wh, inv_temp, vocab_start,
                      ENT_GRAD: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_T: tl.constexpr):
    tb, vb = _grouped_tile(tl.program_id(0), tl.cdiv(T, BLOCK_T), tl.cdiv(VC, BLOCK_V), GROUP_T)
    rows = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    ccols = vb * BLOCK_V + tl.arange(0, BLOCK_V)          # column inside the chunk
    row_ok = rows < T
    col_ok = ccols < VC
    z = _logits_tile(h_ptr, w_ptr, rows, v_start + ccols, row_ok, col_ok, H, stride_ht, stride_hh, stride_wv,
                     stride_wh, DOT_FP32, BLOCK_T, BLOCK_V, BLOCK_H) * inv_temp
    valid = tl.load(valid_ptr + rows, mask=row_ok, other=0) != 0
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.where(valid, tl.load(g_ptr + rows, mask=row_ok, other=0.0), 0.0)
    logq = z - lse[:, None]
    p = tl.exp(logq)
    local = tl.load(targets_ptr + rows, mask=row_ok, other=-1).to(tl.int64) - vocab_start - v_start
    dz = tl.where((ccols[None, :] == local[:, None]) & col_ok[None, :], g[:, None], 0.0) - g[:, None] * p
    if ENT_GRAD:
        hg = tl.where(valid, tl.load(hg_ptr + rows, mask=row_ok, other=0.0), 0.0)
        ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
        dz -= hg[:, None] * p * (logq + ent[:, None])
    dz = tl.where(valid[:, None], dz * inv_temp, 0.0)
    ptrs = dz_ptr + rows.to(tl.int64)[:, None] * stride_dz + ccols[None, :]
    tl.store(ptrs, dz.to(dz_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# Fixed tile configs (no autotune: it cannot run in the interpreter, and fixed configs keep GPU runs predictable).
# megatron_meml.bench.kernels --gpu may swap GPU_CONFIG / GPU_BWD_CONFIG to compare candidates.
INTERPRETER_CONFIG = dict(BLOCK_T=16, BLOCK_V=32, BLOCK_H=16, GROUP_T=2, num_warps=4, num_stages=1)
GPU_FP32_CONFIG = dict(BLOCK_T=64, BLOCK_V=64, BLOCK_H=32, GROUP_T=8, num_warps=8, num_stages=2)  # 4 warps: spills
# No config may spill or exceed a target's shared memory (checked ahead of time for sm_90 and sm_80 at the real
# shapes by ``python -m meml_kernels.aot``, in ``make test``). H200, T=16384 H=1536 V=151936 bf16, forward:
# 128x256 tiles (8 warps) ran 460-468 TFLOP/s but need 255 registers + 232 B of stack per thread (spills) on sm_90;
# 128x128 tiles ran 403 there and spill nothing (255 registers, 0 stack) -- the forward uses them. The backward's
# 128x256 tiles with 8 warps and 4 stages spilled 288 B on sm_90 (8 B on sm_80); 16 warps (128 registers, 0 stack)
# and 3 stages (144 KiB of shared memory) fit sm_90. Before Hopper (no wgmma) those 16 warps spill 96 B: sm_8x runs
# the backward on 128x128 tiles, 8 warps (186 registers, 0 stack, 64 KiB).
# Not yet re-timed on a GPU.
GPU_CONFIG = dict(BLOCK_T=128, BLOCK_V=128, BLOCK_H=64, GROUP_T=16, num_warps=8, num_stages=3)
GPU_BWD_CONFIG = dict(BLOCK_T=128, BLOCK_V=256, BLOCK_H=64, GROUP_T=16, num_warps=16, num_stages=3)
GPU_BWD_CONFIG_SM80 = dict(BLOCK_T=128, BLOCK_V=128, BLOCK_H=64, GROUP_T=16, num_warps=8, num_stages=3)


def gpu_config(fp32: bool, backward: bool = False, capability: int = 90) -> dict:
    """The GPU tile config (exact-fp32 dots when hidden or weight is fp32, else bf16 tensor cores) for a device of
    compute capability ``capability`` (major * 10 + minor)."""
    if fp32:
        return dict(GPU_FP32_CONFIG, DOT_FP32=True)
    if backward:
        return dict(GPU_BWD_CONFIG if capability >= 90 else GPU_BWD_CONFIG_SM80, DOT_FP32=False)
    return dict(GPU_CONFIG, DOT_FP32=False)


def _config(hidden: torch.Tensor, weight: torch.Tensor, backward: bool = False) -> dict:
    """Tile config: tiny in the interpreter (fp32 dots there), H100-sized bf16 / exact-fp32 ones on GPU."""
    if interpreting():
        return dict(INTERPRETER_CONFIG, DOT_FP32=True)
    major, minor = torch.cuda.get_device_capability(hidden.device)
    return gpu_config(hidden.dtype == torch.float32 or weight.dtype == torch.float32, backward, 10 * major + minor)


def num_splits(t: int, v: int, cfg: dict, sms: int | None) -> int:
    """Vocabulary splits of the forward grid (``sms=None``: the interpreter, 2 splits at most)."""
    n_vt = triton.cdiv(v, cfg["BLOCK_V"])
    if sms is None:
        return min(2, n_vt)
    n_tb = triton.cdiv(t, cfg["BLOCK_T"])
    return max(1, min(n_vt, max(8, triton.cdiv(2 * sms, n_tb))))


def _num_splits(t: int, v: int, cfg: dict, device: torch.device) -> int:
    sms = None if interpreting() else torch.cuda.get_device_properties(device).multi_processor_count
    return num_splits(t, v, cfg, sms)


def row_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
              inv_temp: float, vocab_start: int, entropy: bool) -> RowStats:
    """Partial stats RowStats of [n_split, T] fp32 tensors (merged by the caller)."""
    t, h = hidden.shape
    v = weight.shape[0]
    cfg = _config(hidden, weight)
    n_split = _num_splits(t, v, cfg, hidden.device)
    v_per_split = triton.cdiv(triton.cdiv(v, n_split), cfg["BLOCK_V"]) * cfg["BLOCK_V"]
    n_split = triton.cdiv(v, v_per_split)
    stats = torch.empty(4, n_split, t, dtype=torch.float32, device=hidden.device)
    if t > 0:
        grid = (triton.cdiv(t, cfg["BLOCK_T"]) * n_split,)
        _linear_stats_kernel[grid](hidden, weight, targets.contiguous(), stats, t, v, h, hidden.stride(0),
                                   hidden.stride(1), weight.stride(0), weight.stride(1), float(inv_temp),
                                   int(vocab_start), v_per_split, n_split, ENTROPY=bool(entropy), **cfg)
    return RowStats(*stats)


def backward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
             lse: torch.Tensor, entropy: torch.Tensor, g_logp: torch.Tensor, g_entropy: torch.Tensor | None,
             inv_temp: float, vocab_start: int, v_end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dhidden [T, H] hidden dtype, dweight [V, H] weight dtype); see the module docstring. Only the first
    ``v_end`` rows of weight (default all) are in the softmax: dweight[v_end:] = 0."""
    t, h = hidden.shape
    v = weight.shape[0] if v_end is None else v_end
    cfg = _config(hidden, weight, backward=True)
    bv = cfg["BLOCK_V"]
    if interpreting():
        vc = 2 * bv   # several chunks even at test sizes
    else:
        vc = max(bv, BWD_CHUNK_BYTES // max(1, t * hidden.element_size()) // bv * bv)
    vc = min(vc, triton.cdiv(v, bv) * bv)
    dw = torch.empty_like(weight)
    if v < weight.shape[0]:
        dw[v:].zero_()
    dh = torch.zeros((t, h), dtype=torch.float32, device=hidden.device)
    if t == 0 or v == 0:
        return dh.to(hidden.dtype), dw.zero_()
    dz = torch.empty((t, vc), dtype=hidden.dtype, device=hidden.device)
    g = g_logp.float().contiguous()
    hg = g if g_entropy is None else g_entropy.float().contiguous()
    valid_u8 = valid.contiguous().view(torch.uint8)
    for c in range(0, v, vc):
        width = min(vc, v - c)
        grid = (triton.cdiv(t, cfg["BLOCK_T"]) * triton.cdiv(width, bv),)
        _linear_dz_kernel[grid](hidden, weight, targets.contiguous(), valid_u8, lse.contiguous(),
                                entropy.contiguous(), g, hg, dz, dz.stride(0), t, width, c, h, hidden.stride(0),
                                hidden.stride(1), weight.stride(0), weight.stride(1), float(inv_temp),
                                int(vocab_start), ENT_GRAD=g_entropy is not None, **cfg)
        dzc = dz[:, :width]
        torch.mm(dzc.t(), hidden, out=dw[c:c + width])          # complete for this chunk: one rounding
        if dh.dtype == dz.dtype:
            dh.addmm_(dzc, weight[c:c + width])
        else:
            dh.add_(torch.mm(dzc, weight[c:c + width]))          # bf16 [T, H] product, fp32 accumulation
    return dh.to(hidden.dtype), dw
