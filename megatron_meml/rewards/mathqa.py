"""MathQA verifier: the chosen option, by letter or by value, against ``record.answer`` (a letter a-e).

Extraction (answers.py, the one place for the rules): **the last explicit answer statement that names an option
wins** — by letter ("The answer is (c)", "the correct option is c", "so the answer is choice (b)", "I choose option
d", "**Answer:** C", "Option C is correct", a last line "(c) 30") or by value ("the answer is 27.675 %", "rs. 560",
"data inadequate"). A statement that names no option (a number no option has, "the answer is clear") is skipped and
the one before it is tried. Precisely, for one statement's text:
  1. text that is not one number and equals an option's text (lower case, whitespace and trailing punctuation
     removed), as a whole, without a trailing parenthetical remark, or up to its first clause break -> that option,
     so options such as "c + d", "e = 121" or "sqrt ( 2.88 / pi )" are not read as a letter or cut short;
  2. else a leading option letter (answers.read_letter) -> that letter;
  3. else the text (a trailing parenthetical remark dropped), or else its first clause, as one number (currency,
     units, % and "- 51" allowed) -> every option with that value; LaTeX
     (``\\frac{15}{8}``) is compared with math-verify; else as text against every option's text.
Scoring: by letter, 1 iff the letter is the gold letter (even when another option has the same value); by value,
1 iff the gold option is among the options with that value (so when two options coincide, naming the value is
correct), 0 otherwise. The question text is never read, so an option value that also appears in the question
cannot match by accident.
"""
from __future__ import annotations

import re
from typing import Dict, List

from ..types import Record
from .answers import BARE_LETTER, clean, drop_remark, first_clause, plain_number, read_letter, statements
from .registry import NO_ANSWER, Verdict, judge, register_verifier
from .symbolic import symbolic_equal

_SPACE = re.compile(r"\s+")


def _text(value: str) -> str:
    """Option text for comparison: lower case, no whitespace, no trailing punctuation ("2 : 3" = "2:3")."""
    return _SPACE.sub("", clean(value).lower()).strip(".,;:!")


class Options:
    """A record's options with their comparison forms computed once per verification (text, number)."""

    def __init__(self, options: Dict[str, str]):
        self.raw = options
        self.text = {k: _text(v) for k, v in options.items()}
        self.number = {k: plain_number(v) for k, v in options.items()}


def match_value(candidate: str, options) -> List[str]:
    """Letters of the options whose value equals ``candidate`` (rule 3 of the module docstring)."""
    opts = options if isinstance(options, Options) else Options(options)
    candidate = drop_remark(candidate) or candidate
    clause = clean(candidate)
    num = plain_number(clause)
    if num is None:
        clause = clean(first_clause(candidate))
        num = plain_number(clause)
    if num is not None:
        return [k for k, v in opts.number.items() if v == num]
    text = _text(clause)
    same = [k for k, v in opts.text.items() if text and v == text]
    latex = candidate.strip().rstrip(".")
    if same or "\\" not in latex or not re.search(r"\d", latex) or len(latex) > 200:
        return same
    return [k for k, v in opts.number.items() if v is not None and symbolic_equal(str(v), latex)]


def read_option(candidate: str, options) -> List[str]:
    """The option letters a statement's text names (empty when it names none)."""
    opts = options if isinstance(options, Options) else Options(options)
    for text in (candidate, drop_remark(candidate), first_clause(candidate)):
        whole = _text(text)
        if whole and plain_number(text) is None:
            exact = [k for k, v in opts.text.items() if v == whole]
            if exact:
                return exact
    letter = read_letter(candidate)
    if letter is not None and letter in opts.raw:
        return [letter]
    return match_value(candidate, opts)


@register_verifier("mathqa")
def verify_mathqa(response: str, record: Record) -> Verdict:
    gold = record.answer.strip().lower()
    options = Options(record.meta.get("options", {}))
    for st in reversed(statements(response, BARE_LETTER)):
        letters = read_option(st.text, options)
        if letters:
            by_letter = len(letters) == 1 and read_letter(st.text) == letters[0]
            return judge(letters == [gold] if by_letter else gold in letters)
    return Verdict(0.0, NO_ANSWER)
