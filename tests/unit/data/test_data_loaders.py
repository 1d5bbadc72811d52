"""The real datasets load with the published counts and the documented record format; sharding; synthetic."""
import os

import pytest

from megatron_meml.data import load_dataset, load_dataset_with_summary, resolve_data_path, shard, split_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DATA = os.environ.get("MEML_DATA", os.path.join(REPO, "..", "shared", "data"))
needs_data = pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "gsm8k")),
                                reason=f"offline datasets not found at {DATA} (set MEML_DATA)")

COUNTS = [("gsm8k", "train", 7473), ("gsm8k", "test", 1319), ("mathqa", "dev", 4475), ("mathqa", "test", 2985),
          ("mathqa", "challenge_test", 604), ("strategyqa", "train", 2061), ("strategyqa", "dev", 229)]


@needs_data
@pytest.mark.parametrize("name,split,count", COUNTS)
def test_counts_and_unique_ids(name, split, count):
    records, summary = load_dataset_with_summary(name, DATA, split)
    assert len(records) == count and summary.skipped == 0
    assert len({r.id for r in records}) == count
    assert all(r.question and r.answer and r.solution for r in records)


@needs_data
def test_gsm8k_record():
    r = load_dataset("gsm8k", DATA, "test")[0]
    assert r.id == "gsm8k-test-0" and r.question.startswith("Janet’s ducks lay 16 eggs")
    assert r.answer == "18" and "<<" not in r.solution and r.solution.endswith("#### 18")
    assert all("," not in r.answer for r in load_dataset("gsm8k", DATA, "test"))


@needs_data
def test_mathqa_record_and_train_alias(caplog):
    r = load_dataset("mathqa", DATA, "test")[0]
    assert r.answer == "a" and r.meta["options"]["b"] == "27.675" and r.meta["options"]["d"] == "data inadequate"
    assert "Options: a) 38, b) 27.675, c) 30, d) data inadequate, e) none of these" in r.question
    assert r.solution.endswith("The answer is (a)")
    assert sum(len(x.meta["options"]) == 5 for x in load_dataset("mathqa", DATA, "test")) == 2985
    train = load_dataset("mathqa", DATA, "train")
    assert len(train) == 4475 and "loads dev.json" in caplog.text
    assert train == load_dataset("mathqa", DATA, "dev") and train[0].id == "mathqa-dev-0"


@needs_data
def test_strategyqa_record_and_labels():
    dev = load_dataset("strategyqa", DATA, "dev")
    assert sum(r.answer == "yes" for r in dev) == 107 and sum(r.answer == "no" for r in dev) == 122
    assert dev[0].id == "e0044a7b4d146d611e73" and dev[0].solution.endswith("The answer is no.")


@needs_data
def test_path_forms_and_determinism():
    by_root = load_dataset("strategyqa", DATA, "dev")
    by_folder = load_dataset("strategyqa", os.path.join(DATA, "strategyqa"), "dev")
    by_file = load_dataset("strategyqa", split_file("strategyqa", DATA, "dev"), "dev")
    assert by_root == by_folder == by_file


def test_relative_data_path_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEML_DATA", raising=False)
    assert resolve_data_path("mydata") == str(tmp_path / "mydata")  # whether or not it exists
    assert resolve_data_path(None) == str(tmp_path / "data")        # the default: data/ under the working dir
    monkeypatch.setenv("MEML_DATA", str(tmp_path / "elsewhere"))
    assert resolve_data_path(None) == str(tmp_path / "elsewhere")


@needs_data
def test_mathqa_train_prefers_train_json(tmp_path):
    """python -m megatron_meml.prepare_data writes mathqa/train.json; only without it does `train` fall back to dev.json."""
    (tmp_path / "mathqa").mkdir()
    src = split_file("mathqa", DATA, "test")
    (tmp_path / "mathqa" / "train.json").write_bytes(open(src, "rb").read())
    assert split_file("mathqa", str(tmp_path), "train").endswith("train.json")
    train = load_dataset("mathqa", str(tmp_path), "train")
    assert len(train) == 2985 and train[0].id == "mathqa-train-0"


def test_synthetic_ignores_path_and_takes_kwargs():
    recs = load_dataset("synthetic", "/nonexistent", "train", num_train=10, seed=3)
    assert len(recs) == 10 and recs == load_dataset("synthetic", None, "train", num_train=10, seed=3)
    with pytest.raises(TypeError):
        load_dataset("gsm8k", DATA, "test", num_train=3)


def test_shard_partitions_exactly():
    items = list(range(10))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(x for p in parts for x in p) == items
    with pytest.raises(ValueError):
        shard(items, 3, 3)
