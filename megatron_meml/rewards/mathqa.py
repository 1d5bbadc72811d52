"""MathQA verifier: the chosen option letter, or the option's value, against ``record.answer`` (a letter a-e).

The final answer is read from ``#### x`` / ``\\boxed{x}`` / "the answer is x" (see answers.py), else from a last
line holding only a letter. A candidate is a letter when it is ``(c)``, ``c)``, ``option c`` or the letter alone
(``c``, ``C.``); "a number" is not the letter a. Otherwise it is matched by value against
``record.meta["options"]``: exactly as numbers when both sides are one number (``rs . 560`` = ``560``,
``15 / 8 ohms`` = ``1.875``), else as lower-cased text with spaces and punctuation removed. A value equal to the
correct option's value scores 1 even when another option has the same value.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional

from ..types import Record
from .answers import candidates, clean, plain_number
from .registry import NO_ANSWER, Verdict, judge, register_verifier

_LETTER = re.compile(r"^(?:option\s*|choice\s*)?(?:\(\s*([a-e])\s*\)|([a-e])\s*\)|([a-e])\s*(?:[.,;:!]\s*)?$)", re.I)
_CURRENCY = re.compile(r"^\s*(?:rs\s*\.?|s\s*\.|\$|₹|inr|usd)\s*", re.I)
_NON_WORD = re.compile(r"[\W_]+")


def read_letter(candidate: str) -> Optional[str]:
    m = _LETTER.match(clean(candidate))
    return next((g.lower() for g in m.groups() if g), None) if m else None


def _number(value: str):
    return plain_number(_CURRENCY.sub("", value))


def match_value(candidate: str, options: Dict[str, str]) -> List[str]:
    """Letters of the options whose value equals ``candidate`` (see module docstring)."""
    num = _number(candidate)
    if num is not None:
        return [k for k, v in options.items() if _number(v) == num]
    text = _NON_WORD.sub("", clean(candidate).lower())
    return [k for k, v in options.items() if text and _NON_WORD.sub("", v.lower()) == text]


@register_verifier("mathqa")
def verify_mathqa(response: str, record: Record) -> Verdict:
    gold = record.answer.strip().lower()
    options = record.meta.get("options", {})
    for _, cand in candidates(response):
        letter = read_letter(cand)
        if letter is not None:
            return judge(letter == gold)
        letters = match_value(cand, options)
        if letters:
            return judge(gold in letters)
    lines = [ln for ln in response.strip().splitlines() if ln.strip()]
    letter = read_letter(lines[-1]) if lines else None
    return Verdict(0.0, NO_ANSWER) if letter is None else judge(letter == gold)
