"""Group-relative advantages of a RIEL step, one group per (question, expert) (the paper's per-expert baseline).

    A_{e,g} = r_{e,g} - mean_g' r_{e,g'}                      (default; Dr.GRPO-style, no std division)
    A_{e,g} = A_{e,g} / (std_g r_{e,·} + eps)                 (riel.adv_std_norm; unbiased std, eps = 1e-6)
    baseline over all N·G samples of the question            (riel.adv_pooled: the pooling ablation)
    A <- max(A, 0)                                            (riel.adv_positive_only: the paper summaries' form)

A group whose rewards are all equal gets A = 0 exactly. Example: rewards [0,0,0,1,0,0,0,0] -> 0.875 for the
correct sample and -0.125 for the others. The arithmetic is ``meml_kernels.group_advantages`` (its torch twin:
this runs on the host over a few hundred scalars).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from meml_kernels.group_advantages import group_advantages

from ..types import ScoredGroup


def compute_advantages(groups: Sequence[ScoredGroup], riel_cfg) -> List[List[float]]:
    """Fill ``group.advantages`` of every group (one float per rollout) and return them.

    ``riel_cfg`` is a :class:`~megatron_meml.config.schema.RIELConfig` (adv_std_norm, adv_pooled,
    adv_positive_only). Groups of the same question are recognised by ``qid`` for the pooled variant."""
    if not groups:
        return []
    rewards, gids, qids = [], [], []
    qindex: Dict[str, int] = {}
    for gi, g in enumerate(groups):
        q = qindex.setdefault(g.qid, len(qindex))
        for r in g.rollouts:
            rewards.append(float(r.reward))
            gids.append(gi)
            qids.append(q)
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), torch.tensor(gids),
                           num_groups=max(len(groups), len(qindex)), question_ids=torch.tensor(qids),
                           pooled=riel_cfg.adv_pooled, std_normalize=riel_cfg.adv_std_norm,
                           positive_only=riel_cfg.adv_positive_only, impl="torch").tolist()
    out, i = [], 0
    for g in groups:
        g.advantages = adv[i:i + len(g.rollouts)]
        out.append(g.advantages)
        i += len(g.rollouts)
    return out
