"""Reading the final answer out of what a model writes: the ONE place for every extraction rule of the verifiers.

**The rule: the last explicit answer statement that can be read wins.** A response is scanned for explicit answer
statements (kinds below); they are tried from the last to the first, and the first one whose text the verifier can
read (a number; an option letter or an option's value; yes/no) decides. So a model that corrects itself ("the
answer is (b) ... wait ... the answer is (c)") is judged on its final word, and a later sentence that only mentions
the answer ("the answer is clear") does not hide an earlier one. Only when no statement can be read does a
verifier fall back to a looser rule (GSM8K: the last number; StrategyQA: the polarity of the last line).

Statement kinds (``Statement.kind``; each statement's text runs to the end of its line, at most 300 characters; only
the last 64 statements of a response are tried):
  * ``hashes``   ``#### x`` (GSM8K's own format)
  * ``boxed``    ``\\boxed{x}`` / ``\\fbox{x}`` (balanced braces; the text is the box's content)
  * ``stated``   a cue, then the answer: "answer is", "answer:", "answer =", "answer would/should/will/must be"
                 (so "The final answer is", "**Answer:**", "the correct answer is", "Answer choice:"), "the correct /
                 right / best option (choice, letter) is", "I choose / pick / select / go with", "hence /
                 thus / so option c", MathQA's own "answer c" at the end of a line. An empty rest of the
                 line (a heading such as "**Final Answer**" or "Answer:") takes the next non-empty line.
  * ``postfix``  the answer before the cue: "(c) is the correct answer", "Option C is correct", "d is the answer",
                 "18 is the answer"
  * ``bare``     a line that is only an answer (verifier-specific): an option letter "(c)" / "**C**" / "c)" /
                 "C.", or a polarity "Yes." / "**No**" / "No, because ..." (a polarity word followed by
                 punctuation, so "No one ..." is not one)

Readers (each takes a statement's text, returns None when it cannot read it):
  * :func:`read_number`   first clause (cut at ", <word>" / ";" / " because " ...), after its last ``=``; one plain number
    with optional currency, unit words or ``%`` (``$1,080.00``, ``18 dollars``, ``27.675 %``); for ``stated`` /
    ``postfix`` statements the first number of the clause ("The answer is that she pays 18.").
  * :func:`read_letter`   an option letter a-e: ``(c)``, ``c)``, ``[c]``, ``c``, ``C.``, ``option c``, ``choice (b)``,
    ``letter d``, ``c because ...``. A lower-case ``a`` counts only before ``)`` / punctuation / the end ("a number"
    is not the letter a), an upper-case letter only when no lower-case word follows ("A number" is not either).
  * :func:`read_polarity` yes / no / true / false as the first word (markdown, quotes, brackets stripped).
Numbers: ``-1,234.5``, ``.5``, ``3/4``; thousands commas only in groups of three; a sign only when not preceded by
a digit, letter or ``)`` (so ``16-3-4`` reads as 16, 3, 4). Every regex here is linear in the input (bounded
repetitions, no nested quantifiers over the same characters), so a 20k-character garbage response stays fast.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional, Pattern

_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_DEC = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
NUMBER = re.compile(rf"(?:(?<![\w)])[-−])?{_DEC}(?:\s*/\s*{_DEC})?")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_DECOR = r"[ \t*_]{0,4}"
_CUE = re.compile(
    r"(?:\banswer(?:[ \t]+(?:choice|option|letter))?" + _DECOR + r"(?:\bis\b|\bwould[ \t]+be\b|\bshould[ \t]+be\b|"
    r"\bwill[ \t]+be\b|\bmust[ \t]+be\b|:|=)"
    r"|\b(?:correct|right|best)[ \t]+(?:option|choice|letter)" + _DECOR + r"(?:\bis\b|:|=)"
    r"|\bI(?:[ \t]+(?:would|will)|'ll|'d)?[ \t]+(?:choose|pick|select|go[ \t]+with)\b"
    r"|\banswer[ \t]+(?=\(?[a-eA-E]\)?[ \t]*(?:\.|\n|$))"
    r"|\b(?:hence|thus|therefore|so),?[ \t]+(?=(?:the[ \t]+)?(?:option|choice)[ \t]))", re.I)
_HEADING = re.compile(r"^[ \t#>*_]{0,8}(?:final[ \t]+)?answer[ \t*_:]{0,8}$", re.I | re.M)
_POSTFIX_CUE = re.compile(r"\bis[ \t]+(?:the[ \t]+)?(?:(?:correct|right|best)\b|(?:(?:final|correct|right)[ \t]+)?"
                          r"answer\b)", re.I)
_POSTFIX_LETTER = re.compile(r"(?:\b(?:option|choice)[ \t]+)?(\([a-eA-E]\)|\b[a-eA-E]\b)\)?[ \t*]{0,4}$", re.I)
_POSTFIX_NUMBER = re.compile(rf"({NUMBER.pattern})[ \t*]{{0,4}}$")
_LATEX_NOISE = re.compile(r"\\[!,;: ]|\\\$|\$|\*\*|__|\\text\{\s*|\\mathrm\{\s*|\\textbf\{\s*|\\left|\\right")
_CLAUSE_END = re.compile(r",\s+(?=[A-Za-z])|;|\s(?:because|since|which|as|so|but|given|where|when)\s", re.I)
_LEAD_WORDS = re.compile(r"^(?:(?:the|an?|my)\s+)?(?:(?:correct|right|best|final)\s+)?"
                         r"(?:answer\s+)?(?:option|choice|letter)?\s*[:#-]?\s*", re.I)
_LETTER = re.compile(r"^(?:\(\s*([a-eA-E])\s*\)|\[\s*([a-eA-E])\s*\]|([a-eA-E])\s*\)|([b-eB-E])(?:\s*[.:,;!](?![A-Za-z])|\s*$|\s+(?=\S))"
                     r"|([aA])\s*(?:[.:,;!](?![A-Za-z])|$)|([A])\s+(?![a-z]))")
_POLARITY_WORDS = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_LEADING_POLARITY = re.compile(r"^[\W_]{0,6}(yes|no|true|false)\b", re.I)
BARE_LETTER = re.compile(r"^[ \t>*_#]{0,6}(?:option[ \t]+|choice[ \t]+)?(?:(?:\(\s*[a-eA-E]\s*\)|[a-eA-E]\s*\))"
                         r"[^\n]{0,80}|[a-eA-E][ \t*_.!]{0,6})$", re.M | re.I)
BARE_POLARITY = re.compile(r"^[ \t>*_#\"']{0,6}(?:yes|no|true|false)(?:[ \t*_\"']{0,4}(?:[.!;:—–]|,[ \t]|[ \t]-[ \t])[^\n]*|"
                           r"[ \t*_\"']{0,4})$", re.I | re.M)


@dataclass(frozen=True)
class Statement:
    """An explicit answer statement: ``start`` its offset in the response (the order), ``kind`` (module docstring),
    ``text`` the answer it gives."""

    start: int
    kind: str
    text: str


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


MAX_STATEMENT = 300  # characters of a statement's text kept: an answer is short, and this bounds the work per statement
MAX_STATEMENTS = 64  # only the last 64 statements are tried: more is a degenerate response, and this bounds the work


def _next_line(text: str, pos: int) -> str:
    """The first non-empty line after offset ``pos`` (up to 3 lines on), stripped; "" when none."""
    for _ in range(3):
        if pos >= len(text):
            return ""
        end = _line_end(text, pos)
        line = text[pos:min(end, pos + MAX_STATEMENT)].strip()
        if clean(line):
            return line
        pos = end + 1
    return ""


def boxed_spans(text: str, max_len: int = 1000, max_tries: int = 8) -> List[Statement]:
    """The last ``max_tries`` ``\\boxed{...}`` with balanced braces (content up to ``max_len`` characters each)."""
    out = []
    for m in list(_BOX.finditer(text))[-max_tries:]:
        depth, start = 1, m.end()
        for i in range(start, min(len(text), start + max_len)):
            c = text[i]
            depth += 1 if c == "{" else -1 if c == "}" else 0
            if depth == 0:
                out.append(Statement(m.start(), "boxed", text[start:i]))
                break
    return out


def statements(text: str, bare: Optional[Pattern] = None) -> List[Statement]:
    """Every explicit answer statement of ``text`` in text order (see module docstring); ``bare`` is the
    verifier's bare-line pattern (:data:`BARE_LETTER`, :data:`BARE_POLARITY`) or None."""
    out = [Statement(m.start(), "hashes", m.group(1)[:MAX_STATEMENT].strip()) for m in _HASHES.finditer(text)]
    out += boxed_spans(text)
    for m in _CUE.finditer(text):
        rest = text[m.end():min(_line_end(text, m.end()), m.end() + MAX_STATEMENT)].strip()
        if not clean(rest):
            rest = _next_line(text, _line_end(text, m.end()) + 1)
        out.append(Statement(m.start(), "stated", rest))
    for m in _HEADING.finditer(text):
        out.append(Statement(m.start(), "stated", _next_line(text, m.end() + 1)))
    for m in _POSTFIX_CUE.finditer(text):  # the answer just before "is the correct answer" (a 40-char window)
        lo = max(0, m.start() - 40)
        window = text[lo:m.start()]
        hit = _POSTFIX_LETTER.search(window)
        if hit and hit.group(1) == "a" and not hit.group(0).lower().startswith(("option", "choice")):
            hit = None  # "... a is the answer": an article, not the option (a) / A / option a
        hit = hit or _POSTFIX_NUMBER.search(window)
        if hit:
            out.append(Statement(lo + hit.start(), "postfix", hit.group(1)))
    if bare is not None:
        out += [Statement(m.start(), "bare", m.group(0).strip()) for m in bare.finditer(text)]
    return sorted(out, key=lambda s: s.start)[-MAX_STATEMENTS:]


