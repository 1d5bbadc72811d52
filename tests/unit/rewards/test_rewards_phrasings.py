"""The verifiers read what models write: python -m megatron_meml.verifier_audit's phrasing corpus (>= 15 phrasings per dataset, each
filled with the gold answer and with a perturbed one) scores 0 false negatives and 0 false positives. The default
run audits every 15th record of the three evaluation splits; the full splits (gsm8k test 1319, mathqa test 2985,
strategyqa dev 229) are the `slow` twin. Plus the precise rules of rewards/answers.py and rewards/mathqa.py."""
import os

import pytest

from megatron_meml.data import load_dataset
from megatron_meml.rewards import verify, verify_detailed
from megatron_meml.rewards.answers import BARE_POLARITY, read_letter, read_polarity, statements
from megatron_meml.types import Record
from tests.conftest import DATA

from megatron_meml import verifier_audit as audit_tool

needs_data = pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "gsm8k")),
                                reason=f"offline datasets not found at {DATA} (set MEML_DATA)")
COUNTS = {"gsm8k": 1319, "mathqa": 2985, "strategyqa": 229}


def _audit(every):
    records = {d: load_dataset(d, DATA, s) for d, s in audit_tool.SPLITS.items()}
    assert {d: len(r) for d, r in records.items()} == COUNTS
    result = audit_tool.audit({d: r[::every] for d, r in records.items()}, show=2)
    failures = {(d, name): row["examples"] for d, t in result.items() for name, row in t.items()
                if row["fn"] or row["fp"]}
    assert not failures, failures
    for d, table in result.items():
        assert len(table) >= 15
        assert all(row["n"] > 0 and row["m"] > 0 for row in table.values()), d
    return result


@needs_data
def test_phrasing_corpus_no_false_negatives_or_positives_on_a_subset():
    result = _audit(every=15)
    assert sum(row["n"] for row in result["mathqa"].values()) > 3000


@needs_data
@pytest.mark.slow
def test_phrasing_corpus_full_splits():
    result = _audit(every=1)
    assert max(row["n"] for row in result["gsm8k"].values()) == 1319


@needs_data
def test_audit_cli_prints_the_table(capsys):
    assert audit_tool.main(["--data", DATA, "--every", "200", "--datasets", "strategyqa"]) == 0
    out = capsys.readouterr().out
    assert "| strategyqa | **True** | 0/2 | 0/2 |" in out and "false positives" in out


MQA = Record("m", "A price of 38 rises ... what is 30 + 0?", "c",
             "", meta={"options": {"a": "38", "b": "27.675", "c": "30", "d": "30", "e": "c + d"}})


@pytest.mark.parametrize("text,score", [
    ("The answer is (b).\nWait, let me verify ... the answer is (c).", 1),   # the last statement wins
    ("The answer is (c).\nWait, let me verify ... the answer is (b).", 0),
    ("The answer is (c). I am sure the answer is clear.", 1),               # an unreadable later one is skipped
    ("The answer is 30", 1),                                                 # value shared by c and d: correct
    ("The answer is (d)", 0),                                                # letter d: wrong, though d's value = c's
    ("The answer is 38", 0), ("38 appears in the question, so the answer is 31", 0),
    ("The answer is c + d", 0),                                              # option e's text, not the letter c
    ("The answer is a number, 30", 0),                                       # "a number" is not the letter a
    ("I think a is the answer here, the answer is (c)", 1),
    ("The answer is \\frac{60}{2}", 1),                                      # LaTeX value via math-verify
    ("answer c", 1), ("Hence, option c.", 1), ("the answer is not (b)", 0),
])
def test_mathqa_rules(text, score):
    assert verify("mathqa", text, MQA) == score


def test_mathqa_no_option_named_is_no_answer():
    assert verify_detailed("mathqa", "I could not decide.", MQA) == (0.0, "no_answer")


@pytest.mark.parametrize("text,expected", [
    ("No one knows.\nYes.", (1.0, "correct")), ("Yes, because no human can.", (1.0, "correct")),
    ("The answer is no. Wait, the answer is yes.", (1.0, "correct")), ("No human could; the answer is: no", (0.0, "wrong_answer")),
    ("Yes — because it is not true that ...", (1.0, "correct")), ("**False**", (0.0, "wrong_answer")),
])
def test_strategyqa_rules(text, expected):
    assert verify_detailed("strategyqa", text, Record("s", "q", "yes", "")) == expected


def test_readers():
    assert [read_letter(t) for t in ("(c) 30", "option C", "choice (b)", "a number", "A number", "A", "e.g. 5",
                                     "letter d", "B because")] == ["c", "c", "b", None, None, "a", None, "d", "b"]
    assert [read_polarity(t) for t in ("**Yes**", "not sure", "True.", "no")] == ["yes", None, "yes", "no"]
    kinds = [s.kind for s in statements("x\n#### 5\n\\boxed{6}\nThe answer is 7\n8 is the answer\nNo.", BARE_POLARITY)]
    assert kinds == ["hashes", "boxed", "stated", "postfix", "bare"]


@pytest.mark.parametrize("text,score", [
    ("**Final Answer**\n\n1080", 1), ("The answer is $1,080 (i.e. 2 x 540).", 1), ("1080 is the final answer.", 1),
    ("The answer is 1079. Wait, recheck: the answer is 1080.", 1), ("The answer is 1080. Wait: the answer is 1079.", 0),
    ("\\boxed{1080 \\text{ dollars}}", 1), ("Answer: - 1080", 0),
])
def test_gsm8k_rules(text, score):
    assert verify("gsm8k", text, Record("g", "q", "1080", "")) == score
