"""Expert error overlap (the paper's Table 1): how often experts are wrong, and wrong on the same questions.

Input: ``{expert_name: {question_id: correct (bool)}}``. Only ids present for every expert are compared (the
others are counted per expert in ``dropped``). With E_i the set of compared questions expert i gets wrong and n the
number of compared questions:
  * error rate of expert i          |E_i| / n
  * pairwise overlap of (i, j)      |E_i ∩ E_j| / n       (both wrong), with Jaccard |E_i ∩ E_j| / |E_i ∪ E_j|
  * all-expert overlap              |∩_i E_i| / n          (every expert wrong: no expert can teach another)
  * independent-errors level        rate_i · rate_j, Π_i rate_i: what the overlaps would be if the experts erred
                                    independently. Overlaps well below it mean complementary experts (the paper's
                                    Table 1; what RIEL's inter-expert KL needs); above it, errors are shared.
Rates are 0 when n = 0; the Jaccard index is 0 when E_i ∪ E_j is empty.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Dict, List, Mapping, Tuple


@dataclass
class OverlapTable:
    experts: List[str]
    n: int
    errors: Dict[str, int]
    error_rate: Dict[str, float]
    pair_errors: Dict[Tuple[str, str], int]
    pair_rate: Dict[Tuple[str, str], float]
    pair_jaccard: Dict[Tuple[str, str], float]
    all_errors: int
    all_rate: float
    dropped: Dict[str, int] = field(default_factory=dict)

    def independent_pair(self, pair: Tuple[str, str]) -> float:
        return self.error_rate[pair[0]] * self.error_rate[pair[1]]

    @property
    def independent_all(self) -> float:
        out = 1.0
        for e in self.experts:
            out *= self.error_rate[e]
        return out

    def to_dict(self) -> dict:
        pairs = [{"experts": list(p), "both_wrong": self.pair_errors[p], "rate": self.pair_rate[p],
                  "jaccard": self.pair_jaccard[p], "independent_rate": self.independent_pair(p)}
                 for p in self.pair_errors]
        return {"n": self.n, "experts": [{"name": e, "errors": self.errors[e], "error_rate": self.error_rate[e],
                                          "dropped": self.dropped.get(e, 0)} for e in self.experts],
                "pairs": pairs, "all_experts": {"all_wrong": self.all_errors, "rate": self.all_rate,
                                                "independent_rate": self.independent_all}}


def error_overlap(correct: Mapping[str, Mapping[str, bool]]) -> OverlapTable:
    """The overlap table of per-expert correctness maps (see module docstring)."""
    experts = list(correct)
    if not experts:
        raise ValueError("error_overlap: no experts given")
    common = set.intersection(*(set(correct[e]) for e in experts))
    n = len(common)
    wrong = {e: {q for q in common if not correct[e][q]} for e in experts}
    rate = lambda k: k / n if n else 0.0  # noqa: E731
    pair_errors, pair_rate, pair_jaccard = {}, {}, {}
    for a, b in combinations(experts, 2):
        both, either = len(wrong[a] & wrong[b]), len(wrong[a] | wrong[b])
        pair_errors[(a, b)], pair_rate[(a, b)] = both, rate(both)
        pair_jaccard[(a, b)] = both / either if either else 0.0
    all_errors = len(set.intersection(*wrong.values()))
    return OverlapTable(experts=experts, n=n, errors={e: len(wrong[e]) for e in experts},
                        error_rate={e: rate(len(wrong[e])) for e in experts}, pair_errors=pair_errors,
                        pair_rate=pair_rate, pair_jaccard=pair_jaccard, all_errors=all_errors,
                        all_rate=rate(all_errors), dropped={e: len(correct[e]) - n for e in experts})


def format_table(t: OverlapTable) -> str:
    """A plain-text rendering: per-expert errors, then pairs, then all experts, each overlap beside the level
    independent errors would give."""
    width = max([len(e) for e in t.experts] + [len(" & ".join(p)) for p in t.pair_errors] + [11])
    lines = [f"questions compared: {t.n}", "", f"{'expert':<{width}}  {'errors':>7}  {'error rate':>10}"]
    for e in t.experts:
        extra = f"   ({t.dropped[e]} ids not shared by every expert)" if t.dropped.get(e) else ""
        lines.append(f"{e:<{width}}  {t.errors[e]:>7}  {100 * t.error_rate[e]:>9.2f}%{extra}")
    lines += ["", f"{'pair':<{width}}  {'both wrong':>10}  {'rate':>7}  {'if independent':>14}  {'jaccard':>7}"]
    for p, k in t.pair_errors.items():
        lines.append(f"{' & '.join(p):<{width}}  {k:>10}  {100 * t.pair_rate[p]:>6.2f}%  "
                     f"{100 * t.independent_pair(p):>13.2f}%  {t.pair_jaccard[p]:>7.3f}")
    lines += ["", f"{'all experts':<{width}}  {t.all_errors:>10}  {100 * t.all_rate:>6.2f}%  "
                  f"{100 * t.independent_all:>13.2f}%"]
    return "\n".join(lines)
