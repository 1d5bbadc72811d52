"""StrategyQA (Geva et al. 2021): yes/no questions needing implicit multi-step reasoning.

File format: one JSON array of objects ``{"qid", "term", "description", "question", "answer": bool,
"facts": [str], "decomposition": [str], "evidence": [...]}``. The offline ``train`` (2,061) / ``dev`` (229) files
are the authors' unofficial 90/10 split of the official train set; the official test set has no answers.

Record produced:
  * ``id``        the ``qid``
  * ``question``  the question text
  * ``answer``    ``"yes"`` or ``"no"``
  * ``solution``  the facts, then the decomposition steps, one per line, then ``The answer is yes.`` / ``no.``
  * ``meta``      ``{"term", "facts", "decomposition", "split"}``
"""
from __future__ import annotations

from typing import List, Tuple

from ..types import Record
from .errors import LoadSummary, RecordError
from .jsonio import iter_json_array, read_items

SPLITS = {"train": "train.json", "dev": "dev.json"}


def answer_line(answer: str) -> str:
    """The final line of a gold solution, in the form the strategyqa verifier reads."""
    return f"The answer is {answer}."


def _str_list(obj: dict, key: str) -> List[str]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"field {key!r} must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def convert(obj: dict, index: int, split: str) -> Record:
    for key, tp in (("qid", str), ("question", str), ("answer", bool)):
        if key not in obj:
            raise RecordError(f"missing field {key!r}")
        if not isinstance(obj[key], tp):
            raise RecordError(f"field {key!r} must be a {tp.__name__}, got {type(obj[key]).__name__}")
    facts, steps = _str_list(obj, "facts"), _str_list(obj, "decomposition")
    answer = "yes" if obj["answer"] else "no"
    solution = "\n".join(facts + steps + [answer_line(answer)])
    return Record(id=obj["qid"], question=obj["question"].strip(), answer=answer, solution=solution,
                  meta={"term": obj.get("term", ""), "facts": facts, "decomposition": steps, "split": split})


def load_strategyqa(path: str, split: str, on_bad_record: str = "error") -> Tuple[List[Record], LoadSummary]:
    """Records of one StrategyQA JSON file (``path`` is the file)."""
    return read_items(path, iter_json_array(path), lambda obj, i: convert(obj, i, split), on_bad_record)
