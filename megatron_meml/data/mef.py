"""MEF (multi-expert fine-tuning) data: one row per (question, expert, trace).

File format (JSONL, one object per line)::

    {"id": str, "question": str, "expert": int, "response": str, "answer": str}

``expert`` 0 is the dataset's own rationale (``record.solution``); experts >= 1 are teacher traces collected by
python -m megatron_meml.collect_teacher_traces, whose output rows carry at least ``id``, ``expert`` and ``response`` (other
fields are ignored; ``question`` and ``answer`` are taken from the dataset record).

:func:`build_mef_data` merges both: for every record, expert 0's row, then each expert's trace in file order. A
teacher trace whose final answer fails the verifier is dropped when ``drop_unverified`` (the default; counted per
expert in the summary). A second trace for the same (id, expert) is dropped as a duplicate, a trace whose id is not
in ``records`` is counted as ``unknown_id``, and a malformed line is a bad record (``DataError`` naming file and
line, or skipped and counted with ``on_bad_record="skip"``).
:func:`synthetic_mef_rows` gives the synthetic task its "heterogeneous teachers" offline (v2: error-prone teachers,
``synthetic_families.teacher_trace``; v1: ``synthetic.solution(steps, style=e)``).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Sequence, Tuple

from ..rewards import verify
from ..types import Record
from .errors import LoadSummary, RecordError
from .jsonio import iter_jsonl, read_items, write_jsonl
from .synthetic import solution as synthetic_solution
from .synthetic_families import teacher_trace

log = logging.getLogger(__name__)


@dataclass
class MEFRow:
    id: str
    question: str
    expert: int
    response: str
    answer: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MEFSummary:
    """Counts of a build, per expert id where a dict: ``kept`` rows; ``unverified`` traces (dropped when
    ``drop_unverified``, kept otherwise); ``missing`` records with no trace of that expert in any file."""

    records: int = 0
    rows: int = 0
    drop_unverified: bool = True
    kept: Counter = field(default_factory=Counter)
    unverified: Counter = field(default_factory=Counter)
    missing: Dict[int, int] = field(default_factory=dict)
    duplicates: int = 0
    unknown_id: int = 0
    bad_lines: int = 0
    files: List[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kept"], d["unverified"] = dict(self.kept), dict(self.unverified)
        return d


def _trace(obj: dict, index: int) -> Tuple[str, int, str]:
    for key, tp in (("id", str), ("expert", int), ("response", str)):
        if key not in obj:
            raise RecordError(f"missing field {key!r}")
        if not isinstance(obj[key], tp) or isinstance(obj[key], bool):
            raise RecordError(f"field {key!r} must be {tp.__name__}, got {type(obj[key]).__name__}")
    if obj["expert"] < 1:
        raise RecordError(f"field 'expert' is {obj['expert']}: teacher traces use experts >= 1 (expert 0 is the "
                          f"dataset rationale)")
    return obj["id"], obj["expert"], obj["response"]


def read_traces(path: str, on_bad_record: str = "error") -> Tuple[List[Tuple[str, int, str]], LoadSummary]:
    """``[(id, expert, response), ...]`` of a teacher-trace JSONL file, in file order."""
    return read_items(path, iter_jsonl(path), _trace, on_bad_record)


def build_mef_data(records: Sequence[Record], trace_files: Iterable[str], verifier_name: str,
                   drop_unverified: bool = True, on_bad_record: str = "error",
                   max_chars: int = 200_000) -> Tuple[List[MEFRow], MEFSummary]:
    """MEF rows from the gold rationales (expert 0) and teacher trace files (see module docstring). Teacher traces
    (long reasoning included) are verified up to ``max_chars`` characters, not the rollout reward's 20k cap."""
    by_id = {r.id: r for r in records}
    summary = MEFSummary(records=len(records), drop_unverified=drop_unverified)
    traces: Dict[str, List[Tuple[int, str]]] = {r.id: [] for r in records}
    seen = set()
    for path in trace_files:
        items, file_summary = read_traces(path, on_bad_record)
        file_summary.log(log)
        summary.bad_lines += file_summary.skipped
        summary.files.append(file_summary.to_dict())
        for rid, expert, response in items:
            if rid not in by_id:
                summary.unknown_id += 1
                continue
            if (rid, expert) in seen:
                summary.duplicates += 1
                continue
            seen.add((rid, expert))
            if verify(verifier_name, response, by_id[rid], max_chars=max_chars) < 1.0:
                summary.unverified[expert] += 1
                if drop_unverified:
                    continue
            traces[rid].append((expert, response))
    rows: List[MEFRow] = []
    experts = sorted({e for _, e in seen})
    for r in records:
        rows.append(MEFRow(r.id, r.question, 0, r.solution, r.answer))
        for expert, response in sorted(traces[r.id], key=lambda t: t[0]):
            rows.append(MEFRow(r.id, r.question, expert, response, r.answer))
    summary.kept = Counter(row.expert for row in rows)
    summary.missing = {e: sum((r.id, e) not in seen for r in records) for e in experts}
    summary.rows = len(rows)
    return rows, summary


