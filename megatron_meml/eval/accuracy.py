"""Held-out evaluation: greedy accuracy per expert, the majority vote, label-free selection, best expert, oracle.

For each question q and expert e the model answers greedily under P_e (inference in the paper uses one expert
prompt, greedy). ``accuracy[e]`` is the verifier's mean score of expert e. The majority vote takes every expert's
final answer (``rewards.answers.answer_key``: the last explicit answer statement, normalised as a number, option
letter or yes/no, else the last number), picks the most frequent one (ties: the answer of the lowest expert index
among the tied), and scores the response of the first expert that gave it. ``selection`` holds the label-free
strategies of ``eval/selection.py`` (``eval.selection``); ``best_expert`` is the single expert with the highest
accuracy (picked with labels: the bar a selection has to clear) and ``oracle`` the fraction of questions some expert
answers right (the ceiling of any selection).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

from ..rewards.answers import answer_key
from ..types import Record, Request, Rollout
from .ensemble import pairwise_overlap, sampled_scores
from .selection import STRATEGIES, mean_logprob, select

RewardFn = Callable[[str, Record], float]


def majority_index(texts: Sequence[str]) -> int:
    """Index of the response whose final answer is the most frequent (ties -> lowest index)."""
    keys = [answer_key(t) for t in texts]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0
    best = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)


def _scores(per_expert: Sequence[Sequence[float]], picks: Dict[str, Sequence[int]], qs: Sequence[int]) -> dict:
    """Accuracy per expert, mean, best single expert, oracle and every selection strategy over questions ``qs``."""
    n = max(len(qs), 1)
    acc = [sum(s[q] for q in qs) / n for s in per_expert]
    best = max(range(len(acc)), key=lambda e: (acc[e], -e))
    return {"num_questions": len(qs), "accuracy": acc, "mean_accuracy": sum(acc) / max(len(acc), 1),
            "majority_vote": sum(per_expert[picks["majority_vote"][q]][q] for q in qs) / n,
            "best_expert": {"expert": best, "accuracy": acc[best]},
            "oracle": sum(max(s[q] for s in per_expert) for q in qs) / n,
            "overlap": pairwise_overlap([[s[q] for s in per_expert] for q in qs]),
            "selection": {k: sum(per_expert[v[q]][q] for q in qs) / n for k, v in picks.items()
                          if k != "majority_vote"}}


def evaluate(generate: Callable[[List[Request]], List[Rollout]], prompt_fn: Callable[[Record, int], List[int]],
             records: Sequence[Record], num_experts: int, reward_fn: RewardFn,
             strategies: Sequence[str] = STRATEGIES, sample_generate: Optional[Callable] = None, samples: int = 0,
             pass_k: Sequence[int] = ()) -> Dict[str, object]:
    """Greedy accuracy of every expert, the majority vote, the label-free selection ``strategies``
    (``eval/selection.py``), the best single expert, the oracle (some expert right) and the mean pairwise error
    overlap (``overlap``: both_wrong, jaccard; ``eval/ensemble.py``) on ``records``; the same per problem family
    under ``by_family`` when records carry ``meta["family"]`` (the synthetic testbed).

    ``generate`` maps requests to rollouts (greedy, with the log-probs of the chosen tokens); ``prompt_fn(record,
    e)`` renders the prompt. With ``samples`` > 0, ``sample_generate`` (a sampling engine call) draws that many
    answers per (question, expert) (request seeds 1..samples) and ``sampled`` holds pass@k / maj@k per expert and
    for the ensemble for each k of ``pass_k`` (``eval/ensemble.sampled_scores``)."""
    requests = [Request(prompt_ids=prompt_fn(r, e), qid=r.id, expert=e, seed=0)
                for r in records for e in range(num_experts)]
    rollouts = generate(requests)
    per_expert = [[0.0] * len(records) for _ in range(num_experts)]
    picks: Dict[str, List[int]] = {"majority_vote": [], **{k: [] for k in strategies}}
    for qi, r in enumerate(records):
        outs = rollouts[qi * num_experts:(qi + 1) * num_experts]
        for e, o in enumerate(outs):
            per_expert[e][qi] = reward_fn(o.text, r)
        picks["majority_vote"].append(majority_index([o.text for o in outs]))
        keys = [answer_key(o.text) for o in outs]
        conf = [mean_logprob(o.logprobs) for o in outs]
        for k in strategies:
            picks[k].append(select(k, keys, conf))
    sampled = None
    if samples > 0 and sample_generate is not None:
        sampled = _sample(sample_generate, prompt_fn, records, num_experts, reward_fn, samples)
    ks = sorted({k for k in pass_k if 1 <= k <= samples})
    out = _scores(per_expert, picks, range(len(records)))
    if sampled is not None:
        out["sampled"] = sampled_scores(*sampled, ks)
    families: Dict[str, List[int]] = {}
    for qi, r in enumerate(records):
        if r.meta.get("family") is not None:
            families.setdefault(str(r.meta["family"]), []).append(qi)
    if families:
        out["by_family"] = {f: _scores(per_expert, picks, qs) for f, qs in sorted(families.items())}
        if sampled is not None:
            for f, qs in families.items():
                out["by_family"][f]["sampled"] = sampled_scores(*sampled, ks, qs)
    out["per_question"] = [[s[qi] for s in per_expert] for qi in range(len(records))]
    out["ids"] = [r.id for r in records]
    return out


def _sample(generate, prompt_fn, records, num_experts: int, reward_fn: RewardFn, samples: int):
    """keys[q][e][i], correct[q][e][i] of ``samples`` sampled answers per (question, expert)."""
    requests = [Request(prompt_ids=prompt_fn(r, e), qid=r.id, expert=e, seed=i + 1)
                for r in records for e in range(num_experts) for i in range(samples)]
    rollouts = generate(requests)
    keys = [[[None] * samples for _ in range(num_experts)] for _ in records]
    correct = [[[False] * samples for _ in range(num_experts)] for _ in records]
    for j, ro in enumerate(rollouts):
        q, rest = divmod(j, num_experts * samples)
        e, i = divmod(rest, samples)
        keys[q][e][i] = answer_key(ro.text)
        correct[q][e][i] = reward_fn(ro.text, records[q]) > 0.5
    return keys, correct


def _table(rows: Sequence[tuple], n: int, strategies: Sequence[str], first: str = "stage") -> List[str]:
    head = [first] + [f"expert {e}" for e in range(n)] + ["mean", "majority vote", "best expert", "oracle"] + \
        [f"select: {k}" for k in strategies] + ["both wrong (pairs)", "jaccard (pairs)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, r in rows:
        cells = [f"{a:.3f}" for a in r["accuracy"]] + [f"{r['mean_accuracy']:.3f}", f"{r['majority_vote']:.3f}"]
        best = r.get("best_expert")
        cells += [f"{best['accuracy']:.3f} (e{best['expert']})" if best else "", f"{r['oracle']:.3f}"
                  if "oracle" in r else ""]
        cells += [f"{r.get('selection', {}).get(k, float('nan')):.3f}" for k in strategies]
        ov = r.get("overlap") or {}
        cells += [f"{ov[k]:.3f}" if k in ov else "" for k in ("both_wrong", "jaccard")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _sampled_table(rows: Sequence[tuple], n: int, first: str = "stage") -> List[str]:
    """Greedy accuracy beside pass@k / maj@k per expert and for the ensemble (stages evaluated with samples)."""
    head = [first, "metric"] + [f"expert {e}" for e in range(n)] + ["expert mean", "ensemble"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for name, r in rows:
        s = r.get("sampled")
        if not s:
            continue
        acc = r["accuracy"]
        lines.append(f"| {name} | greedy | " + " | ".join(f"{a:.3f}" for a in acc) +
                     f" | {r['mean_accuracy']:.3f} | {r['oracle']:.3f} (oracle) |")
        for metric in ("pass@k", "maj@k"):
            for k, per in s[metric].items():
                label = metric.replace("k", k)
                lines.append(f"| {name} | {label} (n={s['samples']}) | " + " | ".join(f"{a:.3f}" for a in per) +
                             f" | {sum(per) / len(per):.3f} | {s['ensemble_' + metric][k]:.3f} |")
    return lines


def write_eval(results: Dict[str, Dict[str, object]], run_dir: str) -> None:
    """``eval.json`` (every stage's results), ``eval.md`` (stage x expert accuracy, mean, majority vote, best
    single expert, oracle, each selection strategy, pairwise error overlap, then the same per problem family when
    there are families, for every evaluation including those during RIEL; pass@k / maj@k when sampled) and
    ``predictions_<stage>.jsonl`` (``{id, expert, correct}`` per question and expert, for stages evaluated in this
    process: ``python -m megatron_meml.expert_overlap <run_dir>/predictions_after_mef.jsonl`` is the paper's Table 1)."""
    os.makedirs(run_dir, exist_ok=True)
    slim = {stage: {k: v for k, v in res.items() if k not in ("per_question", "ids")}
            for stage, res in results.items()}
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(slim, f, indent=2)
    for stage, res in results.items():  # per-question correctness: input of python -m megatron_meml.expert_overlap
        if res.get("per_question") and res.get("ids"):
            with open(os.path.join(run_dir, f"predictions_{stage}.jsonl"), "w") as f:
                for qid, scores in zip(res["ids"], res["per_question"]):
                    for e, sc in enumerate(scores):
                        f.write(json.dumps({"id": qid, "expert": e, "correct": bool(sc > 0.5)}) + "\n")
    n = max((len(r["accuracy"]) for r in results.values()), default=0)
    strategies = sorted({k for r in results.values() for k in r.get("selection", {})},
                        key=lambda k: (STRATEGIES.index(k) if k in STRATEGIES else len(STRATEGIES), k))
    lines = _table(list(results.items()), n, strategies)
    for stage, r in results.items():
        if r.get("by_family"):
            lines += ["", f"{stage} ({r.get('num_questions', '?')} questions), per family:", ""]
            lines += _table([(f, v) for f, v in r["by_family"].items()], n, strategies, first="family")
    if any(r.get("sampled") for r in results.values()):
        lines += ["", "Sampled answers (eval.samples_per_question at eval.sample_temperature): pass@k (unbiased, "
                  "Chen et al. 2021) and maj@k per expert; ensemble = k samples of every expert (pass: some one "
                  "right; maj: vote over all N·k):", ""]
        lines += _sampled_table(list(results.items()), n)
        for stage, r in results.items():
            if r.get("sampled") and r.get("by_family"):
                lines += ["", f"{stage}, sampled, per family:", ""]
                lines += _sampled_table([(f, v) for f, v in r["by_family"].items()], n, first="family")
    with open(os.path.join(run_dir, "eval.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
