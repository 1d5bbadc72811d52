"""Per-token log-probs (and entropy) from materialised logits, plain torch (the spec and the CPU path).

Spec, for logits [T, V] (bf16 or fp32; the local vocabulary shard [vocab_start, vocab_start + V) under tensor
parallelism), targets [T] global ids, temperature tau:
    z = logits / tau,   log p(target) = z_target - logsumexp(z),   entropy = -sum_j p_j log p_j
Backward, with upstream grads g (of logp) and h (of entropy), p = softmax(z):
    dlogits_j = [ g (1[j == target] - p_j)  -  h p_j (log p_j + entropy) ] / tau
This twin works on row chunks so that no fp32 [T, V] temporary ever exists (only [chunk, V]); the result of the
backward, dlogits, has the dtype of the logits. The two functions below are the "engine" interface shared with
``triton_impl.py``; the autograd and the vocab-parallel combination live in ``autograd.py``.
"""
from __future__ import annotations

import torch

from .._vocab_parallel import RowStats

CHUNK_BYTES = 64 << 20   # fp32 bytes of one [chunk, V] temporary


def _chunk_rows(v: int) -> int:
    return max(1, CHUNK_BYTES // (4 * max(v, 1)))


def _local_targets(targets: torch.Tensor, vocab_start: int, v: int):
    local = targets.long() - vocab_start
    in_shard = (local >= 0) & (local < v)
    return local.clamp(0, max(v - 1, 0)), in_shard


def row_stats(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, inv_temp: float,
              vocab_start: int, entropy: bool) -> RowStats:
    """Local softmax stats of z = logits * inv_temp: RowStats(m, s, u, tgt), each fp32 [T].

    ``valid`` is accepted for interface parity (the Triton kernel skips invalid rows); here every row is computed.
    u is computed only when ``entropy`` (else zeros).
    """
    t, v = logits.shape
    m = torch.empty(t, dtype=torch.float32, device=logits.device)
    s, u, tgt = torch.empty_like(m), torch.zeros_like(m), torch.empty_like(m)
    local, in_shard = _local_targets(targets, vocab_start, v)
    step = _chunk_rows(v)
    for a in range(0, t, step):
        b = min(a + step, t)
        z = logits[a:b].float() * inv_temp                      # [c, V] fp32, the only big temporary
        mc = z.max(dim=1).values
        z -= mc[:, None]                                          # z - m
        e = torch.exp(z)
        s[a:b] = e.sum(1)
        if entropy:
            u[a:b] = torch.where(e > 0, e * z, 0.0).sum(1)
        m[a:b] = mc
        zt = z.gather(1, local[a:b, None]).squeeze(1) + mc
        tgt[a:b] = torch.where(in_shard[a:b], zt, 0.0)
        del z, e
    return RowStats(m, s, u, tgt)


def dlogits(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, lse: torch.Tensor,
            entropy: torch.Tensor, g_logp: torch.Tensor, g_entropy: torch.Tensor | None, inv_temp: float,
            vocab_start: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient w.r.t. the logits [T, V] (logits dtype) from upstream g_logp [T] and g_entropy [T] (or None).

    lse, entropy: the global fp32 [T] values of the forward. Invalid rows get a zero gradient. Written into
    ``out`` ([T, V], may be a column slice of a wider tensor) when given.
    """
    t, v = logits.shape
    out = torch.empty_like(logits) if out is None else out
    local, in_shard = _local_targets(targets, vocab_start, v)
    g = torch.where(valid, g_logp.float(), 0.0)
    h = None if g_entropy is None else torch.where(valid, g_entropy.float(), 0.0)
    step = _chunk_rows(v)
    for a in range(0, t, step):
        b = min(a + step, t)
        logq = logits[a:b].float() * inv_temp - lse[a:b, None]   # log p, [c, V]
        p = torch.exp(logq)
        if h is not None:
            dz = -(g[a:b, None] + h[a:b, None] * (logq + entropy[a:b, None])) * p
        else:
            dz = -g[a:b, None] * p
        rows = torch.arange(b - a, device=logits.device)
        dz[rows, local[a:b]] += torch.where(in_shard[a:b], g[a:b], 0.0)
        dz = torch.where(valid[a:b, None], dz, 0.0)
        out[a:b] = dz * inv_temp
        del logq, p, dz
    return out
