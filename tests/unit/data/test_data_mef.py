"""MEF data: merging gold rationales with teacher traces, verifier filtering, synthetic teachers, file helpers."""
import json

import pytest

from megatron_meml.data import DataError, build_mef_data, load_synthetic, read_mef, synthetic_mef_rows, write_mef
from megatron_meml.data.jsonio import repair_torn_tail
from megatron_meml.rewards import verify
from megatron_meml.types import Record

RECORDS = [Record("q1", "What is 2+3?", "5", "2+3=5\n#### 5"), Record("q2", "What is 4*2?", "8", "4*2=8\n#### 8")]


def write_traces(path, rows, raw_tail=b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + raw_tail)
    return str(path)


def test_build_merges_and_drops_unverified(tmp_path):
    f1 = write_traces(tmp_path / "r1.jsonl", [
        {"id": "q1", "expert": 1, "response": "So 5.\n#### 5", "model": "m"},
        {"id": "q2", "expert": 1, "response": "So 9.\n#### 9"},          # wrong: dropped
        {"id": "q1", "expert": 1, "response": "again #### 5"},            # duplicate (id, expert)
        {"id": "zz", "expert": 1, "response": "#### 1"},                  # not in records
    ])
    f2 = write_traces(tmp_path / "gpt.jsonl", [{"id": "q2", "expert": 2, "response": "The answer is 8."}])
    rows, s = build_mef_data(RECORDS, [f1, f2], "gsm8k")
    assert [(r.id, r.expert) for r in rows] == [("q1", 0), ("q1", 1), ("q2", 0), ("q2", 2)]
    assert rows[0].response == RECORDS[0].solution and rows[1].response == "So 5.\n#### 5"
    assert all(r.question == {"q1": "What is 2+3?", "q2": "What is 4*2?"}[r.id] for r in rows)
    assert rows[3].answer == "8"
    assert s.rows == 4 and s.records == 2 and dict(s.kept) == {0: 2, 1: 1, 2: 1}
    assert dict(s.unverified) == {1: 1} and s.duplicates == 1 and s.unknown_id == 1
    assert s.missing == {1: 0, 2: 1}  # q2 had an expert-1 trace (unverified), q1 none of expert 2
    kept_all, s2 = build_mef_data(RECORDS, [f1, f2], "gsm8k", drop_unverified=False)
    assert len(kept_all) == 5 and dict(s2.unverified) == {1: 1}
    json.dumps(s.to_dict())  # the summary is JSON-serialisable for logs


def test_bad_trace_lines(tmp_path):
    good = {"id": "q1", "expert": 1, "response": "#### 5"}
    path = write_traces(tmp_path / "t.jsonl", [good, {"id": "q2", "expert": 0, "response": "#### 8"}, good])
    with pytest.raises(DataError, match=r"t\.jsonl:2: field 'expert' is 0"):
        build_mef_data(RECORDS, [path], "gsm8k")
    path = write_traces(tmp_path / "u.jsonl", [good], raw_tail=b'{"id": "q2", "exp')
    with pytest.raises(DataError, match=r"u\.jsonl:2: malformed JSON"):
        build_mef_data(RECORDS, [path], "gsm8k")
    rows, s = build_mef_data(RECORDS, [path], "gsm8k", on_bad_record="skip")
    assert s.bad_lines == 1 and len(rows) == 3


def test_synthetic_teachers_are_heterogeneous_and_verified():
    records = load_synthetic("train", num_train=20, seed=7, version=1)  # v1: format-only teachers, all correct
    rows = synthetic_mef_rows(records, num_experts=3)
    assert len(rows) == 60 and [r.expert for r in rows[:3]] == [0, 1, 2]
    assert rows[0].response == records[0].solution
    assert len({r.response for r in rows[:3]}) == 3
    by_id = {r.id: r for r in records}
    assert all(verify("synthetic", row.response, by_id[row.id]) == 1.0 for row in rows)
    with pytest.raises(ValueError, match="meta\\['steps'\\]"):
        synthetic_mef_rows(RECORDS, 2)


def test_write_read_round_trip(tmp_path):
    rows = synthetic_mef_rows(load_synthetic("train", num_train=5, seed=1), 2)
    write_mef(str(tmp_path / "mef.jsonl"), rows)
    assert read_mef(str(tmp_path / "mef.jsonl")) == rows
    line = json.loads((tmp_path / "mef.jsonl").read_text().splitlines()[0])
    assert sorted(line) == ["answer", "expert", "id", "question", "response"]


def test_repair_torn_tail(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a"')
    assert repair_torn_tail(str(p)) == 4 and p.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    assert repair_torn_tail(str(p)) == 0
    p.write_bytes(b'{"a"')
    assert repair_torn_tail(str(p)) == 4 and p.read_bytes() == b""
    assert repair_torn_tail(str(tmp_path / "missing.jsonl")) == 0
