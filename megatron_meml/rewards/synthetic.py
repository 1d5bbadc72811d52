"""Synthetic-task verifier: the exact integer after the last ``####`` equals ``record.answer``.

``#### 16`` and ``#### 16.`` read as 16; ``#### 16.5`` or ``#### sixteen`` are not integers (``no_answer``).
"""
from __future__ import annotations

import re

from ..types import Record
from .answers import after_hashes
from .registry import NO_ANSWER, Verdict, judge, register_verifier

_INTEGER = re.compile(r"([-+]?\d+)\s*(?:\.\s*)?")


@register_verifier("synthetic")
def verify_synthetic(response: str, record: Record) -> Verdict:
    cand = after_hashes(response)
    m = _INTEGER.fullmatch(cand) if cand is not None else None
    if m is None:
        return Verdict(0.0, NO_ANSWER)
    return judge(int(m.group(1)) == int(record.answer))
