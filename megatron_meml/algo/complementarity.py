"""Keeping the experts complementary while each improves (beyond the paper; docs/complementarity.md).

What the ensemble metrics show on the quickstart testbed (eval/ensemble.py; heldout/* in metrics.jsonl during
RIEL, eval.md after): after MEF each expert is weak on one family and the experts' errors are disjoint (pairwise
Jaccard of the errors 0.02, oracle 99.7%); under the paper's objective every expert improves but their errors
coincide (Jaccard 0.45 after RIEL, seeds 1-3) and the oracle ends below its after-MEF level (99.2%; on the
default seed 1234: 100 -> 96%, best label-free selection 99 -> 94%). Two knobs act on the two places where RIEL
makes the experts alike:

1. Gated inter-expert KL (``riel.kl_gate=wrong_right``, threshold τ = ``riel.kl_gate_threshold``). The paper
   pulls E− toward E+ on every question whose experts' mean rewards differ, m_{E+} > m_{E−}. At G = 8 that
   includes questions where both are already right and differ by sampling noise (7/8 vs 8/8): E− then copies
   E+'s *way* of answering (its format, its intermediate steps) where it needed nothing, which makes the experts'
   answers, hence their errors, alike. The gate keeps the pair only when

       m_{E−} < τ ≤ m_{E+}        (E− wrong, E+ right, at the group level)

   so the transfer happens where E− lacks the knowledge and stops for a question as soon as E− gets it right
   (m_{E−} ≥ τ). E+, E−, O+ and the KL term itself are the paper's (``algo/inter_expert_kl.py``).

2. Per-expert question weighting (``riel.complement_weight`` = α ≥ 0). With m_{−e}(q) the mean reward of the
   experts other than e on q, the GRPO advantages of group (q, e) are scaled:

       A'_{e,g} = A_{e,g} · (1 + α · (1 − m_{−e}(q)))

   An expert's policy gradient counts up to (1 + α)× on questions the other experts fail — where its being right
   adds to the oracle — and 1× where the others already succeed. Group-relative advantages still sum to zero per
   group (the scale is constant within a group), so this reweights questions, not samples. α = 0: the paper.

Departure from the paper: both are off by default; the paper has neither (its KL fires on every m_{E+} > m_{E−}
question, its GRPO weighs every (q, e) group alike).

Measured (benchmarks/complementarity_cpu_20261207.md, quickstart, seeds 1-3, 200 held-out questions): the gate
kept the mean expert accuracy (97.8 vs 97.9%) with the oracle at 99.8% and a third of the error overlap, but not on
every seed, and on seed 1234 it lost 4 points of mean accuracy (less transfer where E+ is rarely "right" at
τ = 0.5); α = 1 on top of the gate was worse on every count. Dynamic sampling per cell
(``rollout/dynamic_sampling.py``) kept the ensemble better than either, at 2.4x the rollout tokens.
"""
from __future__ import annotations

from typing import List, Sequence

from ..types import ScoredGroup


def group_mean(g: ScoredGroup) -> float:
    return sum(g.rewards) / max(len(g.rollouts), 1)


def kl_gate_open(means: Sequence[float], e_plus: int, e_minus: int, mode: str, tau: float) -> bool:
    """Whether the (E+, E−) pair of a question keeps its KL term: always with ``mode="none"`` (the paper); with
    ``"wrong_right"`` only when m_{E−} < τ ≤ m_{E+}."""
    if mode == "none":
        return True
    if mode == "wrong_right":
        return means[e_minus] < tau <= means[e_plus]
    raise ValueError(f"config key `riel.kl_gate`: unknown gate {mode!r}; choose none or wrong_right")


def complement_weights(question_groups: Sequence[ScoredGroup], alpha: float) -> List[float]:
    """1 + α·(1 − m_{−e}) for each group of one question (all N experts' groups, any order)."""
    means = [group_mean(g) for g in question_groups]
    n = len(means)
    if n < 2:
        return [1.0] * n
    total = sum(means)
    return [1.0 + alpha * (1.0 - (total - m) / (n - 1)) for m in means]


def weight_advantages(question_groups: Sequence[ScoredGroup], alpha: float) -> None:
    """Scale ``advantages`` of every group of one question in place by :func:`complement_weights` (α = 0: no-op)."""
    if alpha == 0:
        return
    for g, w in zip(question_groups, complement_weights(question_groups, alpha)):
        g.advantages = [a * w for a in g.advantages]
