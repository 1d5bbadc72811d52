"""Triton kernel of the masked per-token loss (see ``reference.py`` for the formulas; this is its twin).

One elementwise pass over T tokens: reads logp, old_logp, advantages, kind, mask, weight (and ref_logp), writes the
weighted loss, dL/dlogp and the clip indicator. Estimator choices and the reference-KL switch are compile-time
constants, so unused branches cost nothing.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting
from .reference import KL_ESTIMATOR_CODES, REF_KL_CODES, TokenLossInputs


@triton.jit
def _token_loss_kernel(logp_ptr, old_ptr, adv_ptr, kind_ptr, mask_ptr, weight_ptr, ref_ptr,
                       loss_ptr, grad_ptr, clipped_ptr, T, eps_low, eps_high, beta,
                       USE_REF: tl.constexpr, REF_KL: tl.constexpr, KL_EST: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < T
    logp = tl.load(logp_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    adv = tl.load(adv_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    kind = tl.load(kind_ptr + offs, mask=inb, other=-1).to(tl.int32)
    msk = tl.load(mask_ptr + offs, mask=inb, other=0).to(tl.float32)
    w = tl.load(weight_ptr + offs, mask=inb, other=0.0).to(tl.float32) * msk
    active = w != 0.0

    # GRPO: -min(r A, clip(r) A) (+ beta KLref)
    d_old = logp - old
    ratio = tl.exp(d_old)
    ratio_cl = tl.minimum(tl.maximum(ratio, 1.0 - eps_low), 1.0 + eps_high)
    s1 = ratio * adv
    s2 = ratio_cl * adv
    clipped = s2 < s1
    l_pg = -tl.minimum(s1, s2)
    g_pg = tl.where(clipped, 0.0, -s1)
    if USE_REF:
        delta = logp - tl.load(ref_ptr + offs, mask=inb, other=0.0).to(tl.float32)
        if REF_KL == 1:
            kl = delta
            g_ref = tl.full(delta.shape, 1.0, tl.float32)
        elif REF_KL == 2:
            kl = 0.5 * delta * delta
            g_ref = delta
        else:
            e_ref = tl.exp(-delta)
            kl = e_ref + delta - 1.0
            g_ref = 1.0 - e_ref
        l_pg = l_pg + beta * kl
        g_pg = g_pg + beta * g_ref

    # Inter-expert KL (teacher old_logp is a constant).
    if KL_EST == 1:
        l_kl = -d_old
        g_kl = tl.full(d_old.shape, -1.0, tl.float32)
    else:
        e_kl = tl.exp(d_old)
        l_kl = e_kl - 1.0 - d_old
        g_kl = e_kl - 1.0

    l = tl.where(kind == 0, l_pg, tl.where(kind == 1, l_kl, tl.where(kind == 2, -logp, 0.0)))
    g = tl.where(kind == 0, g_pg, tl.where(kind == 1, g_kl, tl.where(kind == 2, -1.0, 0.0)))
    tl.store(loss_ptr + offs, tl.where(active, w * l, 0.0), mask=inb)
    tl.store(grad_ptr + offs, tl.where(active, w * g, 0.0), mask=inb)
    tl.store(clipped_ptr + offs, (clipped & (kind == 0) & active).to(tl.int8), mask=inb)


def _as_loadable(mask: torch.Tensor) -> torch.Tensor:
    """bool tensors are read as uint8 (same bytes, no copy)."""
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def token_loss_forward(logp: torch.Tensor, x: TokenLossInputs):
    """Triton twin of ``reference.token_loss_forward``: (loss [T], dloss_dlogp [T], clipped [T] bool)."""
    logp = logp.contiguous()
    t = logp.numel()
    loss = torch.empty(t, dtype=torch.float32, device=logp.device)
    grad = torch.empty_like(loss)
    clipped = torch.empty(t, dtype=torch.int8, device=logp.device)
    if t == 0:
        return loss, grad, clipped.bool()
    ref = x.ref_logp.contiguous() if x.use_ref else logp
    block = 128 if interpreting() else 1024
    _token_loss_kernel[(triton.cdiv(t, block),)](
        logp, x.old_logp.contiguous(), x.advantages.contiguous(), x.kind.contiguous(),
        _as_loadable(x.mask.contiguous()), x.weight.contiguous(), ref, loss, grad, clipped, t,
        float(x.eps_low), float(x.eps_high), float(x.beta),
        USE_REF=x.use_ref, REF_KL=REF_KL_CODES[x.ref_kl], KL_EST=KL_ESTIMATOR_CODES[x.kl_estimator],
        BLOCK=block, num_warps=4)
    return loss, grad, clipped.view(torch.bool)
