"""Triton kernel of the group advantages (twin of ``reference.py``): one launch, one program, no host sync.

Grouping needs a reduction before the apply, and separate programs cannot wait on each other, so a single
program does four phases over the S samples, separated by CTA barriers (``tl.debug_barrier`` makes the global
atomics of phase k visible to every thread of phase k+1):
  0. zero the per-group workspace (count, sum, sum of squared deviations, "differs from representative" count),
  1. count_g += 1, sum_g += r, rep_g = r   (rep_g is whichever member's store lands last: some member's reward),
  2. sq_g += (r - mean_g)^2,  diff_g += (r != rep_g)      -> diff_g == 0  <=>  all rewards of g equal (exactly),
  3. A = r - mean_g  [ / (std_g + eps) ]  [ max(., 0) ],  A = 0 where diff_g == 0.
The workspace comes from torch.empty (no fill kernel), so the whole op is one kernel launch. Cost is O(S) in
one CTA: fine for RL batch sizes (S = 2K..256K samples); it is launch-bound at S = 2048.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting


@triton.jit
def _group_advantages_kernel(r_ptr, key_ptr, out_ptr, fws_ptr, iws_ptr, S, G, eps,
                             STD_NORM: tl.constexpr, POSITIVE_ONLY: tl.constexpr, BLOCK: tl.constexpr):
    sum_ptr = fws_ptr
    sq_ptr = fws_ptr + G
    rep_ptr = fws_ptr + 2 * G
    cnt_ptr = iws_ptr
    diff_ptr = iws_ptr + G
    # Phase 0: zero the workspace.
    for g0 in range(0, G, BLOCK):
        gs = g0 + tl.arange(0, BLOCK)
        gm = gs < G
        tl.store(sum_ptr + gs, tl.zeros([BLOCK], tl.float32), mask=gm)
        tl.store(sq_ptr + gs, tl.zeros([BLOCK], tl.float32), mask=gm)
        tl.store(cnt_ptr + gs, tl.zeros([BLOCK], tl.int32), mask=gm)
        tl.store(diff_ptr + gs, tl.zeros([BLOCK], tl.int32), mask=gm)
    tl.debug_barrier()
    # Phase 1: counts, sums, one representative reward per group.
    for s0 in range(0, S, BLOCK):
        offs = s0 + tl.arange(0, BLOCK)
        key = tl.load(key_ptr + offs, mask=offs < S, other=-1).to(tl.int64)
        ok = (offs < S) & (key >= 0) & (key < G)
        r = tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.atomic_add(sum_ptr + key, r, mask=ok)
        tl.atomic_add(cnt_ptr + key, tl.full([BLOCK], 1, tl.int32), mask=ok)
        tl.store(rep_ptr + key, r, mask=ok)
    tl.debug_barrier()
    # Phase 2: squared deviations and the exact "all equal" test.
    for s0 in range(0, S, BLOCK):
        offs = s0 + tl.arange(0, BLOCK)
        key = tl.load(key_ptr + offs, mask=offs < S, other=-1).to(tl.int64)
        ok = (offs < S) & (key >= 0) & (key < G)
        r = tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        cnt = tl.load(cnt_ptr + key, mask=ok, other=1, cache_modifier=".cg").to(tl.float32)
        mean = tl.load(sum_ptr + key, mask=ok, other=0.0, cache_modifier=".cg") / cnt
        rep = tl.load(rep_ptr + key, mask=ok, other=0.0, cache_modifier=".cg")
        dev = r - mean
        if STD_NORM:
            tl.atomic_add(sq_ptr + key, dev * dev, mask=ok)
        tl.atomic_add(diff_ptr + key, (r != rep).to(tl.int32), mask=ok)
    tl.debug_barrier()
    # Phase 3: advantages.
    for s0 in range(0, S, BLOCK):
        offs = s0 + tl.arange(0, BLOCK)
        inb = offs < S
        key = tl.load(key_ptr + offs, mask=inb, other=-1).to(tl.int64)
        ok = inb & (key >= 0) & (key < G)
        r = tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        cnt = tl.load(cnt_ptr + key, mask=ok, other=1, cache_modifier=".cg").to(tl.float32)
        mean = tl.load(sum_ptr + key, mask=ok, other=0.0, cache_modifier=".cg") / cnt
        adv = r - mean
        if STD_NORM:
            sq = tl.load(sq_ptr + key, mask=ok, other=0.0, cache_modifier=".cg")
            std = tl.sqrt(sq / tl.maximum(cnt - 1.0, 1.0))
            adv = adv / (std + eps)
        ndiff = tl.load(diff_ptr + key, mask=ok, other=0, cache_modifier=".cg")
        adv = tl.where(ndiff == 0, 0.0, adv)
        if POSITIVE_ONLY:
            adv = tl.maximum(adv, 0.0)
        adv = tl.where(ok, adv, float("nan"))
        tl.store(out_ptr + offs, adv, mask=inb)


def group_advantages(rewards: torch.Tensor, keys: torch.Tensor, num_groups: int, std_normalize: bool = False,
                     eps: float = 1e-6, positive_only: bool = False) -> torch.Tensor:
    """Triton twin of ``reference.group_advantages``: rewards [S], keys [S] int -> fp32 [S], one launch."""
    r = rewards.reshape(-1).contiguous()
    keys = keys.reshape(-1).contiguous()
    s = r.numel()
    out = torch.empty(s, dtype=torch.float32, device=r.device)
    if s == 0:
        return out
    g = max(int(num_groups), 1)
    fws = torch.empty(3 * g, dtype=torch.float32, device=r.device)
    iws = torch.empty(2 * g, dtype=torch.int32, device=r.device)
    block = 64 if interpreting() else 1024
    _group_advantages_kernel[(1,)](r, keys, out, fws, iws, s, g, float(eps), STD_NORM=bool(std_normalize),
                                   POSITIVE_ONLY=bool(positive_only), BLOCK=block, num_warps=8 if block >= 1024 else 4,
                                   num_stages=1)
    return out
