"""Reading the final answer out of a free-text response (shared by the verifiers).

Where a final answer is looked for, in priority order (the last occurrence of each form wins):
  1. ``hashes``  the text after the last ``####`` up to the end of its line (GSM8K's own format)
  2. ``boxed``   the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces)
  3. ``stated``  the text after the last "answer is" / "answer:" / "answer =" up to the end of its line
     (case-insensitive; "final answer", "the answer is:", markdown ``**`` around it are fine)
Numbers: ``-1,234.5``, ``.5``, ``3/4``; thousands commas only in groups of three; a sign only when not preceded by
a digit, letter or ``)`` (so ``16-3-4`` reads as 16, 3, 4).
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import List, Optional, Tuple

_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_DEC = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
NUMBER = re.compile(rf"(?:(?<![\w)])[-−])?{_DEC}(?:\s*/\s*{_DEC})?")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_STATED = re.compile(r"answer\W{0,3}\s*(?:is\b|:|=)[\s:*]*([^\n]*)", re.I)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_NOISE = re.compile(r"\\[!,;: ]|\\\$|\$|\*\*|\\text\{\s*|\\mathrm\{\s*|\\left|\\right")


def last_boxed(text: str, max_len: int = 1000, max_tries: int = 5) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` with balanced braces (None when absent or unbalanced). Only the last
    ``max_tries`` boxes and ``max_len`` characters after each are examined, so garbage cannot make this slow."""
    starts = [m.end() for m in _BOX.finditer(text)][-max_tries:]
    for start in reversed(starts):
        depth = 1
        for i in range(start, min(len(text), start + max_len)):
            c = text[i]
            depth += 1 if c == "{" else -1 if c == "}" else 0
            if depth == 0:
                return text[start:i]
    return None


def after_hashes(text: str) -> Optional[str]:
    found = _HASHES.findall(text)
    return found[-1].strip() if found else None


def stated_answer(text: str) -> Optional[str]:
    found = _STATED.findall(text)
    return found[-1].strip() if found else None


def candidates(text: str) -> List[Tuple[str, str]]:
    """``[(source, candidate_text), ...]`` in priority order (see module docstring); absent forms left out."""
    out = []
    for source, fn in (("hashes", after_hashes), ("boxed", last_boxed), ("stated", stated_answer)):
        value = fn(text)
        if value:
            out.append((source, value))
    return out


def clean(candidate: str) -> str:
    """Strip LaTeX spacing/dollar signs/markdown bold and surrounding punctuation from a candidate."""
    s = _LATEX_NOISE.sub("", candidate).replace("}", " ").strip()
    return s.strip(" \t:=").rstrip(".;!")


def to_fraction(number: str) -> Optional[Fraction]:
    """Exact value of a string matched by :data:`NUMBER` (None for a zero denominator)."""
    s = number.replace(",", "").replace(" ", "").replace("−", "-")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return Fraction(num) / Fraction(den) if Fraction(den) != 0 else None
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _plain_tail(tail: str) -> bool:
    """What may follow a plain number: nothing, ``%``, or unit words (letters, spaces, dots), then punctuation.
    Checked without a regex so that long garbage tails cannot cause quadratic backtracking."""
    tail = tail.rstrip(" \t\n.,;!)").lstrip()
    return tail in ("", "%") or (tail[:1].isalpha() and all(c.isalpha() or c in " ." for c in tail))


def plain_number(candidate: str) -> Optional[Fraction]:
    """The value of a candidate that is one number, possibly with a unit word or %, e.g. ``$1,080.00``,
    ``18 dollars``, ``-5.``; None when it is anything else (an expression, LaTeX, several numbers)."""
    s = clean(candidate)
    m = NUMBER.match(s)
    if not m or not _plain_tail(s[m.end():]):
        return None
    return to_fraction(m.group(0))


def first_number(text: str) -> Optional[Fraction]:
    m = NUMBER.search(clean(text))
    return to_fraction(m.group(0)) if m else None


def last_number(text: str) -> Optional[Fraction]:
    found = NUMBER.findall(text.replace("$", " "))
    return to_fraction(found[-1]) if found else None
