"""python -m megatron_meml.prepare_data on small local fixtures in the Hugging Face formats (no network): a `huggingface-cli download`
folder of openai/gsm8k (main/ and socratic/ configs), allenai/math_qa exported as JSON lines, ChilleD/StrategyQA with
string answers and string facts, a hub cache snapshot, the hub path through a stand-in `datasets` module, parquet
where pyarrow or pandas is installed, the one-line errors, and the tokenizer conversion from a HF tokenizer.json."""
import base64
import hashlib
import json
import os
import re
import sys
import types

import pytest

from megatron_meml.data import load_dataset, load_tokenizer
from tests.conftest import DATA

from megatron_meml import prepare_data as prep

GSM = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"} for i in range(1, 4)]
MQA = [{"Problem": f"what is {i} * 2 ?", "Rationale": f"\"{i} * 2 = {2 * i} answer b\"",
        "options": f"a ) {i} , b ) {2 * i} , c ) {3 * i} , d ) 0 , e ) none", "correct": "b",
        "annotated_formula": f"multiply({i}, const_2)", "linear_formula": f"multiply(n0,const_2)|",
        "category": "general"} for i in range(1, 5)]
SQA = [{"qid": f"q{i}", "term": "T", "description": "d", "question": f"Is {i} even?", "answer": ["no", "yes"][i % 2 == 0],
        "facts": f"{i} is a number.\nEven numbers divide by 2.", "decomposition": ["Is #1 even?"]} for i in range(1, 4)]


def jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def hub_layout(root):
    """The three datasets as local downloads in their hub layouts (JSON lines instead of parquet)."""
    jsonl(root / "gsm8k" / "main" / "train-00000-of-00002.jsonl", GSM[:2])
    jsonl(root / "gsm8k" / "main" / "train-00001-of-00002.jsonl", GSM[2:])
    jsonl(root / "gsm8k" / "main" / "test-00000-of-00001.jsonl", GSM[:1])
    jsonl(root / "gsm8k" / "socratic" / "train-00000-of-00001.jsonl", GSM)  # another config: must be ignored
    jsonl(root / "socratic-test.jsonl", GSM)                                 # outside the dataset folders
    jsonl(root / "math_qa" / "train.jsonl", MQA)
    jsonl(root / "math_qa" / "validation.jsonl", MQA[:2])
    jsonl(root / "math_qa" / "test.jsonl", MQA[1:])
    (root / "strategyqa").mkdir()
    (root / "strategyqa" / "train.json").write_text(json.dumps(SQA))
    (root / "strategyqa" / "test.json").write_text(json.dumps(SQA[:2]))
    return root


def run(args, capsys):
    rc = prep.main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_local_hub_downloads_write_the_layout_the_loaders_read(tmp_path, capsys):
    src = hub_layout(tmp_path / "dl")
    out = tmp_path / "data"
    rc, stdout, err = run(["--out", str(out), "--gsm8k", str(src / "gsm8k"), "--mathqa", str(src / "math_qa"),
                           "--strategyqa", str(src / "strategyqa")], capsys)
    assert rc == 0, err
    train = load_dataset("gsm8k", str(out), "train")
    assert [r.answer for r in train] == ["2", "4", "6"]  # both shards of main/, in order; socratic/ ignored
    assert len(load_dataset("gsm8k", str(out), "test")) == 1
    assert len(load_dataset("mathqa", str(out), "train")) == 4  # train.json now exists: no dev fallback
    assert [len(load_dataset("mathqa", str(out), s)) for s in ("dev", "test")] == [2, 3]
    sqa = load_dataset("strategyqa", str(out), "train")
    assert [r.answer for r in sqa] == ["no", "yes", "no"] and sqa[0].meta["facts"] == ["1 is a number.",
                                                                                      "Even numbers divide by 2."]
    assert len(load_dataset("strategyqa", str(out), "dev")) == 2  # ChilleD's test split is our dev
    sums = dict(reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines())
    digest = hashlib.sha256((out / "gsm8k" / "train.jsonl").read_bytes()).hexdigest()
    assert sums["gsm8k/train.jsonl"] == digest and f"gsm8k       train                  3  {digest}" in stdout
    assert len(sums) == 7  # gsm8k 2 + mathqa 3 + strategyqa 2


def test_hf_cache_snapshot_and_hub_name(tmp_path, capsys):
    snap = tmp_path / "hub" / "datasets--openai--gsm8k" / "snapshots" / "abc123"
    jsonl(snap / "main" / "train-00000-of-00001.jsonl", GSM)
    jsonl(snap / "main" / "test-00000-of-00001.jsonl", GSM[:2])
    rc, _, err = run(["--out", str(tmp_path / "data"), "--datasets", "gsm8k", "--hf-cache", str(tmp_path / "hub")],
                     capsys)
    assert rc == 0, err
    assert len(load_dataset("gsm8k", str(tmp_path / "data"), "test")) == 2


