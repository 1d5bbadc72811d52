"""GSM8K verifier: numeric equivalence of the final answer with ``record.answer`` (an integer string).

The final answer is read from ``#### x``, else ``\\boxed{x}``, else "the answer is x", else the last number in the
response (see answers.py). Fast path: when the candidate is one plain number (``$1,080.00``, ``18 dollars``,
``-5.``) it is compared exactly as a Fraction; a candidate holding ``=`` is read after its last ``=``; for "the
answer is ..." sentences the first number is taken. Only a candidate that is not a plain number
(``\\frac{36}{2}``, ``2 \\cdot 9``; at most 200 characters) goes to math-verify (symbolic.py, with the per-call
timeout ``symbolic.TIMEOUT_S``); a timeout scores 0 with reason ``timeout``.
"""
from __future__ import annotations

import re

from ..types import Record
from .answers import candidates, first_number, last_number, plain_number, to_fraction
from .registry import NO_ANSWER, TIMEOUT, Verdict, judge, register_verifier
from .symbolic import symbolic_equal

_DIGIT = re.compile(r"\d")
MAX_SYMBOLIC_CHARS = 200  # a final answer longer than this is not an expression worth a sympy call


@register_verifier("gsm8k")
def verify_gsm8k(response: str, record: Record) -> Verdict:
    gold = to_fraction(record.answer.replace(",", "").strip())
    if gold is None:
        raise ValueError(f"record {record.id}: gold answer {record.answer!r} is not a number")
    for source, cand in candidates(response):
        if "=" in cand:  # "x = 18", "2 + 16 = 18": the value is what follows the last "="
            cand = cand.rsplit("=", 1)[1].strip() or cand
        value = plain_number(cand)
        if value is None and source == "stated":
            value = first_number(cand)
        if value is not None:
            return judge(value == gold)
        if not _DIGIT.search(cand) or len(cand) > MAX_SYMBOLIC_CHARS:
            continue
        same = symbolic_equal(record.answer, cand)
        return Verdict(0.0, TIMEOUT) if same is None else judge(same)
    value = last_number(response)
    return Verdict(0.0, NO_ANSWER) if value is None else judge(value == gold)
