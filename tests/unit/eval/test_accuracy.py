"""Per-expert greedy accuracy and the majority vote, on a scripted generator."""
import json

from megatron_meml.eval.accuracy import answer_key, evaluate, majority_index, write_eval
from megatron_meml.types import Record, Rollout

RECORDS = [Record(id=f"q{i}", question=f"{i}+{i}?", answer=str(2 * i), solution="") for i in range(3)]
# scripted answers per (question, expert): expert 0 always right, expert 1 right on q0, expert 2 right on q0, q1
ANSWERS = {("q0", 0): 0, ("q0", 1): 0, ("q0", 2): 0,
           ("q1", 0): 2, ("q1", 1): 5, ("q1", 2): 2,
           ("q2", 0): 4, ("q2", 1): 7, ("q2", 2): 7}


def fake_generate(requests):
    return [Rollout(request=r, response_ids=[], logprobs=[], text=f"so #### {ANSWERS[(r.qid, r.expert)]}")
            for r in requests]


def reward(text, record):
    return float(answer_key(text) == record.answer)


def test_accuracy_and_majority_vote(tmp_path):
    res = evaluate(fake_generate, lambda r, e: [e], RECORDS, 3, reward)
    assert res["accuracy"] == [1.0, 1 / 3, 2 / 3]
    assert abs(res["mean_accuracy"] - 2 / 3) < 1e-12
    # q0: all agree (right); q1: 2 vs 5 -> 2 (right); q2: 7 twice beats 4 -> wrong
    assert abs(res["majority_vote"] - 2 / 3) < 1e-12
    write_eval({"after_mef": res}, str(tmp_path))
    saved = json.load(open(tmp_path / "eval.json"))
    assert saved["after_mef"]["accuracy"] == [1.0, 1 / 3, 2 / 3] and "per_question" not in saved["after_mef"]
    assert "| after_mef | 1.000 | 0.333 | 0.667 | 0.667 | 0.667 |" in (tmp_path / "eval.md").read_text()
    preds = [json.loads(line) for line in open(tmp_path / "predictions_after_mef.jsonl")]
    assert len(preds) == 9 and preds[3] == {"id": "q1", "expert": 0, "correct": True}
    assert sum(p["correct"] for p in preds if p["expert"] == 1) == 1


def test_majority_ties_go_to_lowest_index_and_keys_normalise():
    assert majority_index(["#### 3", "#### 4", "#### 4", "#### 3"]) == 0
    assert majority_index(["no answer", "#### 5"]) == 1
    assert answer_key("The answer is 1,000.") == answer_key("#### 1,000")
    assert answer_key("I got 12 apples and 7 pears") == "7"
