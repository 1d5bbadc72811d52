"""GSM8K verifier: numeric equivalence of the final answer with ``record.answer`` (an integer string).

Extraction (answers.py, the one place for the rules): the last explicit answer statement whose text reads as a
number wins (``#### x``, ``\\boxed{x}``, "the answer is x", "**Answer:** $x.", "x is the answer", ...); with no
readable statement, the last number of the response. A number is compared exactly as a Fraction (``$1,080.00``,
``18 dollars``, ``2 + 16 = 18`` all read 18). A statement that is not a plain number but holds a digit
(``\\frac{36}{2}``, ``2 \\cdot 9``; at most 200 characters) goes to math-verify (symbolic.py, per-call timeout
``symbolic.TIMEOUT_S``); a timeout scores 0 with reason ``timeout``.
"""
from __future__ import annotations

import re

from ..types import Record
from .answers import last_number, read_number, statements, to_fraction
from .registry import NO_ANSWER, TIMEOUT, Verdict, judge, register_verifier
from .symbolic import symbolic_equal

_DIGIT = re.compile(r"\d")
MAX_SYMBOLIC_CHARS = 200  # a final answer longer than this is not an expression worth a sympy call


@register_verifier("gsm8k")
def verify_gsm8k(response: str, record: Record) -> Verdict:
    gold = to_fraction(record.answer.replace(",", "").strip())
    if gold is None:
        raise ValueError(f"record {record.id}: gold answer {record.answer!r} is not a number")
    for st in reversed(statements(response)):
        value = read_number(st)
        if value is not None:
            return judge(value == gold)
        cand = st.text.strip()
        if st.kind in ("boxed", "hashes") and _DIGIT.search(cand) and len(cand) <= MAX_SYMBOLIC_CHARS:
            same = symbolic_equal(record.answer, cand)
            return Verdict(0.0, TIMEOUT) if same is None else judge(same)
    value = last_number(response)
    return Verdict(0.0, NO_ANSWER) if value is None else judge(value == gold)
