"""StrategyQA verifier: yes/no (true/false) against ``record.answer`` (``"yes"`` or ``"no"``).

The final answer is read from ``#### x`` / ``\\boxed{x}`` / "the answer is x" (see answers.py) when it starts with
yes/no/true/false; else from the last non-empty line when it holds exactly one polarity (both -> ``ambiguous``);
else from the response's first word ("Yes. Because ..."). Nothing found -> ``no_answer``.
"""
from __future__ import annotations

import re
from typing import Optional

from ..types import Record
from .answers import candidates, clean
from .registry import AMBIGUOUS, NO_ANSWER, Verdict, judge, register_verifier

_POLARITY = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_LEADING = re.compile(r"^\W*(yes|no|true|false)\b", re.I)
_ANY = re.compile(r"\b(yes|no|true|false)\b", re.I)


def read_polarity(text: str) -> Optional[str]:
    m = _LEADING.match(clean(text))
    return _POLARITY[m.group(1).lower()] if m else None


@register_verifier("strategyqa")
def verify_strategyqa(response: str, record: Record) -> Verdict:
    gold = record.answer.strip().lower()
    for _, cand in candidates(response):
        found = read_polarity(cand)
        if found is not None:
            return judge(found == gold)
    lines = [ln for ln in response.strip().splitlines() if ln.strip()]
    seen = {_POLARITY[w.lower()] for w in _ANY.findall(lines[-1])} if lines else set()
    if len(seen) == 2:
        return Verdict(0.0, AMBIGUOUS)
    if len(seen) == 1:
        return judge(seen.pop() == gold)
    found = read_polarity(response)
    return Verdict(0.0, NO_ANSWER) if found is None else judge(found == gold)
