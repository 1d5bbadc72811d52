"""Inter-expert KL: per question, the weak expert E− is pulled toward the strong expert E+ on E+'s correct answers.

    m_e  = mean reward of expert e on the question
    E+   = argmax_e m_e,  E− = argmin_e m_e                 (ties → a seeded uniform draw among the tied experts)
    skip the question when m_{E+} = m_{E−} or E+ has no correct response
    O+   = E+'s correct responses, the first ``max_kl_responses`` in sample order
    L_KL = mean over o ∈ O+ and its tokens t of  stopgrad(log π(o_t | q, P+, o_<t)) − log π(o_t | q, P−, o_<t)

the k1 (or k3) sample estimate of KL(π(·|P+) ‖ π(·|P−)); the gradient flows only through the P− forward, so E−
moves toward E+. (The paper's summaries print log p(O+|P−) − log p(O+|P+), whose minimisation pushes E− away;
we implement the intended direction, see ARCHITECTURE.md.) The P+ term is the rollout's own log-probs: the
rollouts were sampled from the current weights under P+ and one optimizer step follows per RIEL step, so they are
exactly stopgrad(log π(o_t | q, P+, o_<t)) (same temperature) and no extra forward is needed.

What the k1 gradient is: ∇L_KL = −mean ∇log π(o_t | q, P−, o_<t), i.e. supervised learning of E+'s correct
answers under E−'s prompt. It teaches E− whatever O+ contains — the knowledge E− lacked *and* E+'s format. On the
v1 synthetic task (teachers that differ in format only) it could transfer nothing but format; on the v2 testbed
(``data/synthetic_families.py``) the E+ of a question is usually an expert whose teacher was reliable on that
family, so O+ carries the step E− gets wrong (the carry, the precedence, the unit). k3 (e^d − 1 − d,
d = log π(o_t|P−) − log π(o_t|P+)) has gradient (e^d − 1)·∇log π(o_t|P−): it moves log π(o_t|P−) toward
log π(o_t|P+) from either side (up where P− underrates the token, down where it overrates it) and vanishes where
the two experts already agree — matching rather than k1's uniform SFT pull.

Ties: sending ties to the lowest index for both E+ and E− let expert 0 win 17 of 21 tied questions on the v1
task, and its style took over every expert. So a tie is broken by a uniform draw among the tied experts
from ``random.Random(tie_seed)``, where the scheduler sets ``tie_seed = mix_seed(seed, step, question index)``:
deterministic, identical on every rank, and the same after a resume. Without a ``tie_seed`` (direct calls) ties
still go to the lowest index.

A response is *correct* when its reward exceeds 0.5 (verifiers return 0 or 1).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..types import Rollout, ScoredGroup

CORRECT_THRESHOLD = 0.5


def is_correct(reward: float) -> bool:
    return reward > CORRECT_THRESHOLD


def select_experts(mean_rewards: Sequence[float], has_correct: Optional[Sequence[bool]] = None,
                   tie_seed: Optional[int] = None) -> Optional[Tuple[int, int]]:
    """(E+, E−) for one question from the experts' mean rewards, or None when the question is skipped.

    ``has_correct[e]``: whether expert e has at least one correct response (default: ``mean_rewards[e] > 0``).
    Ties among the argmax (argmin) experts: a uniform draw from ``random.Random(tie_seed)`` (E+ first, then E−);
    with ``tie_seed=None`` the lowest index."""
    if len(mean_rewards) < 2:
        return None
    m = [float(x) for x in mean_rewards]
    hi, lo = max(m), min(m)
    if hi == lo:
        return None
    tops = [e for e in range(len(m)) if m[e] == hi]
    bottoms = [e for e in range(len(m)) if m[e] == lo]
    if tie_seed is None:
        e_plus, e_minus = tops[0], bottoms[0]
    else:
        rng = random.Random(int(tie_seed))
        e_plus, e_minus = rng.choice(tops), rng.choice(bottoms)
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


def kl_pair(groups: Sequence[ScoredGroup], max_responses: int, tie_seed: Optional[int] = None) -> Optional[KLPair]:
    """The KL pair of one question from its per-expert groups (any order; expert ids index the experts); ties
    between experts are drawn with ``tie_seed`` (see :func:`select_experts`)."""
    if not groups:
        return None
    by_expert = sorted(groups, key=lambda g: g.expert)
    experts = [g.expert for g in by_expert]
    if experts != list(range(len(experts))):
        raise ValueError(f"question {groups[0].qid!r}: expected groups for experts 0..N-1, got {experts}")
    means = [sum(g.rewards) / max(len(g.rollouts), 1) for g in by_expert]
    correct = [[r for r in g.rollouts if is_correct(r.reward)] for g in by_expert]
    sel = select_experts(means, [bool(c) for c in correct], tie_seed)
    if sel is None:
        return None
    e_plus, e_minus = sel
    responses = correct[e_plus][:max(max_responses, 0)]
    if not responses:
        return None
    return KLPair(qid=groups[0].qid, e_plus=e_plus, e_minus=e_minus, responses=responses)
