"""Ensemble metrics of the N experts: error overlap from per-question correctness, pass@k and maj@k from samples.

Pairwise error overlap (the mean over the N(N−1)/2 expert pairs; E_i = the questions expert i gets wrong, n the
questions):
    both_wrong = mean_{i<j} |E_i ∩ E_j| / n
    jaccard    = mean_{i<j} |E_i ∩ E_j| / |E_i ∪ E_j|      (a pair with E_i ∪ E_j = ∅ counts 0)
Low values = complementary experts (one can cover another's errors); ``eval/overlap.py`` has the full table of
one run (per pair, the independent-errors level, all-expert overlap).

pass@k (Chen et al. 2021, unbiased): with n samples of which c are correct,
    pass@k = 1 − C(n−c, k) / C(n, k)                      (= 1 when n − c < k)
computed as the product 1 − Π_{i=n−c+1}^{n} (1 − k/i) (no large binomials). Ensemble pass@k: k samples from
*every* expert, some one correct; the experts sample independently, so its unbiased estimate is
    1 − Π_e C(n−c_e, k) / C(n, k).
maj@k: the majority answer of k samples (``rewards.answers.answer_key``; samples without an answer do not vote;
ties -> the answer first seen in sample order) is correct. Its expectation over the C(n, k) subsets is exact
when C(n, k) ≤ ``MAJ_SUBSETS``, else the mean over ``MAJ_SUBSETS`` seeded random subsets. Ensemble maj@k votes
over k samples of every expert (N·k answers; seeded random subsets, or exact when the product of the experts'
subset counts is small).
"""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from typing import Dict, List, Optional, Sequence

MAJ_SUBSETS = 256


def pairwise_overlap(per_question: Sequence[Sequence[float]]) -> Dict[str, float]:
    """{both_wrong, jaccard}: mean pairwise error overlap of the experts. ``per_question[q][e]``: expert e's score
    on question q (correct when > 0.5). Both 0 with fewer than two experts or no questions."""
    if not per_question or len(per_question[0]) < 2:
        return {"both_wrong": 0.0, "jaccard": 0.0}
    n_e = len(per_question[0])
    wrong = [{q for q, row in enumerate(per_question) if not row[e] > 0.5} for e in range(n_e)]
    pairs = list(itertools.combinations(range(n_e), 2))
    both = [len(wrong[a] & wrong[b]) / len(per_question) for a, b in pairs]
    jac = [len(wrong[a] & wrong[b]) / len(wrong[a] | wrong[b]) if wrong[a] | wrong[b] else 0.0 for a, b in pairs]
    return {"both_wrong": sum(both) / len(pairs), "jaccard": sum(jac) / len(pairs)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 − C(n−c, k)/C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def ensemble_pass_at_k(n: int, counts: Sequence[int], k: int) -> float:
    """k samples from every expert, some one correct: 1 − Π_e C(n−c_e, k)/C(n, k)."""
    fail = 1.0
    for c in counts:
        fail *= 1.0 - pass_at_k(n, c, k)
    return 1.0 - fail


def _majority_correct(keys: Sequence[Optional[str]], correct: Sequence[bool]) -> float:
    """1.0 when the most frequent answer of ``keys`` (ties: the first seen) is a correct one, else 0.0."""
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0.0
    best = max(counts.values())
    i = next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)
    return float(correct[i])


def _subsets(n: int, k: int, rng: random.Random) -> List[Sequence[int]]:
    if math.comb(n, k) <= MAJ_SUBSETS:
        return list(itertools.combinations(range(n), k))
    return [sorted(rng.sample(range(n), k)) for _ in range(MAJ_SUBSETS)]


def maj_at_k(keys: Sequence[Optional[str]], correct: Sequence[bool], k: int, seed: int = 0) -> float:
    """Expected maj@k of one (question, expert) from its n sampled answers (module docstring)."""
    n = len(keys)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n, got n={n} k={k}")
    subs = _subsets(n, k, random.Random(seed))
    return sum(_majority_correct([keys[i] for i in s], [correct[i] for i in s]) for s in subs) / len(subs)


