"""Group-relative advantages, plain torch (the spec and the CPU path).

For sample i with reward r_i in group g = key_i (key = group_ids, or question_ids when ``pooled``):

    mean_g = (1/n_g) sum_{j in g} r_j
    A_i    = r_i - mean_g
    std_g  = sqrt( sum_{j in g} (r_j - mean_g)^2 / (n_g - 1) )     (unbiased, as verl / GRPO; only if std_normalize)
    A_i    = A_i / (std_g + eps)                                      (only if std_normalize)
    A_i    = max(A_i, 0)                                              (only if positive_only)

Exactness: a group whose rewards are all equal -- every single-sample group included (its std is defined as 0) --
gets A = 0 exactly. It is detected as min_g == max_g (no rounding involved), not from a variance that rounding
can leave at 1e-9 (the low-variance bug verl once had), nor from r - mean, which is not exactly 0 for e.g. 0.1.

Group keys must lie in [0, num_groups); samples with a key outside get NaN (visible, and no host sync to check).
num_groups defaults to S, a bound that needs no host sync.
Example: rewards [0,0,0,1,0,0,0,0] in one group -> A = 0.875 for the correct sample, -0.125 for the others.
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, keys: torch.Tensor, num_groups: int, std_normalize: bool = False,
                     eps: float = 1e-6, positive_only: bool = False) -> torch.Tensor:
    """rewards [S] (any float), keys [S] int in [0, num_groups) -> advantages fp32 [S]."""
    r = rewards.float().reshape(-1)
    keys = keys.reshape(-1).long()
    ok = (keys >= 0) & (keys < num_groups)
    k = torch.where(ok, keys, torch.zeros_like(keys))
    rz = torch.where(ok, r, torch.zeros_like(r))
    ones = ok.to(torch.float32)
    count = torch.zeros(num_groups, dtype=torch.float32, device=r.device).index_add_(0, k, ones)
    total = torch.zeros(num_groups, dtype=torch.float32, device=r.device).index_add_(0, k, rz)
    mean = total / count.clamp_min(1.0)
    dev = r - mean[k]
    lo = torch.full((num_groups,), float("inf"), device=r.device).scatter_reduce(0, k, rz, "amin")
    hi = torch.full((num_groups,), float("-inf"), device=r.device).scatter_reduce(0, k, rz, "amax")
    constant = (lo == hi)[k]
    adv = dev
    if std_normalize:
        sq = torch.zeros(num_groups, dtype=torch.float32, device=r.device).index_add_(0, k, torch.where(ok, dev * dev, 0.0))
        std = torch.sqrt(sq / (count - 1.0).clamp_min(1.0))
        adv = dev / (std[k] + eps)
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    if positive_only:
        adv = adv.clamp_min(0.0)
    return torch.where(ok, adv, torch.full_like(adv, float("nan")))
