"""Group-relative advantages per (question x expert) group, optionally pooled per question.

    adv = group_advantages(rewards, group_ids, num_groups=None, question_ids=None, pooled=False,
                           std_normalize=False, eps=1e-6, positive_only=False, impl="auto")

Formulas and the exactness rule (constant groups, single-sample groups -> A = 0 exactly): ``reference.py``.
Ids are small non-negative ints (e.g. group_id = question_index * N + expert); ``num_groups`` bounds them (default
S, no host sync). ``pooled=True`` takes the baseline over all samples of a question (``question_ids``) instead of
per (question, expert) group -- the pooling ablation of the design notes.
"""
from __future__ import annotations

import torch

from .._dispatch import resolve_impl
from . import reference

__all__ = ["group_advantages"]


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, num_groups: int | None = None, *,
                     question_ids: torch.Tensor | None = None, pooled: bool = False, std_normalize: bool = False,
                     eps: float = 1e-6, positive_only: bool = False, impl: str = "auto") -> torch.Tensor:
    """rewards [S] float, group_ids [S] int (question x expert), question_ids [S] int (needed when pooled)
    -> advantages fp32 [S]. Samples whose id lies outside [0, num_groups) get NaN."""
    if pooled:
        if question_ids is None:
            raise ValueError("pooled=True takes the baseline per question: pass question_ids")
        keys = question_ids
    else:
        keys = group_ids
    if keys.shape != rewards.shape:
        raise ValueError(f"ids shape {tuple(keys.shape)} != rewards shape {tuple(rewards.shape)}")
    if num_groups is None:
        num_groups = rewards.numel()
    if resolve_impl(impl, rewards, keys) == "triton":
        from . import triton_impl
        return triton_impl.group_advantages(rewards, keys, num_groups, std_normalize, eps, positive_only)
    return reference.group_advantages(rewards, keys, num_groups, std_normalize, eps, positive_only)
