"""Verifier behaviour: answer forms, guards (garbage / empty / huge / non-text), the registry contract, and the
symbolic path's timeout inside and outside the main thread."""
import random
import string
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from megatron_meml.rewards import (MAX_CHARS, REASONS, get_verifier, register_verifier, symbolic_equal,
                                   verifier_names, verify, verify_detailed)
from megatron_meml.rewards import symbolic
from megatron_meml.rewards.registry import Verdict
from megatron_meml.types import Record

GSM = Record("g", "q", "1080", "")
MQA = Record("m", "q", "b", "", meta={"options": {"a": "38", "b": "rs . 27.675", "c": "30", "d": "15 / 8 ohms",
                                                  "e": "none of these"}})
SQA = Record("s", "q", "yes", "")
SYN = Record("y", "q", "16", "", meta={"steps": [("=", 16)]})
RECORDS = {"gsm8k": GSM, "mathqa": MQA, "strategyqa": SQA, "synthetic": SYN}


@pytest.mark.parametrize("text,score", [
    ("#### 1,080", 1), ("#### $1,080.00", 1), ("The answer is $1,080.", 1), ("so \\boxed{1080} dollars", 1),
    ("\\boxed{\\$1,080}", 1), ("Final answer: **1080**", 1), ("x = 3, then 1080", 1), ("1080 then 3", 0),
    ("#### 1080 dollars", 1), ("The answer is 2 + 1078 = 1080", 1), ("The answer is that she pays 1080.", 1),
    ("#### 1080.5", 0), ("#### -1080", 0), ("\\boxed{\\frac{2160}{2}}", 1), ("\\boxed{2 \\cdot 540}", 1),
    ("\\boxed{\\frac{1}{2}}", 0), ("no numbers here", 0),
])
def test_gsm8k_answer_forms(text, score):
    assert verify("gsm8k", text, GSM) == score


@pytest.mark.parametrize("text,score", [
    ("The answer is (b)", 1), ("answer : b", 1), ("Answer: B) 27.675", 1), ("The answer is 27.675", 1),
    ("The answer is rs. 27.675", 1), ("The answer is 1.875", 0), ("work\n(b)", 1), ("\\boxed{B}", 1),
    ("The answer is (c)", 0), ("The answer is a number", 0), ("the answer is none of these", 0),
])
def test_mathqa_answer_forms(text, score):
    assert verify("mathqa", text, MQA) == score


@pytest.mark.parametrize("text,expected", [
    ("The answer is yes.", (1.0, "correct")), ("Yes. Because ...", (1.0, "correct")),
    ("So in the end: True", (1.0, "correct")), ("\\boxed{no}", (0.0, "wrong_answer")),
    ("maybe yes or no", (0.0, "ambiguous")), ("hmm", (0.0, "no_answer")),
])
def test_strategyqa_answer_forms(text, expected):
    assert verify_detailed("strategyqa", text, SQA) == expected


@pytest.mark.parametrize("text,expected", [
    ("a=3+13=16; #### 16", (1.0, "correct")), ("#### 16.", (1.0, "correct")), ("#### 17", (0.0, "wrong_answer")),
    ("#### 16.5", (0.0, "no_answer")), ("16", (0.0, "no_answer")),
])
def test_synthetic_exact_integer(text, expected):
    assert verify_detailed("synthetic", text, SYN) == expected


@pytest.mark.parametrize("name", ["gsm8k", "mathqa", "strategyqa", "synthetic"])
def test_guards_never_raise(name):
    record = RECORDS[name]
    assert verify_detailed(name, "", record) == (0.0, "empty")
    assert verify_detailed(name, "   \n", record) == (0.0, "empty")
    assert verify_detailed(name, None, record) == (0.0, "not_text")
    assert verify_detailed(name, b"#### 16", record) == (0.0, "not_text")
    assert verify_detailed(name, "#### 16 " + "x" * MAX_CHARS, record) == (0.0, "too_long")
    rng = random.Random(0)
    for _ in range(200):
        garbage = "".join(rng.choice(string.printable + "\\{}$#…ü") for _ in range(rng.randint(1, 300)))
        score, reason = verify_detailed(name, garbage, record)
        assert score in (0.0, 1.0) and reason in REASONS


@pytest.mark.parametrize("name", ["gsm8k", "mathqa", "strategyqa", "synthetic"])
def test_long_garbage_is_fast(name):
    """Inputs just under the length cap that make naive regexes backtrack quadratically stay fast."""
    record = RECORDS[name]
    for head, unit, tail in [("5", " ", "." * 9000 + "#"), ("#### 16", " ", "x"), ("The answer is a", " ", "#"),
                             ("#### ", "{", "1"), ("\\boxed{", "\\boxed{", ""), ("", "1,", "x"), ("(a", " .", "("),
                             ("#### 16", " ", "(x)"), ("The answer is (", " ", ")"), ("answer: 5,", " ", "x"),
                             ("Yes", " ", "-"), ("is the answer", " is the answer", "")]:
        text = (head + unit * 19000)[:19000 - len(tail)] + tail
        start = time.perf_counter()
        score, reason = verify_detailed(name, text, record)
        assert time.perf_counter() - start < 2.0, (head, unit, tail)  # quadratic backtracking takes minutes
        assert reason in REASONS


def test_registry_contract():
    assert set(verifier_names()) >= {"gsm8k", "mathqa", "strategyqa", "synthetic"}
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):
        verify("nope", "x", GSM)
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("gsm8k")(lambda response, record: Verdict(1.0, "correct"))

    @register_verifier("test-broken")
    def broken(response, record):
        raise RuntimeError("bug")

    assert get_verifier("test-broken") is broken
    assert verify_detailed("test-broken", "anything", GSM) == (0.0, "internal_error")


def test_symbolic_path_off_the_main_thread():
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda t: verify("gsm8k", t, GSM), ["\\boxed{\\frac{2160}{2}}", "\\boxed{2^{3}}"]))
    assert results == [1.0, 0.0]


@pytest.mark.parametrize("path", ["in-process", "helper-process", "worker-thread"])
def test_symbolic_timeout(path):
    """A comparison sympy cannot finish in time gives None (scored 0, reason `timeout`) on every path: math-verify's
    own signal timeout in the main thread, the helper process, and a call from a worker thread."""
    args = ("18", "9^{9^{9^{9}}}", 1)
    if path == "in-process":
        assert symbolic._compare(*args) is None and symbolic._compare("18", "\\frac{36}{2}", 1) is True
    elif path == "helper-process":
        assert symbolic._HELPER.compare(*args) is None and symbolic._HELPER.compare("18", "\\frac{36}{2}", 1)
    else:
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(symbolic_equal, *args).result() is None


def test_timeout_scores_zero_with_reason(monkeypatch):
    monkeypatch.setattr(symbolic, "TIMEOUT_S", 1)
    assert verify_detailed("gsm8k", "\\boxed{9^{9^{9^{9}}}}", GSM) == (0.0, "timeout")
