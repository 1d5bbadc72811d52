"""StrategyQA verifier: yes/no (true/false) against ``record.answer`` (``"yes"`` or ``"no"``).

Extraction (answers.py, the one place for the rules): the last explicit answer statement that starts with
yes/no/true/false wins ("the answer is: no", "**Answer:** Yes", "\\boxed{yes}", a line "Yes." / "**True**" /
"No, because ..."). With none, the last non-empty line when it names exactly one polarity ("The statement is
true."; both -> ``ambiguous``), else the response's first word ("Yes. Because ..."). Nothing found -> ``no_answer``.
"""
from __future__ import annotations

from ..types import Record
from .answers import BARE_POLARITY, last_line, polarities, read_polarity, statements
from .registry import AMBIGUOUS, NO_ANSWER, Verdict, judge, register_verifier


@register_verifier("strategyqa")
def verify_strategyqa(response: str, record: Record) -> Verdict:
    gold = record.answer.strip().lower()
    for st in reversed(statements(response, BARE_POLARITY)):
        found = read_polarity(st.text)
        if found is not None:
            return judge(found == gold)
    seen = polarities(last_line(response))
    if len(seen) == 2:
        return Verdict(0.0, AMBIGUOUS)
    if len(seen) == 1:
        return judge(seen.pop() == gold)
    found = read_polarity(response)
    return Verdict(0.0, NO_ANSWER) if found is None else judge(found == gold)
