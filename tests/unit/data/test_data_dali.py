"""data.loader=dali: python -m megatron_meml.pretokenize writes the run's MEF rows as numpy shards in the trainer's order; the DALI
pipeline gives the default loader's batches, from any start step (a resumed run), and a run through it has the
same MEF losses. The shard format, the staleness check and the missing-DALI error need no DALI and always run; the
pipeline tests run where NVIDIA DALI is installed (pip install .[dali]) and skip with the reason elsewhere."""
import json
import os
import subprocess
import sys

import pytest

from megatron_meml.config import ConfigError, load_config
from megatron_meml.data import load_expert_prompts, tokenizer_from_config
from megatron_meml.data.mef_batches import RenderedMEFBatches
from megatron_meml.data.shards import ShardReader, check_meta, read_index, run_meta
from tests.conftest import ROOT

try:
    import nvidia.dali  # noqa: F401
    HAVE_DALI = True
except ImportError:
    HAVE_DALI = False
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI is not installed (pip install '.[dali]')")

from megatron_meml import pretokenize

TINY = ["model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64", "data.synthetic.num_train=40",
        "data.synthetic.num_test=8", "data.seq_length=160", "data.micro_batch_size=4", "data.global_batch_size=8",
        "experts.prompts=[Use equations., Go step by step., Split into parts.]"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The synthetic task's 120 MEF rows (40 questions x 3 experts) pre-tokenized in shards of 50 rows."""
    out = tmp_path_factory.mktemp("shards")
    assert pretokenize.main(["examples/quickstart/config.yaml", *TINY, "--out", str(out), "--rows-per-shard", "50"]) == 0
    cfg = load_config("examples/quickstart/config.yaml", TINY + ["data.loader=dali", f"data.shards={out}"])
    return cfg, str(out)


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _default_batches(cfg):
    from megatron_meml.stages.mef import mef_rows

    tok = tokenizer_from_config(cfg.data)
    return RenderedMEFBatches(mef_rows(cfg, lambda *_: None), tok, cfg.data.chat_template,
                              load_expert_prompts(cfg.experts), cfg.data.global_batch_size)


def test_shards_hold_the_default_loaders_rows_in_order(shards):
    cfg, folder = shards
    index = read_index(folder)
    assert index["rows"] == 120 and [s["rows"] for s in index["shards"]] == [50, 50, 20]
    assert index["experts"] == {"0": 40, "1": 40, "2": 40}
    reader, default = ShardReader(folder), _default_batches(cfg)
    for step in (0, 7, 15, 16):  # 16 * 8 = 128 > 120: wraps around like the default loader
        got = [reader.row(g) for g in reader.batch_rows(step, 8)]
        assert [(ids.tolist(), mask.tolist()) for ids, mask in got] == default.batch(step)


def test_stale_shards_are_one_line_naming_data_shards(shards):
    cfg, folder = shards
    tok = tokenizer_from_config(cfg.data)
    other = load_config("examples/quickstart/config.yaml", TINY + ["data.seed=7"])
    with pytest.raises(ConfigError, match=r"config key `data\.shards`: .* was written for seed=1234, this run has 7"):
        check_meta(read_index(folder), run_meta(other, tok, load_expert_prompts(other.experts)), folder)
    with pytest.raises(ConfigError, match=r"data\.shards.*no index\.json.*python -m megatron_meml\.pretokenize"):
        read_index(os.path.join(folder, "missing"))


def test_without_dali_the_error_is_one_line(monkeypatch):
    from megatron_meml.data.dali_loader import import_dali

    for name in ("nvidia", "nvidia.dali", "nvidia.dali.fn", "nvidia.dali.types"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r"config key `data\.loader`: `dali` needs NVIDIA DALI.*\[dali\]"):
        import_dali()


@needs_dali
def test_dali_pipeline_gives_the_default_batches_from_any_start(shards):
    from megatron_meml.data.dali_loader import DaliMEFBatches

    cfg, _ = shards
    default = _default_batches(cfg)
    tok = tokenizer_from_config(cfg.data)
    for start in (0, 13):  # a resumed run builds the pipeline at its first step
        dali = DaliMEFBatches(cfg, tok, load_expert_prompts(cfg.experts))
        dali.start(start)
        for step in range(start, start + 4):
            assert dali.batch(step) == default.batch(step), (start, step)
        dali.close()


@needs_dali
def test_mef_through_dali_has_the_default_losses(shards, tmp_path):
    """Two MEF runs of 4 steps, default loader and DALI: the same loss at every step."""
    _, folder = shards
    losses = {}
    for loader in ("default", "dali"):
        run_dir = tmp_path / loader
        r = subprocess.run([sys.executable, "-m", "megatron_meml.train", "examples/quickstart/config.yaml", *TINY,
                            "mef.max_steps=4", "riel.enabled=false", "eval.enabled=false", f"data.loader={loader}",
                            f"data.shards={folder}", f"logging.run_dir={run_dir}", "logging.progress_bar=false",
                            "logging.tensorboard=false"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr[-3000:]
        rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
        losses[loader] = [row["loss"] for row in rows if row["stage"] == "mef"]
        if loader == "dali":
            assert "[pre-tokenized, DALI:" in r.stdout and "120 traces (expert 0: 40, expert 1: 40" in r.stdout
    assert len(losses["default"]) == 4 and losses["dali"] == losses["default"]
