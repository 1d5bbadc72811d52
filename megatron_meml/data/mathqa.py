"""MathQA (Amini et al. 2019): multiple-choice math word problems with five options a-e.

File format: one JSON array of objects ``{"Problem", "Rationale", "options", "correct", "annotated_formula",
"linear_formula", "category"}``. ``options`` is usually one string ``"a ) 38 , b ) 27.675 , c ) 30 , ..."``; about
2% of records hold the Python repr of a list instead (``"['a ) 2 : 3', 'b ) 4 : 5', ...]"``) and a JSON list is
accepted too. ``correct`` is a letter a-e.

Splits: ``train`` (29,837, train.json), ``dev`` (4,475), ``test`` (2,985), ``challenge_test`` (604).
python -m megatron_meml.prepare_data writes train.json from the Hugging Face copy; an offline copy without it (the shared
snapshot has none) loads ``dev`` for ``train`` (same records, same ids) and logs a warning saying so.

Record produced:
  * ``id``        ``mathqa-<split>-<k>`` (k = 0-based ordinal of the element in the array)
  * ``question``  the problem, then a line ``Options: a) 38, b) 27.675, c) 30, d) data inadequate, e) none of these``
  * ``answer``    the correct letter (``"a"``)
  * ``solution``  the gold Rationale (enclosing quotes removed) then the line ``The answer is (a)``, the form the
                  mathqa verifier reads
  * ``meta``      ``{"options": {"a": "38", ...}, "category": str, "split": split}`` — verifiers match by value too
"""
from __future__ import annotations

import ast
import logging
import os
import re
from typing import Dict, List, Tuple

from ..types import Record
from .errors import LoadSummary, RecordError
from .jsonio import iter_json_array, read_items

log = logging.getLogger(__name__)

SPLITS = {"dev": "dev.json", "test": "test.json", "challenge_test": "challenge_test.json",
          "train": ("train.json", "dev.json")}  # the first file found; dev.json stands in for a missing train.json
LETTERS = "abcde"
_ITEM = re.compile(r"^\s*([a-e])\s*\)\s*(.*?)\s*$", re.S)


def _split_option_string(text: str) -> Dict[str, str]:
    """``"a ) 38 , b ) 27.675 , ..."`` -> ``{"a": "38", "b": "27.675", ...}``. Markers are searched in order
    (``a )`` at the start, then ``, b )``, ...) so values may contain commas (``15,600``) and parentheses."""
    m = re.match(r"\s*a\s*\)\s*", text)
    if not m:
        raise RecordError(f"field 'options': cannot parse {text[:80]!r}")
    out, pos, letter = {}, m.end(), "a"
    for nxt in LETTERS[1:]:
        m = re.compile(rf",\s*{nxt}\s*\)\s*").search(text, pos)
        if not m:
            break
        out[letter] = text[pos:m.start()].strip()
        pos, letter = m.end(), nxt
    out[letter] = text[pos:].strip()
    return out


def parse_options(options) -> Dict[str, str]:
    """Parse a MathQA ``options`` field (either format, see module docstring) into ``{letter: value}``."""
    if isinstance(options, str) and options.strip().startswith("["):
        try:
            options = ast.literal_eval(options.strip())
        except (ValueError, SyntaxError):
            raise RecordError(f"field 'options': cannot parse list {options[:80]!r}") from None
    if isinstance(options, str):
        out = _split_option_string(options)
    elif isinstance(options, list) and all(isinstance(o, str) for o in options):
        out = {}
        for o in options:
            m = _ITEM.match(o)
            if not m:
                raise RecordError(f"field 'options': cannot parse option {o!r}")
            out[m.group(1)] = m.group(2)
    else:
        raise RecordError(f"field 'options' must be a string or a list of strings, got {type(options).__name__}")
    if len(out) < 2:
        raise RecordError(f"field 'options': found {len(out)} option(s) in {str(options)[:80]!r}")
    return out


def format_question(problem: str, options: Dict[str, str]) -> str:
    return problem.strip() + "\nOptions: " + ", ".join(f"{k}) {v}" for k, v in options.items())


def answer_line(letter: str) -> str:
    """The final line of a gold solution, in the form the mathqa verifier reads."""
    return f"The answer is ({letter})"


def convert(obj: dict, index: int, split: str) -> Record:
    for key in ("Problem", "Rationale", "options", "correct"):
        if key not in obj:
            raise RecordError(f"missing field {key!r}")
    for key in ("Problem", "Rationale", "correct"):
        if not isinstance(obj[key], str):
            raise RecordError(f"field {key!r} must be a string, got {type(obj[key]).__name__}")
    options = parse_options(obj["options"])
    correct = obj["correct"].strip().lower()
    if correct not in options:
        raise RecordError(f"field 'correct': {obj['correct']!r} is not one of the options {sorted(options)}")
    rationale = obj["Rationale"].strip()
    if len(rationale) >= 2 and rationale[0] == rationale[-1] == '"':
        rationale = rationale[1:-1].strip()
    return Record(id=f"mathqa-{split}-{index}", question=format_question(obj["Problem"], options), answer=correct,
                  solution=f"{rationale}\n{answer_line(correct)}",
                  meta={"options": options, "category": obj.get("category", ""), "split": split})


def load_mathqa(path: str, split: str, on_bad_record: str = "error") -> Tuple[List[Record], LoadSummary]:
    """Records of one MathQA JSON file (``path`` is the file)."""
    if split == "train" and os.path.basename(path) == "dev.json":
        log.warning("mathqa: no train.json next to %s; split 'train' loads dev.json (4,475 records, ids "
                    "mathqa-dev-*). Use split 'dev' to say so explicitly, or write train.json with "
                    "python -m megatron_meml.prepare_data.", path)
        split = "dev"
    return read_items(path, iter_json_array(path), lambda obj, i: convert(obj, i, split), on_bad_record)
