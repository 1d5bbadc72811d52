"""Bad records in every loader: an error naming file and line, or (skip mode) skipped and counted."""
import json

import pytest

from megatron_meml.data import DataError, load_dataset_with_summary
from megatron_meml.data.gsm8k import load_gsm8k
from megatron_meml.data.jsonio import iter_json_array
from megatron_meml.data.mathqa import load_mathqa
from megatron_meml.data.strategyqa import load_strategyqa

GSM = {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}
MQA = {"Problem": "what is 2 + 3 ?", "Rationale": "\"2 + 3 = 5 answer : b\"", "options": "a ) 4 , b ) 5 , c ) 6",
       "correct": "b", "category": "general"}
SQA = {"qid": "q1", "term": "t", "question": "Is 5 odd?", "answer": True, "facts": ["5 is odd."],
       "decomposition": ["Is 5 divisible by 2?"]}


def write_jsonl(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def gsm_lines(bad: bytes):
    good = json.dumps(GSM).encode()
    return [good, good, bad, good]  # the bad record is on line 3


def write_array(path, objs_or_raw):
    """A pretty-printed JSON array; items given as bytes are written raw. Returns the start line of each item."""
    parts, starts, line = [b"["], [], 2
    for i, o in enumerate(objs_or_raw):
        body = o if isinstance(o, bytes) else json.dumps(o, indent=4).encode()
        starts.append(line)
        parts.append(body + (b"," if i < len(objs_or_raw) - 1 else b""))
        line += body.count(b"\n") + 1
    parts.append(b"]")
    path.write_bytes(b"\n".join(parts) + b"\n")
    return str(path), starts


GSM_BAD = {
    "malformed": b'{"question": "x", "answer": ',
    "missing": json.dumps({"question": "x"}).encode(),
    "non_utf8": b'{"question": "caf\xe9", "answer": "#### 1"}',
    "no_final": json.dumps({"question": "x", "answer": "no final line"}).encode(),
}


@pytest.mark.parametrize("kind", sorted(GSM_BAD))
def test_gsm8k_bad_record_names_file_and_line(tmp_path, kind):
    path = write_jsonl(tmp_path / "test.jsonl", gsm_lines(GSM_BAD[kind]))
    with pytest.raises(DataError) as e:
        load_gsm8k(path, "test")
    assert e.value.path == path and e.value.line == 3
    assert str(e.value).startswith(f"{path}:3: ")


@pytest.mark.parametrize("kind", sorted(GSM_BAD))
def test_gsm8k_skip_counts_and_keeps_ids_stable(tmp_path, kind):
    path = write_jsonl(tmp_path / "test.jsonl", gsm_lines(GSM_BAD[kind]))
    records, summary = load_gsm8k(path, "test", on_bad_record="skip")
    assert [r.id for r in records] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-3"]
    assert summary.loaded == 3 and summary.skipped == 1 and sum(summary.reasons.values()) == 1
    assert list(summary.reasons)[0] in ("malformed JSON", "missing field 'answer'", "non-UTF-8 bytes",
                                        "field 'answer'")
    assert summary.examples[0].startswith(f"{path}:3: ")


def test_gsm8k_record_fields(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [json.dumps({"question": " q ", "answer": "a <<1*1=1>>1\n#### 1,080"})
                                              .encode()])
    (r,), _ = load_gsm8k(path, "train")
    assert r.answer == "1080" and r.solution == "a 1\n#### 1,080" and r.question == "q"


MQA_BAD = {
    "malformed": b'    {\n        "Problem": "x",\n        "Rationale" "no colon"\n    }',
    "missing": json.dumps({k: v for k, v in MQA.items() if k != "correct"}, indent=4).encode(),
    "non_utf8": json.dumps(MQA, indent=4).encode().replace(b"what is", b"wh\xffat is"),
    "bad_letter": json.dumps(dict(MQA, correct="e"), indent=4).encode(),
}


@pytest.mark.parametrize("kind", sorted(MQA_BAD))
def test_mathqa_bad_record(tmp_path, kind):
    path, starts = write_array(tmp_path / "test.json", [MQA, MQA_BAD[kind], MQA, MQA])
    with pytest.raises(DataError) as e:
        load_mathqa(path, "test")
    assert e.value.path == path and e.value.line == starts[1], str(e.value)
    records, summary = load_mathqa(path, "test", on_bad_record="skip")
    assert [r.id for r in records] == ["mathqa-test-0", "mathqa-test-2", "mathqa-test-3"]
    assert summary.skipped == 1 and summary.loaded == 3


def test_mathqa_record_fields_and_list_options(tmp_path):
    listy = dict(MQA, options="['a ) 2 : 3', 'b ) 4 : 5', 'c ) 16 : 9']", correct="c")
    path, _ = write_array(tmp_path / "dev.json", [MQA, listy])
    (r0, r1), _ = load_mathqa(path, "dev")
    assert r0.answer == "b" and r0.meta["options"] == {"a": "4", "b": "5", "c": "6"}
    assert r0.question == "what is 2 + 3 ?\nOptions: a) 4, b) 5, c) 6"
    assert r0.solution == "2 + 3 = 5 answer : b\nThe answer is (b)"
    assert r1.meta["options"] == {"a": "2 : 3", "b": "4 : 5", "c": "16 : 9"}


SQA_BAD = {
    "malformed": b'    {"qid": "q9", "question": }',
    "missing": json.dumps({k: v for k, v in SQA.items() if k != "answer"}, indent=4).encode(),
    "wrong_type": json.dumps(dict(SQA, answer="yes"), indent=4).encode(),
    "non_utf8": json.dumps(SQA, indent=4).encode().replace(b"Is 5", b"Is \xc3\x28 5"),
}


@pytest.mark.parametrize("kind", sorted(SQA_BAD))
def test_strategyqa_bad_record(tmp_path, kind):
    path, starts = write_array(tmp_path / "dev.json", [SQA, SQA, SQA_BAD[kind], SQA])
    with pytest.raises(DataError) as e:
        load_strategyqa(path, "dev")
    assert e.value.line == starts[2] and str(e.value).startswith(f"{path}:{starts[2]}: ")
    records, summary = load_strategyqa(path, "dev", on_bad_record="skip")
    assert len(records) == 3 and summary.skipped == 1


def test_strategyqa_solution_format(tmp_path):
    path, _ = write_array(tmp_path / "train.json", [SQA])
    (r,), _ = load_strategyqa(path, "train")
    assert r.answer == "yes" and r.solution == "5 is odd.\nIs 5 divisible by 2?\nThe answer is yes."


def test_json_array_resyncs_after_a_syntax_error(tmp_path):
    path, starts = write_array(tmp_path / "a.json", [{"k": 1}, b'    {"k": 2, "j" 3}', {"k": 3}, {"k": 4}])
    items = list(iter_json_array(path))
    assert [it.value for it in items] == [{"k": 1}, None, {"k": 3}, {"k": 4}]
    assert items[1].line == starts[1] and "malformed JSON" in items[1].error
    assert [it.index for it in items] == [0, 1, 2, 3]


def test_not_an_array_and_truncated_file(tmp_path):
    (tmp_path / "obj.json").write_text('{"k": 1}')
    with pytest.raises(DataError, match="expected a JSON array"):
        load_strategyqa(str(tmp_path / "obj.json"), "dev")
    (tmp_path / "cut.json").write_text(json.dumps([SQA], indent=4)[:-3])
    with pytest.raises(DataError) as e:
        load_strategyqa(str(tmp_path / "cut.json"), "dev")
    assert e.value.line is not None


def test_load_dataset_finds_files_under_a_root(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", gsm_lines(GSM_BAD["missing"]))
    records, summary = load_dataset_with_summary("gsm8k", str(tmp_path), "test", on_bad_record="skip")
    assert len(records) == 3 and summary.skipped == 1 and dict(summary.reasons) == {"missing field 'answer'": 1}
    with pytest.raises(DataError, match=r"the gsm8k 'train' split not found .*set data\.path.*python -m megatron_meml\.prepare_data"):
        load_dataset_with_summary("gsm8k", str(tmp_path), "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset_with_summary("strategyqa", str(tmp_path), "test")
