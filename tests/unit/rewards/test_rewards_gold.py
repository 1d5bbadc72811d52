"""Acceptance: every verifier scores 1.0 on every gold solution of the evaluation splits, and 0.0 once the gold
final answer in the text is replaced by a different value."""
import os
import re
import time

import pytest

from megatron_meml.data import load_dataset
from megatron_meml.rewards import verify_detailed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DATA = os.environ.get("MEML_DATA", os.path.join(REPO, "..", "shared", "data"))
needs_data = pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "gsm8k")),
                                reason=f"offline datasets not found at {DATA} (set MEML_DATA)")


def replace_last(pattern, repl, text):
    matches = list(re.finditer(pattern, text))
    assert matches, text[-120:]
    m = matches[-1]
    return text[:m.start()] + repl(m) + text[m.end():]


def gsm8k_wrong(r):
    return replace_last(r"#### .*$", lambda m: f"#### {int(r.answer) + 7}", r.solution)


def mathqa_wrong(r):
    other = next(k for k in r.meta["options"] if k != r.answer)
    return replace_last(r"The answer is \([a-e]\)", lambda m: f"The answer is ({other})", r.solution)


def strategyqa_wrong(r):
    flip = {"yes": "no", "no": "yes"}[r.answer]
    return replace_last(r"The answer is (yes|no)\.", lambda m: f"The answer is {flip}.", r.solution)


CASES = [("gsm8k", "test", 1319, gsm8k_wrong), ("mathqa", "test", 2985, mathqa_wrong),
         ("strategyqa", "dev", 229, strategyqa_wrong)]


@needs_data
@pytest.mark.parametrize("name,split,count,corrupt", CASES, ids=[c[0] for c in CASES])
def test_gold_scores_one_and_replaced_answer_scores_zero(name, split, count, corrupt):
    records = load_dataset(name, DATA, split)
    assert len(records) == count
    start = time.perf_counter()
    gold = [verify_detailed(name, r.solution, r) for r in records]
    wrong = [verify_detailed(name, corrupt(r), r) for r in records]
    elapsed = time.perf_counter() - start
    assert [r.id for r, v in zip(records, gold) if v != (1.0, "correct")] == []
    assert [r.id for r, v in zip(records, wrong) if v != (0.0, "wrong_answer")] == []
    assert elapsed < 20, f"{2 * count} verifier calls took {elapsed:.1f}s; the fast numeric path should be used"


@needs_data
def test_mathqa_by_value():
    """The correct option's value scores 1, another option's (different) value scores 0."""
    checked = 0
    for r in load_dataset("mathqa", DATA, "test"):
        opts = r.meta["options"]
        value = opts[r.answer]
        others = [v for k, v in opts.items() if k != r.answer]
        if not re.fullmatch(r"\d+(\.\d+)?", value) or value in others:
            continue
        other = next((v for v in others if re.fullmatch(r"\d+(\.\d+)?", v) and float(v) != float(value)), None)
        if other is None:
            continue
        assert verify_detailed("mathqa", f"Some work.\nThe answer is {value}", r) == (1.0, "correct"), r.id
        assert verify_detailed("mathqa", f"Some work.\nThe answer is {other}", r)[0] == 0.0, r.id
        checked += 1
    assert checked > 1000