def test_hub_path_through_datasets(tmp_path, capsys, monkeypatch):
    """The hub path: datasets.load_dataset(name, config) per dataset (a stand-in module; no network in tests)."""
    calls = []

    def load(name, config=None):
        calls.append((name, config))
        return {"openai/gsm8k": {"train": GSM, "test": GSM[:1]}, "allenai/math_qa": {"train": MQA, "test": MQA},
                "ChilleD/StrategyQA": {"train": SQA, "test": SQA}}[name]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))
    rc, stdout, err = run(["--out", str(tmp_path / "data")], capsys)
    assert rc == 0, err
    assert calls == [("openai/gsm8k", "main"), ("allenai/math_qa", None), ("ChilleD/StrategyQA", None)]
    assert "mathqa      dev" not in stdout  # no validation split there: dev is simply not written
    assert len(load_dataset("strategyqa", str(tmp_path / "data"), "dev")) == 3


def test_without_datasets_package_the_error_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    rc, _, err = run(["--out", str(tmp_path / "data"), "--datasets", "gsm8k"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "pip install datasets" in err and "--gsm8k" in err


@pytest.mark.parametrize("case,match", [
    ("missing", "no such file or folder"), ("unnamed", "cannot tell the split"), ("badjson", r"train\.jsonl:2: invalid JSON"),
    ("field", r"missing field\(s\) \['answer'\]"), ("nosplit", "no test split"),
])
def test_bad_input_is_one_line(tmp_path, capsys, case, match):
    src = tmp_path / "src"
    src.mkdir()
    arg = str(src / "nothing")
    if case == "unnamed":
        jsonl(src / "gsm.jsonl", GSM)
        arg = str(src / "gsm.jsonl")
    elif case == "badjson":
        (src / "train.jsonl").write_text(json.dumps(GSM[0]) + "\n{oops\n")
        arg = str(src / "train.jsonl")
    elif case == "field":
        jsonl(src / "train.jsonl", [{"question": "q"}])
        jsonl(src / "test.jsonl", GSM)
        arg = str(src)
    elif case == "nosplit":
        jsonl(src / "train.jsonl", GSM)
        arg = str(src)
    rc, _, err = run(["--out", str(tmp_path / "data"), "--datasets", "gsm8k", "--gsm8k", arg], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert re.search(match, err), err


def test_parquet_needs_pyarrow_or_pandas(tmp_path, capsys):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pa = None
    src = tmp_path / "gsm8k" / "main"
    src.mkdir(parents=True)
    if pa is None:
        (src / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
        rc, _, err = run(["--out", str(tmp_path / "data"), "--datasets", "gsm8k", "--gsm8k", str(src.parent)], capsys)
        assert rc == 2 and "needs pyarrow or pandas" in err
        pytest.skip("pyarrow is not installed here: the parquet error path was checked, the reader was not")
    pq.write_table(pa.Table.from_pylist(GSM), str(src / "train-00000-of-00001.parquet"))
    pq.write_table(pa.Table.from_pylist(GSM[:1]), str(src / "test-00000-of-00001.parquet"))
    rc, _, err = run(["--out", str(tmp_path / "data"), "--datasets", "gsm8k", "--gsm8k", str(src.parent)], capsys)
    assert rc == 0, err
    assert len(load_dataset("gsm8k", str(tmp_path / "data"), "train")) == 3


def _bytes_to_unicode():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


@pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "tokenizers", "qwen2.5", "qwen.tiktoken")),
                    reason=f"Qwen2.5 ranks not found under {DATA}")
def test_tokenizer_from_a_hf_tokenizer_json_round_trips(tmp_path, capsys):
    """A HF tokenizer.json built from the real Qwen2.5 ranks (byte-level unicode, id = rank, specials as added
    tokens) converts back to a rank file the project's tokenizer loads, encoding text identically."""
    enc = _bytes_to_unicode()
    vocab = {}
    for line in open(os.path.join(DATA, "tokenizers", "qwen2.5", "qwen.tiktoken"), "rb"):
        token, rank = line.split()
        vocab["".join(enc[b] for b in base64.b64decode(token))] = int(rank)
    vocab["<|endoftext|>"] = 151643
    model = tmp_path / "Qwen2.5-tiny"
    model.mkdir()
    (model / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []}}))
    rc, stdout, err = run(["--out", str(tmp_path / "data"), "--datasets", "--tokenizer", f"qwen2.5={model}"], capsys)
    assert rc == 0, err
    ours = load_tokenizer("qwen2.5", data_root=str(tmp_path / "data"))
    ref = load_tokenizer("qwen2.5", data_root=DATA)
    text = "Janet’s ducks lay 16 eggs per day. ¿Qué? 日本語 <|im_start|>"
    assert ours.encode(text) == ref.encode(text) and ours.vocab_size == ref.vocab_size
    assert "tokenizers  qwen2.5" in stdout
