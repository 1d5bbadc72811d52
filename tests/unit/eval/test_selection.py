"""Label-free expert selection: vote (ties by confidence), logprob, agreement; evaluate() reports them beside the
best single expert and the oracle, overall and per family."""
import math

import pytest

from megatron_meml.eval.accuracy import answer_key, evaluate
from megatron_meml.eval.selection import STRATEGIES, mean_logprob, select
from megatron_meml.types import Record, Rollout


def test_vote_logprob_agreement_on_one_question():
    keys, conf = ["7", "9", "9"], [-0.1, -2.0, -1.5]
    assert select("vote", keys, conf) == 2            # two voters for 9; its more confident voter answers
    assert select("logprob", keys, conf) == 0          # expert 0 is most certain
    # agreement: 7 scores e^-0.1 = 0.905, 9 scores e^-2 + e^-1.5 = 0.359 -> the confident lone answer wins
    assert select("agreement", keys, conf) == 0
    assert select("agreement", ["7", "9", "9"], [-1.0, -0.2, -0.3]) == 1
    # a 1-1-1 split: vote breaks the tie by confidence, never by index
    assert select("vote", ["1", "2", "3"], [-3.0, -0.5, -1.0]) == 1
    # experts without an answer never win a vote; nobody answering falls back on confidence
    assert select("vote", [None, None, "4"], [0.0, 0.0, -5.0]) == 2
    assert select("vote", [None, None, None], [-3.0, -1.0, -2.0]) == 1
    assert mean_logprob([]) == -math.inf and mean_logprob([-1.0, -3.0]) == -2.0
    with pytest.raises(ValueError, match="eval.selection"):
        select("oracle", keys, conf)


RECS = [Record(id=f"q{i}", question="", answer=str(i), solution="", meta={"family": "ab"[i % 2]}) for i in range(4)]
# (answer, mean log-prob) per question and expert: e0 right on q0, q1; e1 right on q1, q2; e2 right on q3 only
SCRIPT = {"q0": [(0, -0.1), (5, -0.9), (6, -0.8)], "q1": [(1, -0.2), (1, -0.3), (8, -0.1)],
          "q2": [(9, -0.5), (2, -0.6), (9, -0.4)], "q3": [(7, -0.9), (7, -0.8), (3, -0.05)]}


def fake_generate(requests):
    out = []
    for r in requests:
        a, c = SCRIPT[r.qid][r.expert]
        out.append(Rollout(request=r, response_ids=[1, 2], logprobs=[c, c], text=f"#### {a}"))
    return out


def test_evaluate_reports_selection_best_expert_oracle_and_families():
    res = evaluate(fake_generate, lambda r, e: [e], RECS, 3, lambda t, r: float(answer_key(t) == r.answer))
    assert res["accuracy"] == [0.5, 0.5, 0.25]
    assert res["best_expert"] == {"expert": 0, "accuracy": 0.5}
    assert res["oracle"] == 1.0
    # vote: q0 1-1-1 tie -> most confident e0 (right); q1 1,1 (right); q2 9,9 (wrong); q3 7,7 (wrong)
    # logprob: q0 e0 right, q1 e2 wrong, q2 e2 wrong, q3 e2 right
    # agreement: q0 0 (.90 vs .41/.45), q1 1 (1.56 vs .90), q2 9 (1.28 vs .55, wrong), q3 3 (.95 vs .41+.45 = .86)
    assert res["selection"] == {"vote": 0.5, "logprob": 0.5, "agreement": 0.75}
    assert set(res["selection"]) == set(STRATEGIES)
    assert res["by_family"]["a"]["accuracy"] == [0.5, 0.5, 0.0] and res["by_family"]["b"]["oracle"] == 1.0
    assert res["by_family"]["b"]["selection"]["logprob"] == 0.5
