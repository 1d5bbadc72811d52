"""Held-out evaluation: greedy accuracy per expert and the majority vote across experts.

For each question q and expert e the model answers greedily under P_e (inference in the paper uses one expert
prompt, greedy). ``accuracy[e]`` is the verifier's mean score of expert e. The majority vote takes every expert's
final answer (``rewards.answers.answer_key``: the last explicit answer statement, normalised as a number, option
letter or yes/no, else the last number), picks the most frequent one (ties: the answer of the lowest expert index
among the tied), and scores the response of the first expert that gave it.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Callable, Dict, List, Sequence

from ..rewards.answers import answer_key
from ..types import Record, Request, Rollout

RewardFn = Callable[[str, Record], float]


def majority_index(texts: Sequence[str]) -> int:
    """Index of the response whose final answer is the most frequent (ties -> lowest index)."""
    keys = [answer_key(t) for t in texts]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0
    best = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)


def evaluate(generate: Callable[[List[Request]], List[Rollout]], prompt_fn: Callable[[Record, int], List[int]],
             records: Sequence[Record], num_experts: int, reward_fn: RewardFn) -> Dict[str, object]:
    """Greedy accuracy of every expert and of the majority vote on ``records``.

    ``generate`` maps requests to rollouts (greedy); ``prompt_fn(record, e)`` renders the prompt."""
    requests = [Request(prompt_ids=prompt_fn(r, e), qid=r.id, expert=e, seed=0)
                for r in records for e in range(num_experts)]
    rollouts = generate(requests)
    per_expert = [[0.0] * len(records) for _ in range(num_experts)]
    majority = []
    for qi, r in enumerate(records):
        outs = rollouts[qi * num_experts:(qi + 1) * num_experts]
        for e, o in enumerate(outs):
            per_expert[e][qi] = reward_fn(o.text, r)
        m = majority_index([o.text for o in outs])
        majority.append(per_expert[m][qi])
    n = max(len(records), 1)
    acc = [sum(s) / n for s in per_expert]
    return {"num_questions": len(records), "accuracy": acc, "mean_accuracy": sum(acc) / max(len(acc), 1),
            "majority_vote": sum(majority) / n, "per_question": [[s[qi] for s in per_expert]
                                                                 for qi in range(len(records))]}


def write_eval(results: Dict[str, Dict[str, object]], run_dir: str) -> None:
    """``eval.json`` (every stage's results) and ``eval.md`` (a table: stage x expert accuracy, mean, majority)."""
    os.makedirs(run_dir, exist_ok=True)
    slim = {stage: {k: v for k, v in res.items() if k != "per_question"} for stage, res in results.items()}
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(slim, f, indent=2)
    n = max((len(r["accuracy"]) for r in results.values()), default=0)
    lines = ["| stage | " + " | ".join(f"expert {e}" for e in range(n)) + " | mean | majority vote |",
             "|---|" + "---:|" * (n + 2)]
    for stage, r in results.items():
        accs = " | ".join(f"{a:.3f}" for a in r["accuracy"])
        lines.append(f"| {stage} | {accs} | {r['mean_accuracy']:.3f} | {r['majority_vote']:.3f} |")
    with open(os.path.join(run_dir, "eval.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
