"""Fused hidden x W -> per-token log-probs without [T, V] logits, plain torch (the spec and the CPU path).

Spec: hidden [T, H], weight [V_local, H] (the output layer's vocabulary shard, rows vocab_start ...), targets [T],
    z = hidden @ weight^T / tau     (never materialised as a whole)
and then exactly the log-prob / entropy of ``meml_kernels.logprobs`` on z. Backward with dz as in that op:
    dhidden = dz @ weight,   dweight = dz^T @ hidden      (dz = dL/dz / tau, never materialised as a whole)

This twin walks [chunk_t, chunk_v] tiles of z with an online logsumexp (forward) and recomputes each tile in the
backward, so its extra memory is a few fp32 tiles (default 1024 x 4096 = 16 MiB each) besides the gradients
themselves (dhidden [T, H] and dweight [V, H], accumulated in fp32 -- the same size as fp32 inputs).
"""
from __future__ import annotations

import torch

from .._vocab_parallel import RowStats

CHUNK_T = 1024
CHUNK_V = 4096


def row_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
              inv_temp: float, vocab_start: int, entropy: bool) -> RowStats:
    """Local stats RowStats(m, s, u, tgt), each fp32 [T], of z = hidden @ weight^T * inv_temp.

    Every row is computed (``valid`` only masks later); u is zeros unless ``entropy``.
    """
    t, v = hidden.shape[0], weight.shape[0]
    dev = hidden.device
    m = torch.full((t,), -1e30, dtype=torch.float32, device=dev)
    s, u, tgt = (torch.zeros(t, dtype=torch.float32, device=dev) for _ in range(3))
    local = targets.long() - vocab_start
    for a in range(0, t, CHUNK_T):
        b = min(a + CHUNK_T, t)
        h = hidden[a:b].float()
        mc, sc, uc, tc = m[a:b], s[a:b], u[a:b], tgt[a:b]            # views: updated in place
        lc = local[a:b]
        for c in range(0, v, CHUNK_V):
            d = min(c + CHUNK_V, v)
            z = torch.mm(h, weight[c:d].float().t()).mul_(inv_temp)   # [ct, cv] fp32 tile
            hit = (lc >= c) & (lc < d)
            tc += torch.where(hit, z.gather(1, (lc - c).clamp(0, d - c - 1)[:, None]).squeeze(1), 0.0)
            m_new = torch.maximum(mc, z.max(dim=1).values)
            shift = mc - m_new
            alpha = torch.exp(shift)
            z.sub_(m_new[:, None])                                    # z - m_new
            e = torch.exp(z)
            if entropy:
                uc.copy_(alpha * (uc + shift * sc) + (e * z).sum(1))
            sc.copy_(alpha * sc + e.sum(1))
            mc.copy_(m_new)
            del z, e
    return RowStats(m, s, u, tgt)


def backward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
             lse: torch.Tensor, entropy: torch.Tensor, g_logp: torch.Tensor, g_entropy: torch.Tensor | None,
             inv_temp: float, vocab_start: int, v_end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dhidden [T, H] in hidden's dtype, dweight [V, H] in weight's dtype) from upstream g_logp / g_entropy [T].

    dz_tile = [g (onehot - p) - h p (log p + H)] * inv_temp, recomputed per tile from the saved global lse.
    Only the first ``v_end`` rows of weight (default all) are in the softmax; dweight[v_end:] is 0.
    """
    t = hidden.shape[0]
    v = weight.shape[0] if v_end is None else v_end
    dev = hidden.device
    g = torch.where(valid, g_logp.float(), 0.0)
    hg = None if g_entropy is None else torch.where(valid, g_entropy.float(), 0.0)
    dh = torch.zeros(hidden.shape, dtype=torch.float32, device=dev)
    dw = torch.zeros(weight.shape, dtype=torch.float32, device=dev)
    local = targets.long() - vocab_start
    for c in range(0, v, CHUNK_V):
        d = min(c + CHUNK_V, v)
        w = weight[c:d].float()
        dw_c = dw[c:d]
        for a in range(0, t, CHUNK_T):
            b = min(a + CHUNK_T, t)
            h = hidden[a:b].float()
            logq = torch.mm(h, w.t()).mul_(inv_temp).sub_(lse[a:b, None])   # log p, [ct, cv]
            p = torch.exp(logq)
            if hg is not None:
                dz = logq.add_(entropy[a:b, None]).mul_(hg[a:b, None]).add_(g[a:b, None]).mul_(p).neg_()
            else:
                dz = p.mul_(-g[a:b, None])
            lc = local[a:b] - c
            hit = (lc >= 0) & (lc < d - c)
            rows = torch.arange(b - a, device=dev)[hit]
            dz[rows, lc[hit]] += g[a:b][hit]
            dz.mul_(inv_temp)
            dh[a:b].addmm_(dz, w)
            dw_c.addmm_(dz.t(), h)
            del logq, p, dz
    return dh.to(hidden.dtype), dw.to(weight.dtype)
