"""Bad-record handling shared by every loader: the ``DataError`` exception and the skip summary.

A bad record is a malformed JSON line (or array element), a record with a missing or mistyped field, or a record
with bytes that are not UTF-8. With ``on_bad_record="error"`` the first one raises ``DataError`` naming the file
and line (``path:line: reason``). With ``on_bad_record="skip"`` it is skipped and counted in a
:class:`LoadSummary`, which the caller logs or returns — never silently.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

log = logging.getLogger(__name__)

ON_BAD_RECORD = ("error", "skip")


class DataError(ValueError):
    """A bad record or data file. ``str(e)`` is ``"<path>:<line>: <reason>"`` (line omitted when unknown)."""

    def __init__(self, path: str, line: Optional[int], reason: str):
        self.path, self.line, self.reason = path, line, reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


class RecordError(ValueError):
    """Raised by a record converter for a record it cannot use; the reader adds the file and line."""


@dataclass
class LoadSummary:
    """What a load kept and skipped. ``reasons`` counts skips by short reason (the
    reason up to its first ``:`` or `` at ``, e.g. ``malformed JSON``, ``missing field 'answer'``); ``examples`` keeps the first few
    full messages (``path:line: reason``) so a log names where to look."""

    path: str
    loaded: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: List[str] = field(default_factory=list)
    max_examples: int = 5

    def add_skip(self, err: DataError) -> None:
        self.skipped += 1
        self.reasons[re.split(r" at |:", err.reason)[0]] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    def to_dict(self) -> Dict[str, object]:
        return {"path": self.path, "loaded": self.loaded, "skipped": self.skipped,
                "reasons": dict(self.reasons), "examples": list(self.examples)}

    def log(self, logger: logging.Logger = log) -> None:
        """Warn once when records were skipped (nothing is logged for a clean load)."""
        if self.skipped:
            logger.warning("%s: skipped %d bad record(s), loaded %d; reasons %s; first: %s", self.path,
                           self.skipped, self.loaded, dict(self.reasons), "; ".join(self.examples))


def handle_bad(err: DataError, on_bad_record: str, summary: LoadSummary) -> None:
    """Raise ``err`` (mode ``error``) or count it in ``summary`` (mode ``skip``)."""
    if on_bad_record == "error":
        raise err
    if on_bad_record != "skip":
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")
    summary.add_skip(err)
