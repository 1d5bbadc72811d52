"""Triton kernel of the group advantages (twin of ``reference.py``): one launch, no host sync.

Grouping needs a reduction before the apply, and programs cannot wait on each other (no grid barrier; the
interpreter even runs them one after another), so each program *owns* a contiguous range of group ids and does
everything for those groups itself, in four phases over all S samples separated by CTA barriers
(``tl.debug_barrier`` makes the global atomics of phase k visible to every thread of phase k+1):
  0. zero its groups' workspace (count, sum, sum of squared deviations, "differs from representative" count),
  1. for its samples: count_g += 1, sum_g += r, rep_g = r  (rep_g: whichever member's store lands last),
  2. sq_g += (r - mean_g)^2,  diff_g += (r != rep_g)      -> diff_g == 0  <=>  all rewards of g equal (exactly),
  3. A = r - mean_g  [ / (std_g + eps) ]  [ max(., 0) ],  A = 0 where diff_g == 0.
Every program reads all S samples (3 passes) but touches only its own groups, so P programs cost 3*P*S loads,
mostly from L2: P = 1 for small batches (S = 2048: launch-bound, ~30 us), up to 32 for S = 256K. The workspace
comes from torch.empty (no fill kernel), so the whole op is one kernel launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting


@triton.jit
def _group_advantages_kernel(r_ptr, key_ptr, out_ptr, fws_ptr, iws_ptr, S, G, groups_per_program, eps,
                             STD_NORM: tl.constexpr, POSITIVE_ONLY: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    g_lo = pid * groups_per_program
    g_hi = tl.minimum(g_lo + groups_per_program, G)
    sum_ptr = fws_ptr
    sq_ptr = fws_ptr + G
    rep_ptr = fws_ptr + 2 * G
    cnt_ptr = iws_ptr
    diff_ptr = iws_ptr + G
    # Phase 0: zero this program's groups.
    for g0 in range(g_lo, g_hi, BLOCK):
        gs = g0 + tl.arange(0, BLOCK)
        gm = gs < g_hi
        tl.store(sum_ptr + gs, tl.zeros([BLOCK], tl.float32), mask=gm)
        tl.store(sq_ptr + gs, tl.zeros([BLOCK], tl.float32), mask=gm)
        tl.store(cnt_ptr + gs, tl.zeros([BLOCK], tl.int32), mask=gm)
        tl.store(diff_ptr + gs, tl.zeros([BLOCK], tl.int32), mask=gm)
    tl.debug_barrier()
    # Phase 1: counts, sums, one representative reward per group.
    for s0 in range(0, S, BLOCK):
        offs = s0 + tl.arange(0, BLOCK)
        key = tl.load(key_ptr + offs, mask=offs < S, other=-1).to(tl.int64)
        own = (offs < S) & (key >= g_lo) & (key < g_hi)
        r = tl.load(r_ptr + offs, mask=own, other=0.0).to(tl.float32)
        tl.atomic_add(sum_ptr + key, r, mask=own)
        tl.atomic_add(cnt_ptr + key, tl.full([BLOCK], 1, tl.int32), mask=own)
        tl.store(rep_ptr + key, r, mask=own)
    tl.debug_barrier()
    # Phase 2: squared deviations and the exact "all equal" test.
    for s0 in range(0, S, BLOCK):
        offs = s0 + tl.arange(0, BLOCK)
        key = tl.load(key_ptr + offs, mask=offs < S, other=-1).to(tl.int64)
        own = (offs < S) & (key >= g_lo) & (key < g_hi)
        r = tl.load(r_ptr + offs, mask=own, other=0.0).to(tl.float32)
        rep = tl.load(rep_ptr + key, mask=own, other=0.0, cache_modifier=".cg")
        tl.atomic_add(diff_ptr + key, (r != rep).to(tl.int32), mask=own)
        if STD_NORM:
            cnt = tl.load(cnt_ptr + key, mask=own, other=1, cache_modifier=".cg").to(tl.float32)
            dev = r - tl.load(sum_ptr + key, mask=own, other=0.0, cache_modifier=".cg") / cnt
            tl.atomic_add(sq_ptr + key, dev * dev, mask=own)
    tl.debug_barrier()
    # Phase 3: advantages (program 0 also writes NaN for ids outside [0, G)).
    for s0 in range(0, S, BLOCK):
        offs = s0 + tl.arange(0, BLOCK)
        inb = offs < S
        key = tl.load(key_ptr + offs, mask=inb, other=-1).to(tl.int64)
        own = inb & (key >= g_lo) & (key < g_hi)
        first = (tl.zeros([BLOCK], tl.int32) + pid) == 0
        bad = inb & ((key < 0) | (key >= G))
        r = tl.load(r_ptr + offs, mask=own, other=0.0).to(tl.float32)
        cnt = tl.load(cnt_ptr + key, mask=own, other=1, cache_modifier=".cg").to(tl.float32)
        adv = r - tl.load(sum_ptr + key, mask=own, other=0.0, cache_modifier=".cg") / cnt
        if STD_NORM:
            sq = tl.load(sq_ptr + key, mask=own, other=0.0, cache_modifier=".cg")
            std = tl.sqrt(sq / tl.maximum(cnt - 1.0, 1.0))
            adv = adv / (std + eps)
        ndiff = tl.load(diff_ptr + key, mask=own, other=0, cache_modifier=".cg")
        adv = tl.where(ndiff == 0, 0.0, adv)
        if POSITIVE_ONLY:
            adv = tl.maximum(adv, 0.0)
        adv = tl.where(bad, float("nan"), adv)
        tl.store(out_ptr + offs, adv, mask=own | (bad & first))


def _default_programs(s: int, g: int) -> int:
    return 1 if interpreting() else max(1, min(32, s // 8192, g))


def group_advantages(rewards: torch.Tensor, keys: torch.Tensor, num_groups: int, std_normalize: bool = False,
                     eps: float = 1e-6, positive_only: bool = False, programs: int | None = None) -> torch.Tensor:
    """Triton twin of ``reference.group_advantages``: rewards [S], keys [S] int -> fp32 [S], one launch.

    ``programs``: how many programs split the group ids (default: by S, see the module docstring)."""
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
    p = max(1, min(programs or _default_programs(s, g), g))
    per = triton.cdiv(g, p)
    p = triton.cdiv(g, per)
    _group_advantages_kernel[(p,)](r, keys, out, fws, iws, s, g, per, float(eps), STD_NORM=bool(std_normalize),
                                   POSITIVE_ONLY=bool(positive_only), BLOCK=block, num_warps=8 if block >= 1024 else 4,
                                   num_stages=1)
    return out