def clean(candidate: str) -> str:
    """Strip LaTeX spacing / dollar signs / markdown emphasis and surrounding punctuation from a candidate."""
    s = _LATEX_NOISE.sub("", candidate).replace("}", " ").strip()
    return s.strip(" \t:=*_").rstrip(".;!")


def first_clause(candidate: str) -> str:
    """The candidate up to its first clause break (", " before a word, ";", " because ", " which " ...):
    "18, because ..." -> "18"; "5 , 6" stays whole."""
    m = _CLAUSE_END.search(candidate)
    return candidate[:m.start()] if m else candidate


def drop_remark(candidate: str) -> str:
    """The candidate without one trailing parenthetical remark (at most 60 characters, not nested):
    "1 : 20 (option a)." -> "1 : 20". String operations only (a regex with a leading ``\s*`` is quadratic on long
    whitespace runs)."""
    body = candidate.rstrip(" \t\n.,;!")
    if not body.endswith(")"):
        return candidate
    start = body.rfind("(")
    if start < 0 or len(body) - start > 62 or "(" in body[start + 1:] or ")" in body[start + 1:-1]:
        return candidate
    return body[:start].rstrip()


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


_SIGN_SPACE = re.compile(r"^[-−][ \t]+(?=\d|\.\d)")
_CURRENCY = re.compile(r"^\s*(?:rs\s*\.?|s\s*\.|\$|₹|€|£|inr|usd|eur)\s*", re.I)


