"""Row statistics of a softmax over a sharded vocabulary, and how shards are combined.

Both log-prob ops (from logits, and fused hidden x W) reduce each row t of the scaled logits
z[t, :] = logits[t, :] / temperature over their slice of the vocabulary to four fp32 numbers:

    m   = max_j z_j                          (the shift)
    s   = sum_j exp(z_j - m)                 (shifted sum-exp)
    u   = sum_j exp(z_j - m) * (z_j - m)     (for the entropy; 0 when not asked)
    tgt = z_target if the target id lies in this slice else 0

Slices (V tiles of one kernel, "splits" of the fused linear kernel, or tensor-parallel ranks) combine exactly:
with M = max_p m_p and a_p = exp(m_p - M),

    s = sum_p a_p s_p,   u = sum_p a_p (u_p + (m_p - M) s_p),   tgt = sum_p tgt_p.

Then  lse = M + log s,  log p(target) = tgt - lse,  entropy = -sum p log p = log s - u / s.
Across a tensor-parallel group this costs exactly two all-reduces of [T]-sized tensors: MAX of m, then one SUM of
the stacked [3, T] (s, u, tgt). [T, V] is never gathered.

Padded vocabulary (``vocab_limit``): embedding tables are padded past the tokenizer's real vocabulary (to a
multiple of 64·TP, or Qwen2.5's 151936 rows for 151665 ids); padded ids must get no probability mass. Global ids
>= vocab_limit are excluded from every row statistic: each shard reduces only its columns below the limit
(:func:`local_vocab_end`), so they add nothing to s, u or the max and their gradient is exactly 0. A shard that
lies wholly in the padding contributes the neutral stats (m, s, u, tgt) = (-1e30, 0, 0, 0) (:func:`empty_stats`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist


class RowStats(NamedTuple):
    """Per-row softmax statistics, each fp32 [T] (or [P, T] for P partial slices before merging)."""

    m: torch.Tensor
    s: torch.Tensor
    u: torch.Tensor
    tgt: torch.Tensor


def merge_partials(stats: RowStats) -> RowStats:
    """Merge partial stats [P, T] (P slices of the vocabulary) into [T]. A no-op view for P = 1."""
    if stats.m.dim() == 1:
        return stats
    if stats.m.shape[0] == 1:
        return RowStats(*(x[0] for x in stats))
    big_m = stats.m.max(dim=0).values
    shift = stats.m - big_m
    a = torch.exp(shift)
    s = (a * stats.s).sum(0)
    u = (a * (stats.u + shift * stats.s)).sum(0)
    return RowStats(big_m, s, u, stats.tgt.sum(0))


def allreduce_stats(stats: RowStats, group) -> RowStats:
    """Combine [T] stats of the vocabulary shards held by the ranks of ``group``: two all-reduces.

    ``group`` is a torch.distributed process group (or None for no tensor parallelism). Not differentiable.
    """
    if group is None or dist.get_world_size(group) == 1:
        return stats
    big_m = stats.m.clone()
    dist.all_reduce(big_m, op=dist.ReduceOp.MAX, group=group)
    shift = stats.m - big_m
    a = torch.exp(shift)
    packed = torch.stack([a * stats.s, a * (stats.u + shift * stats.s), stats.tgt])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return RowStats(big_m, packed[0], packed[1], packed[2])


def finish_stats(stats: RowStats, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global [T] stats -> (logp, lse, entropy), fp32 [T]. Rows with ``valid`` False get logp = entropy = 0."""
    log_s = torch.log(stats.s)
    lse = stats.m + log_s
    logp = torch.where(valid, stats.tgt - lse, torch.zeros_like(lse))
    entropy = torch.where(valid, log_s - stats.u / stats.s, torch.zeros_like(lse))
    return logp, lse, entropy


def group_rank_size(group) -> tuple[int, int]:
    """(rank in group, group size); (0, 1) when ``group`` is None."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def default_vocab_start(v_local: int, group) -> int:
    """First global vocabulary id of this rank's shard, for equal shards in rank order (Megatron's layout)."""
    rank, _ = group_rank_size(group)
    return rank * v_local


def local_vocab_end(v_local: int, vocab_start: int, vocab_limit: int | None) -> int:
    """Columns [0, end) of a shard starting at global id ``vocab_start`` lie below ``vocab_limit`` (all when None)."""
    if vocab_limit is None:
        return v_local
    if vocab_limit <= 0:
        raise ValueError(f"vocab_limit must be > 0, got {vocab_limit}")
    return max(0, min(v_local, vocab_limit - vocab_start))


def empty_stats(t: int, device) -> RowStats:
    """The stats of an empty vocabulary slice, [1, T] each: neutral under :func:`merge_partials` / all-reduce."""
    m = torch.full((1, t), -1e30, dtype=torch.float32, device=device)
    z = torch.zeros((1, t), dtype=torch.float32, device=device)
    return RowStats(m, z, z.clone(), z.clone())


def valid_rows(targets: torch.Tensor, ignore_index: int, mask: torch.Tensor | None) -> torch.Tensor:
    """bool [T]: the rows whose log-prob is computed (target != ignore_index and mask != 0)."""
    valid = targets != ignore_index
    if mask is not None:
        valid = valid & (mask.reshape(valid.shape) != 0)
    return valid


def stats_to_logprobs_and_loss(partials: RowStats, group, valid: torch.Tensor, loss, impl: str):
    """The shared forward epilogue of the logits and the fused-linear log-prob ops: merge the per-split row stats,
    all-reduce them over the TP group (two [T] collectives), finish log p / lse / entropy, and when ``loss`` (a
    TokenLossInputs) is given run the token-loss epilogue. Returns (logp, lse, entropy, loss_t, dloss, clipped);
    without a loss the last three are empty tensors."""
    from . import token_loss as _tl

    logp, lse, entropy = finish_stats(allreduce_stats(merge_partials(partials), group), valid)
    if loss is not None:
        loss_t, dloss, clipped = _tl.token_loss_forward(logp, loss, impl)
    else:
        loss_t = dloss = logp.new_zeros(0)
        clipped = torch.zeros(0, dtype=torch.bool, device=logp.device)
    return logp, lse, entropy, loss_t, dloss, clipped