def ensemble_maj_at_k(keys: Sequence[Sequence[Optional[str]]], correct: Sequence[Sequence[bool]], k: int,
                      seed: int = 0) -> float:
    """Expected majority-vote correctness over k samples of every expert (``keys[e][i]``, ``correct[e][i]``)."""
    n = len(keys[0])
    rng = random.Random(seed)
    per = [math.comb(n, k)] * len(keys)
    if math.prod(per) <= MAJ_SUBSETS:
        draws = list(itertools.product(*[list(itertools.combinations(range(n), k)) for _ in keys]))
    else:
        draws = [[sorted(rng.sample(range(n), k)) for _ in keys] for _ in range(MAJ_SUBSETS)]
    total = 0.0
    for d in draws:
        ks = [keys[e][i] for e, s in enumerate(d) for i in s]
        cs = [correct[e][i] for e, s in enumerate(d) for i in s]
        total += _majority_correct(ks, cs)
    return total / len(draws)


def sampled_scores(keys: Sequence[Sequence[Sequence[Optional[str]]]], correct: Sequence[Sequence[Sequence[bool]]],
                   ks: Sequence[int], qs: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """pass@k and maj@k per expert and for the ensemble, averaged over questions ``qs`` (default all).

    ``keys[q][e][i]`` / ``correct[q][e][i]``: answer key and correctness of sample i of expert e on question q.
    Returns ``{"samples": n, "pass@k": {"k": [per expert], ...}, "maj@k": {...}, "ensemble_pass@k": {"k": v},
    "ensemble_maj@k": {"k": v}}``."""
    qs = list(range(len(keys))) if qs is None else list(qs)
    n_q = max(len(qs), 1)
    n_e = len(keys[qs[0]]) if qs else 0
    n = len(keys[qs[0]][0]) if qs else 0
    out: Dict[str, object] = {"samples": n, "pass@k": {}, "maj@k": {}, "ensemble_pass@k": {}, "ensemble_maj@k": {}}
    for k in ks:
        if not 1 <= k <= n:
            continue
        p = [sum(pass_at_k(n, sum(correct[q][e]), k) for q in qs) / n_q for e in range(n_e)]
        m = [sum(maj_at_k(keys[q][e], correct[q][e], k, seed=q) for q in qs) / n_q for e in range(n_e)]
        out["pass@k"][str(k)] = p
        out["maj@k"][str(k)] = m
        out["ensemble_pass@k"][str(k)] = sum(ensemble_pass_at_k(n, [sum(c) for c in correct[q]], k)
                                             for q in qs) / n_q
        out["ensemble_maj@k"][str(k)] = sum(ensemble_maj_at_k(keys[q], correct[q], k, seed=q) for q in qs) / n_q
    return out


def flat_metrics(res: Dict[str, object], prefix: str = "heldout/") -> Dict[str, float]:
    """The ensemble numbers of an ``accuracy.evaluate`` result as flat metric names (for metrics.jsonl /
    TensorBoard): mean, majority_vote, select/<strategy>, best_label_free, oracle, overlap/both_wrong,
    overlap/jaccard, and pass@k / maj@k (expert mean and ensemble) when samples were drawn."""
    m: Dict[str, float] = {f"{prefix}mean": res["mean_accuracy"], f"{prefix}majority_vote": res["majority_vote"],
                           f"{prefix}oracle": res["oracle"]}
    sel = res.get("selection", {})
    m.update({f"{prefix}select/{k}": v for k, v in sel.items()})
    if sel:
        m[f"{prefix}best_label_free"] = max(sel.values())
    for k, v in res.get("overlap", {}).items():
        m[f"{prefix}overlap/{k}"] = v
    s = res.get("sampled") or {}
    for name in ("pass@k", "maj@k"):
        for k, per in s.get(name, {}).items():
            m[f"{prefix}{name.replace('k', k)}/expert_mean"] = sum(per) / max(len(per), 1)
            m[f"{prefix}{name.replace('k', k)}/ensemble"] = s[f"ensemble_{name}"][k]
    return m