def _plain_tail(tail: str) -> bool:
    """What may follow a plain number: nothing, ``%``, or unit words (letters, spaces, dots), then punctuation and
    at most one trailing parenthetical remark. Checked without a regex so that long garbage tails cannot cause
    quadratic backtracking."""
    tail = tail.rstrip(" \t\n.,;!").lstrip()
    if tail.endswith(")") and "(" in tail:  # "18 (6 x 3)", "30 (option c)": a trailing parenthetical is a remark
        tail = tail[:tail.rindex("(")].rstrip(" \t.,;!")
    tail = tail.rstrip(")")
    if tail.startswith("%"):
        tail = tail[1:].lstrip()
    return tail == "" or (tail[:1].isalpha() and all(c.isalpha() or c in " ." for c in tail))


def plain_number(candidate: str) -> Optional[Fraction]:
    """The value of a candidate that is one number, possibly with a currency sign, unit words or %, e.g.
    ``$1,080.00``, ``18 dollars``, ``rs . 560``, ``27.675 %``, ``-5.``; None when it is anything else."""
    s = _SIGN_SPACE.sub("-", _CURRENCY.sub("", clean(candidate)), count=1)  # MathQA writes "- 51"
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


def read_number(st: Statement) -> Optional[Fraction]:
    """The number a statement gives (see module docstring), or None."""
    clause = first_clause(st.text) if st.kind != "boxed" else st.text
    if "=" in clause:  # "x = 18", "2 + 16 = 18": the value is what follows the last "="
        clause = clause.rsplit("=", 1)[1].strip() or clause
    value = plain_number(clause)
    if value is None and st.kind in ("stated", "postfix"):
        value = first_number(clause)
    return value


def read_letter(candidate: str) -> Optional[str]:
    """The option letter (lower case) a candidate names, or None (see module docstring)."""
    s = _LEAD_WORDS.sub("", clean(candidate), count=1) if not re.match(r"^[a-eA-E]\b", clean(candidate)) \
        else clean(candidate)
    m = _LETTER.match(s)
    return next((g.lower() for g in m.groups() if g), None) if m else None


def read_polarity(candidate: str) -> Optional[str]:
    """``"yes"`` / ``"no"`` when the candidate starts with yes / no / true / false, else None."""
    m = _LEADING_POLARITY.match(clean(candidate))
    return _POLARITY_WORDS[m.group(1).lower()] if m else None


def polarities(line: str) -> set:
    """The set of polarities (``{"yes", "no"}`` subsets) named anywhere in ``line``."""
    return {_POLARITY_WORDS[w.lower()] for w in re.findall(r"\b(yes|no|true|false)\b", line, re.I)}


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def answer_key(text: str) -> Optional[str]:
    """A dataset-agnostic normalised final answer, for comparing responses with each other (the majority vote in
    eval/accuracy.py): the last explicit statement read as a number (``"18"``, ``"1/2"``), else as an option letter
    (``"(c)"``), else as a polarity (``"yes"``), else its cleaned lower-case text; with no statement, the last
    number. None when the response states nothing."""
    found = statements(text, BARE_POLARITY)
    for st in reversed(found):
        value = read_number(st)
        if value is not None:
            return str(value)
        letter = read_letter(st.text)
        if letter is not None:
            return f"({letter})"
        polarity = read_polarity(st.text)
        if polarity is not None:
            return polarity
    if found and clean(found[-1].text):
        return clean(found[-1].text).lower()
    number = last_number(text)
    return None if number is None else str(number)


def after_hashes(text: str) -> Optional[str]:
    found = _HASHES.findall(text)
    return found[-1].strip() if found else None