def describe_mef_rows(rows: Sequence[MEFRow], num_experts: int) -> str:
    """One line with the real per-expert row counts, e.g. ``7473 traces (expert 0: 7473, expert 1: 0, expert 2: 0);
    experts 1, 2 have no MEF traces ...``."""
    return describe_expert_counts(Counter(r.expert for r in rows), num_experts)


def describe_expert_counts(counts: Counter, num_experts: int) -> str:
    """:func:`describe_mef_rows` from per-expert row counts."""
    parts = ", ".join(f"expert {e}: {counts.get(e, 0)}" for e in range(num_experts))
    empty = [str(e) for e in range(num_experts) if not counts.get(e)]
    note = ""
    if empty:
        which = "expert" if len(empty) == 1 else "experts"
        note = (f"; {which} {', '.join(empty)} {'has' if len(empty) == 1 else 'have'} no MEF traces (their prompts are "
                f"trained in RIEL only; add teacher traces with python -m megatron_meml.build_mef_data --traces)")
    return f"{sum(counts.values())} traces ({parts}){note}"


def synthetic_mef_rows(records: Sequence[Record], num_experts: int, teacher_error: float = 0.75,
                       seed: int = 0) -> List[MEFRow]:
    """Expert e's MEF trace of every synthetic record: teacher e's answer.

    v2 records (``meta["family"]``): ``synthetic_families.teacher_trace`` — teacher e writes in style e and makes
    its systematic mistake on trigger cases of its weak family with probability ``teacher_error`` (seeded per
    record and teacher by ``seed``), so these rows contain wrong traces on purpose (``mef.drop_unverified`` drops
    them like any other unverified trace). v1 records (``meta["steps"]``): the correct solution in style e."""
    rows = []
    for r in records:
        if "family" in r.meta:
            traces = [teacher_trace(r, e, teacher_error, seed)[0] for e in range(num_experts)]
        elif "steps" in r.meta:
            traces = [synthetic_solution(r.meta["steps"], style=e) for e in range(num_experts)]
        else:
            raise ValueError(f"record {r.id}: synthetic_mef_rows needs meta['family'] (v2) or meta['steps'] (v1): "
                             f"a synthetic-task record")
        rows.extend(MEFRow(r.id, r.question, e, t, r.answer) for e, t in enumerate(traces))
    return rows


def _row(obj: dict, index: int) -> MEFRow:
    for key, tp in (("id", str), ("question", str), ("expert", int), ("response", str), ("answer", str)):
        if key not in obj:
            raise RecordError(f"missing field {key!r}")
        if not isinstance(obj[key], tp) or isinstance(obj[key], bool):
            raise RecordError(f"field {key!r} must be {tp.__name__}, got {type(obj[key]).__name__}")
    if obj["expert"] < 0:
        raise RecordError(f"field 'expert' must be >= 0, got {obj['expert']}")
    return MEFRow(obj["id"], obj["question"], obj["expert"], obj["response"], obj["answer"])


def read_mef(path: str, on_bad_record: str = "error") -> List[MEFRow]:
    """Rows of a MEF JSONL file; bad lines raise ``DataError`` or are skipped, counted and logged."""
    rows, summary = read_items(path, iter_jsonl(path), _row, on_bad_record)
    summary.log(log)
    return rows


def write_mef(path: str, rows: Iterable[MEFRow]) -> None:
    """Write MEF rows as JSONL, atomically."""
    write_jsonl(path, (r.to_dict() for r in rows))
