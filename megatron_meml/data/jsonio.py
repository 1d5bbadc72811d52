"""JSON readers that know the line of every record, and crash-safe JSONL writers.

Readers yield :class:`Item` ``(index, line, value, error)``: ``index`` is the ordinal of the record in the file
(bad records included, so ids derived from it do not shift when a record is skipped), ``line`` its 1-based
starting line, ``value`` the parsed object or None, ``error`` a reason string or None.

* JSONL: one JSON object per line; blank lines are ignored. Each line is decoded as strict UTF-8 on its own.
* JSON array (``[ {...}, {...} ]``, pretty-printed or not): elements are parsed one by one with
  ``json.JSONDecoder.raw_decode``. Bytes that are not UTF-8 are kept as surrogate escapes so that only the element
  holding them is bad. After a syntax error inside an element the reader resumes at the next ``}, {`` boundary
  (top-level elements are objects); the skipped span counts as one bad record.

Writers: :func:`write_jsonl` replaces a file atomically (temp file + rename); :func:`append_jsonl` appends one
line and flushes + fsyncs it; :func:`repair_torn_tail` truncates a partial last line left by a crash.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from .errors import DataError, LoadSummary, RecordError, handle_bad

_SURROGATE = re.compile("[\udc80-\udcff]")
_WS = re.compile(r"\s*")
_RESYNC = re.compile(r"\}\s*,\s*(?=\{)")


class Item(NamedTuple):
    index: int
    line: int
    value: Any
    error: Optional[str]


def iter_jsonl(path: str) -> Iterator[Item]:
    """Items of a JSONL file (see module docstring)."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    index = 0
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Item(index, lineno, None, f"non-UTF-8 bytes at column {e.start + 1}")
            index += 1
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            yield Item(index, lineno, None, f"malformed JSON at column {e.colno}: {e.msg}")
        else:
            yield Item(index, lineno, value, None)
        index += 1


def iter_json_array(path: str) -> Iterator[Item]:
    """Items of a file holding one JSON array (see module docstring). A file that is not an array is one bad
    item at line 1."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end()
    if not text.startswith("[", pos):
        yield Item(0, 1, None, "expected a JSON array ('[' at the start of the file)")
        return
    pos += 1
    index, line, line_pos = 0, 1, 0

    def line_at(p: int) -> int:  # 1-based line of offset p; counts incrementally from the last call
        nonlocal line, line_pos
        if p < line_pos:
            line, line_pos = 1, 0
        line += text.count("\n", line_pos, p)
        line_pos = p
        return line

    while True:
        pos = _WS.match(text, pos).end()
        if pos >= len(text):
            yield Item(index, line_at(pos), None, "unexpected end of file inside the JSON array")
            return
        if text[pos] == "]":
            return
        start_line = line_at(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            bad = _SURROGATE.search(text, pos, e.pos + 1)
            reason = "non-UTF-8 bytes" if bad else f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
            yield Item(index, start_line, None, reason)
            index += 1
            m = _RESYNC.search(text, pos + 1)
            if m is None:
                return
            pos = m.end()
            continue
        bad = _SURROGATE.search(text, pos, end)
        if bad:
            yield Item(index, start_line, None, f"non-UTF-8 bytes at line {line_at(bad.start())}")
        else:
            yield Item(index, start_line, value, None)
        index += 1
        pos = _WS.match(text, end).end()
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            yield Item(index, line_at(pos), None, "expected ',' or ']' between array elements")
            index += 1
            m = _RESYNC.search(text, pos)
            if m is None:
                return
            pos = m.end()


def read_items(path: str, items: Iterable[Item], convert: Callable[[Any, int], Any], on_bad_record: str
               ) -> Tuple[List[Any], LoadSummary]:
    """Convert every good item with ``convert(value, index)`` (which raises :class:`RecordError` for a bad
    record). Bad items raise :class:`DataError` or are counted, per ``on_bad_record``."""
    out: List[Any] = []
    summary = LoadSummary(path=path)
    for it in items:
        reason = it.error
        if reason is None:
            if not isinstance(it.value, dict):
                reason = f"expected a JSON object, got {type(it.value).__name__}"
            else:
                try:
                    out.append(convert(it.value, it.index))
                    continue
                except RecordError as e:
                    reason = str(e)
        handle_bad(DataError(path, it.line, reason), on_bad_record, summary)
    summary.loaded = len(out)
    return out, summary


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    """Replace ``path`` with one JSON object per line, atomically (a reader sees the old or the new file)."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(f, row: dict) -> None:
    """Append one line to a file opened in binary append mode, then flush and fsync it, so a crash loses at
    most the line being written (which :func:`repair_torn_tail` removes)."""
    f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    f.flush()
    os.fsync(f.fileno())


def repair_torn_tail(path: str) -> int:
    """Truncate a partial last line (no trailing newline) left by a crash. Returns the bytes dropped (0 when the
    file is missing, empty or already ends in a newline)."""
    if not os.path.exists(path):
        return 0
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep, block = 0, 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep
