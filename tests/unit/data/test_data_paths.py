"""One rule for every path in a config: relative to the working directory, in a YAML file and on the command line
alike (config/schema.py). A config in a sub-folder whose prompts, HF config, traces and data sit next to the
working directory (not next to the config) resolves them; the same values as overrides resolve the same way."""
import json
import os

import pytest

from megatron_meml.config import load_config
from megatron_meml.config.schema import ConfigError
from megatron_meml.data import load_expert_prompts
from megatron_meml.data.preflight import check_run_inputs

HF = {"model_type": "llama", "hidden_size": 48, "num_hidden_layers": 2, "intermediate_size": 96,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "rope_theta": 10000.0,
      "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "max_position_embeddings": 128}
YAML = """model:
  hf_config: hf/config.json
experts:
  prompts: ["inline", "@prompts/p1.txt"]
data:
  name: gsm8k
  path: mydata
mef:
  traces: traces/mef.jsonl
"""


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """cwd = tmp_path; every file the config names lives under cwd; the config itself sits in cfgs/."""
    monkeypatch.chdir(tmp_path)
    for d in ("hf", "prompts", "traces", "mydata/gsm8k", "cfgs"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(HF))
    (tmp_path / "prompts" / "p1.txt").write_text("Think.\n")
    (tmp_path / "traces" / "mef.jsonl").write_text("")
    for split in ("train", "test"):
        (tmp_path / "mydata" / "gsm8k" / f"{split}.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    (tmp_path / "cfgs" / "run.yaml").write_text(YAML)
    return tmp_path


def test_yaml_paths_resolve_against_the_working_directory(layout):
    cfg = load_config("cfgs/run.yaml")
    assert cfg.model.hidden_size == 48                                    # model.hf_config read from ./hf
    assert load_expert_prompts(cfg.experts) == ["inline", "Think."]       # @prompts/p1.txt from ./prompts
    check_run_inputs(cfg)                                                 # ./mydata and ./traces found


def test_cli_overrides_mean_the_same_files(layout):
    cfg = load_config(None, ["model.hf_config=hf/config.json", "experts.prompts=[inline, '@prompts/p1.txt']",
                             "data.name=gsm8k", "data.path=mydata", "mef.traces=traces/mef.jsonl"])
    assert cfg == load_config("cfgs/run.yaml")


def test_paths_next_to_the_config_are_not_found(layout):
    """Moving the files next to the config (the other rule) is an error naming the key, not a silent fallback."""
    os.rename(layout / "traces", layout / "cfgs" / "traces")
    with pytest.raises(ConfigError, match=r"config key `mef\.traces`: file not found: .*/traces/mef\.jsonl.*"
                                          r"python -m megatron_meml\.build_mef_data"):
        check_run_inputs(load_config("cfgs/run.yaml"))
    os.rename(layout / "hf", layout / "cfgs" / "hf")
    with pytest.raises(ConfigError, match=r"model\.hf_config"):
        load_config("cfgs/run.yaml")


def test_missing_dataset_names_data_path_and_the_tool(layout):
    cfg = load_config("cfgs/run.yaml", ["data.path=nowhere"])
    with pytest.raises(ConfigError) as e:
        check_run_inputs(cfg)
    msg = str(e.value)
    assert msg.startswith("config key `data.path`") and "python -m megatron_meml.prepare_data --out" in msg and "\n" not in msg


def test_shape_from_init_from_hf_config_json(layout):
    cfg = load_config(None, ["model.init_from_hf=hf"])
    assert (cfg.model.arch, cfg.model.hidden_size, cfg.model.vocab_size) == ("llama", 48, 300)
    assert load_config(None, ["model.init_from_hf=hf", "model.hidden_size=64"]).model.hidden_size == 64
    with pytest.raises(ConfigError, match=r"config key `model\.init_from_hf`: .*/nothing: no such folder"):
        load_config(None, ["model.init_from_hf=nothing"])
    os.remove(layout / "hf" / "config.json")
    with pytest.raises(ConfigError, match=r"model\.init_from_hf.*no config\.json in it"):
        load_config(None, ["model.init_from_hf=hf"])


def test_help_config_shows_the_data_default(monkeypatch):
    from megatron_meml.config import describe

    monkeypatch.delenv("MEML_DATA", raising=False)
    line = next(x for x in describe() if x.startswith("data.path "))
    assert line.startswith("data.path (str) = 'data'") and "python -m megatron_meml.prepare_data" in line and "MEML_DATA" in line


def test_examples_hold_no_machine_specific_paths():
    """`grep -r shared/ examples` finds nothing; the only path outside the checkout a paper config may hold is the
    model folder, and that one is a relative `models/...` marked as a user placeholder."""
    from tests.conftest import ROOT

    for folder, _, files in os.walk(os.path.join(ROOT, "examples")):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:  # bytes: examples also hold plots (PNG)
                assert b"shared/" not in f.read(), os.path.join(folder, name)
    paper = os.path.join(ROOT, "examples", "paper")
    for name in sorted(os.listdir(paper)):
        for line in open(os.path.join(paper, name), encoding="utf-8"):
            value = line.split("#")[0].split(":", 1)[-1].strip().strip("\"'")
            assert not value.startswith(("/", "~")), (name, line)
            if "init_from_hf:" in line:
                assert value.startswith("models/") and "USER PLACEHOLDER" in line, line
