"""Label-free expert selection at inference: per question, pick one of the N experts' greedy answers without labels.

The paper answers with one expert prompt and leaves open which; with N experts that are right on different
questions (its Table 1) a per-question choice can beat every single expert. Each strategy sees, per expert e, the
normalised final answer ``key_e`` (``rewards.answers.answer_key``; None when the response states none) and the mean token
log-prob ``c_e`` of its greedy response (``mean_t log π(o_t | q, P_e, o_<t)`` at temperature 1, the engine's own
log-probs: no extra forward), and returns the index of the chosen expert:

  vote       the most frequent answer; ties between answers -> the answer whose voters have the highest mean c;
             the chosen response is its most confident voter (``vote`` never falls back on the expert index)
  logprob    argmax_e c_e: the expert most certain of its own answer (length-normalised sequence likelihood)
  agreement  confidence-weighted vote: score(a) = Σ_{e: key_e = a} exp(c_e) (each voter counts with its geometric-
             mean token probability); the chosen response is the most confident voter of the best answer

Experts without an answer never win a vote; when no expert states an answer every strategy falls back on
``logprob``. Remaining exact float ties go to the lowest index (deterministic; they do not occur in practice).
``best single expert`` (the expert with the highest accuracy, chosen *with* labels) and ``oracle`` (any expert
right) are reported beside these as the reference points (``accuracy.evaluate``).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence

STRATEGIES = ("vote", "logprob", "agreement")


def _most_confident(indices: Sequence[int], conf: Sequence[float]) -> int:
    return max(indices, key=lambda e: (conf[e], -e))


def select_logprob(keys: Sequence[Optional[str]], conf: Sequence[float]) -> int:
    return _most_confident(range(len(conf)), conf)


def _voters(keys: Sequence[Optional[str]]) -> Dict[str, List[int]]:
    """Answer -> the experts that gave it (responses without an answer do not vote)."""
    voters: Dict[str, List[int]] = defaultdict(list)
    for e, k in enumerate(keys):
        if k is not None:
            voters[k].append(e)
    return voters


def select_vote(keys: Sequence[Optional[str]], conf: Sequence[float]) -> int:
    voters = _voters(keys)
    if not voters:
        return select_logprob(keys, conf)
    best = max(voters.values(), key=lambda v: (len(v), sum(conf[e] for e in v) / len(v), -min(v)))
    return _most_confident(best, conf)


def select_agreement(keys: Sequence[Optional[str]], conf: Sequence[float]) -> int:
    voters = _voters(keys)
    if not voters:
        return select_logprob(keys, conf)
    best = max(voters.values(), key=lambda v: (sum(math.exp(conf[e]) for e in v), -min(v)))
    return _most_confident(best, conf)


SELECTORS: Dict[str, Callable[[Sequence[Optional[str]], Sequence[float]], int]] = {
    "vote": select_vote, "logprob": select_logprob, "agreement": select_agreement}


def mean_logprob(logprobs: Sequence[float]) -> float:
    """Mean token log-prob of a response (-inf for an empty one: it never wins on confidence)."""
    return sum(logprobs) / len(logprobs) if logprobs else float("-inf")


def select(strategy: str, keys: Sequence[Optional[str]], conf: Sequence[float]) -> int:
    """Index of the expert whose answer ``strategy`` picks (see module docstring)."""
    try:
        return SELECTORS[strategy](keys, conf)
    except KeyError:
        raise ValueError(f"config key `eval.selection`: unknown strategy {strategy!r}; choose from "
                         f"{', '.join(STRATEGIES)}") from None
