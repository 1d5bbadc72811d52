"""GSM8K (Cobbe et al. 2021): grade-school math word problems with integer answers.

File format (JSONL, one object per line): ``{"question": str, "answer": str}`` where ``answer`` is a worked
solution with ``<<calc>>`` calculator annotations and a final line ``#### <number>`` (numbers >= 1000 may carry
thousands commas, e.g. ``#### 1,080``).

Record produced:
  * ``id``        ``gsm8k-<split>-<k>`` with k the 0-based ordinal of the line's record in the file
  * ``question``  the question text
  * ``answer``    the text after ``#### `` with commas removed (``"1080"``)
  * ``solution``  the worked text with every ``<<...>>`` annotation removed, keeping the ``#### x`` line
  * ``meta``      ``{"split": split}``
"""
from __future__ import annotations

import re
from typing import List, Tuple

from ..types import Record
from .errors import LoadSummary, RecordError
from .jsonio import iter_jsonl, read_items

SPLITS = {"train": "train.jsonl", "test": "test.jsonl"}
_CALC = re.compile(r"<<[^>]*>>")


def clean_solution(text: str) -> str:
    """Remove the ``<<a*b=c>>`` calculator annotations from a GSM8K worked solution."""
    return _CALC.sub("", text)


def final_answer(text: str) -> str:
    """The gold answer of a GSM8K solution: the text after the last ``####``, commas removed."""
    lines = [ln for ln in text.strip().splitlines() if "####" in ln]
    if not lines:
        raise RecordError("field 'answer': no '#### <number>' final line")
    value = lines[-1].split("####")[-1].replace(",", "").strip()
    if not re.fullmatch(r"-?\d+(\.\d+)?", value):
        raise RecordError(f"field 'answer': final answer {value!r} is not a number")
    return value


def convert(obj: dict, index: int, split: str) -> Record:
    for key in ("question", "answer"):
        if key not in obj:
            raise RecordError(f"missing field {key!r}")
        if not isinstance(obj[key], str):
            raise RecordError(f"field {key!r} must be a string, got {type(obj[key]).__name__}")
    return Record(id=f"gsm8k-{split}-{index}", question=obj["question"].strip(), answer=final_answer(obj["answer"]),
                  solution=clean_solution(obj["answer"]).strip(), meta={"split": split})


def load_gsm8k(path: str, split: str, on_bad_record: str = "error") -> Tuple[List[Record], LoadSummary]:
    """Records of one GSM8K JSONL file (``path`` is the file)."""
    return read_items(path, iter_jsonl(path), lambda obj, i: convert(obj, i, split), on_bad_record)
