"""Inter-expert KL: per question, the weak expert E− is pulled toward the strong expert E+ on E+'s correct answers.

    m_e  = mean reward of expert e on the question
    E+   = argmax_e m_e,  E− = argmin_e m_e                 (ties → lowest expert index)
    skip the question when m_{E+} = m_{E−} or E+ has no correct response
    O+   = E+'s correct responses, the first ``max_kl_responses`` in sample order
    L_KL = mean over o ∈ O+ and its tokens t of  stopgrad(log π(o_t | q, P+, o_<t)) − log π(o_t | q, P−, o_<t)

the k1 (or k3) sample estimate of KL(π(·|P+) ‖ π(·|P−)); the gradient flows only through the P− forward, so E−
moves toward E+. (The paper's summaries print log p(O+|P−) − log p(O+|P+), whose minimisation pushes E− away;
we implement the intended direction, see ARCHITECTURE.md.) The P+ term is the rollout's own log-probs: the
rollouts were sampled from the current weights under P+ and one optimizer step follows per RIEL step, so they are
exactly stopgrad(log π(o_t | q, P+, o_<t)) (same temperature) and no extra forward is needed.

A response is *correct* when its reward exceeds 0.5 (verifiers return 0 or 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..types import Rollout, ScoredGroup

CORRECT_THRESHOLD = 0.5


def is_correct(reward: float) -> bool:
    return reward > CORRECT_THRESHOLD


def select_experts(mean_rewards: Sequence[float],
                   has_correct: Optional[Sequence[bool]] = None) -> Optional[Tuple[int, int]]:
    """(E+, E−) for one question from the experts' mean rewards, or None when the question is skipped.

    ``has_correct[e]``: whether expert e has at least one correct response (default: ``mean_rewards[e] > 0``).
    Ties → the lowest index for both argmax and argmin."""
    if len(mean_rewards) < 2:
        return None
    m = [float(x) for x in mean_rewards]
    e_plus = max(range(len(m)), key=lambda e: (m[e], -e))
    e_minus = min(range(len(m)), key=lambda e: (m[e], e))
    if m[e_plus] == m[e_minus]:
        return None
    correct = has_correct[e_plus] if has_correct is not None else m[e_plus] > 0
    if not correct:
        return None
    return e_plus, e_minus


@dataclass
class KLPair:
    """One question's inter-expert KL term: E+'s correct responses to be scored under E−'s prompt."""

    qid: str
    e_plus: int
    e_minus: int
    responses: List[Rollout]  # O+ (capped), each with its P+ log-probs


def kl_pair(groups: Sequence[ScoredGroup], max_responses: int) -> Optional[KLPair]:
    """The KL pair of one question from its per-expert groups (any order; expert ids index the experts)."""
    if not groups:
        return None
    by_expert = sorted(groups, key=lambda g: g.expert)
    experts = [g.expert for g in by_expert]
    if experts != list(range(len(experts))):
        raise ValueError(f"question {groups[0].qid!r}: expected groups for experts 0..N-1, got {experts}")
    means = [sum(g.rewards) / max(len(g.rollouts), 1) for g in by_expert]
    correct = [[r for r in g.rollouts if is_correct(r.reward)] for g in by_expert]
    sel = select_experts(means, [bool(c) for c in correct])
    if sel is None:
        return None
    e_plus, e_minus = sel
    responses = correct[e_plus][:max(max_responses, 0)]
    if not responses:
        return None
    return KLPair(qid=groups[0].qid, e_plus=e_plus, e_minus=e_minus, responses=responses)
