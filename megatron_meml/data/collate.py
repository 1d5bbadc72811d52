"""Pack rendered conversations into typed, target-aligned microbatches.

A rendered example is ``(ids, mask)`` with ``mask[i] = 1`` when token ``i`` is a response token. Microbatches are
target-aligned (see :mod:`megatron_meml.types`): position ``t`` predicts ``ids[t + 1]``, so the loss mask at ``t`` is
``mask[t + 1]``. Sequences are right-padded with ``pad_id`` and truncated to ``seq_length``.

SFT weights: token-mean over the *global* batch, ``weight = coef / N_global`` where ``N_global`` counts the loss
tokens of every example of the global batch (all DP ranks), so the summed loss is independent of the cut.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from ..types import MicroBatch, TokenKind

Example = Tuple[Sequence[int], Sequence[int]]


def target_aligned(examples: Sequence[Example], pad_id: int, seq_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, S] (right-padded, S = min(longest, seq_length)) and target-aligned loss mask [B, S]."""
    S = min(max(len(ids) for ids, _ in examples), seq_length)
    tokens = torch.full((len(examples), S), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), S), dtype=torch.float32)
    for b, (ids, m) in enumerate(examples):
        ids, m = list(ids)[:S], list(m)[:S]
        tokens[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        if len(m) > 1:
            mask[b, :len(m) - 1] = torch.tensor(m[1:], dtype=torch.float32)
    return tokens, mask


def count_loss_tokens(examples: Sequence[Example], seq_length: int) -> int:
    """Loss tokens that survive truncation (same rule as :func:`target_aligned`)."""
    return sum(int(sum(list(m)[1:seq_length])) for _, m in examples)


def sft_microbatches(examples: Sequence[Example], micro_batch_size: int, pad_id: int, seq_length: int,
                     global_tokens: int, coef: float = 1.0) -> List[MicroBatch]:
    """SFT microbatches of ``examples`` with weight ``coef / global_tokens`` on every loss token."""
    out = []
    for i in range(0, len(examples), micro_batch_size):
        tokens, mask = target_aligned(examples[i:i + micro_batch_size], pad_id, seq_length)
        out.append(MicroBatch(tokens=tokens, loss_mask=mask,
                              kind=torch.full(tokens.shape, int(TokenKind.SFT), dtype=torch.int8),
                              weight=mask * (coef / max(global_tokens, 1)), name="sft"))
    return out
