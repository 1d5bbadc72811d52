"""The config tree: overrides, type checks, unknown keys with suggestions, file errors, layout validation."""
import os
import subprocess
import sys

import pytest
from megatron_meml.config import ConfigError, describe, load_config, save_config
from tests.conftest import DATA, ROOT


def test_defaults_and_overrides():
    cfg = load_config(None, ["model.hidden_size=128", "optimizer.lr=1e-5", "experts.prompts=[a, b]",
                             "rollout.stop_strings=['\\n\\n']", "riel.admit_prob=null"])
    assert cfg.model.hidden_size == 128 and cfg.optimizer.lr == 1e-5
    assert cfg.experts.prompts == ["a", "b"] and cfg.experts.num_experts == 2
    assert cfg.riel.admit_prob is None
    assert isinstance(load_config(None, ["optimizer.lr=1"]).optimizer.lr, float)  # int accepted for float


def test_yaml_file_then_cli_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  hidden_size: 96\n  num_attention_heads: 4\ndata:\n  seq_length: 64\n")
    cfg = load_config(str(p), ["data.seq_length=32"])
    assert cfg.model.hidden_size == 96 and cfg.data.seq_length == 32


@pytest.mark.parametrize("override,expected", [
    ("model.hiden_size=64", "unknown config key `model.hiden_size`; did you mean `model.hidden_size`?"),
    ("modle.hidden_size=64", "unknown config key `modle`; did you mean `model`?"),
    ("riel.lamda_kl=1", "did you mean `riel.lambda_kl`?"),
])
def test_unknown_key_suggests_closest(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)


@pytest.mark.parametrize("override,key,tp", [
    ("model.hidden_size=abc", "model.hidden_size", "int"),
    ("data.micro_batch_size=1.5", "data.micro_batch_size", "int"),
    ("model.tie_word_embeddings=3", "model.tie_word_embeddings", "bool"),
    ("experts.prompts=5", "experts.prompts", "list"),
    ("optimizer.lr=null", "optimizer.lr", "float"),
])
def test_wrong_type_names_key_and_type(override, key, tp):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"`{key}`" in str(e.value) and tp in str(e.value)


def test_missing_file_and_yaml_syntax_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden_size: 64\n  heads: [1, 2\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error in .*bad.yaml:\d+:\d+"):
        load_config(str(bad))


@pytest.mark.parametrize("overrides,key", [
    (["parallel.tensor_model_parallel_size=3"], "parallel.tensor_model_parallel_size"),
    (["model.num_query_groups=3"], "model.num_query_groups"),
    (["parallel.pipeline_model_parallel_size=3"], "parallel.pipeline_model_parallel_size"),
    (["data.global_batch_size=30", "data.micro_batch_size=8"], "data.global_batch_size"),
    (["riel.buffer_k=9"], "riel.buffer_k"),
    (["precision.fp8=e5m2"], "precision.fp8"),
    (["riel.rollout_ranks=3", "riel.rollout_tensor_parallel_size=2"], "riel.rollout_tensor_parallel_size"),
    (["riel.async_rollout=true", "riel.rollout_ranks=8", "riel.rollout_tensor_parallel_size=8"],
     "riel.rollout_tensor_parallel_size"),  # 8 does not divide the 4 heads
    (["riel.behavior_weight_cap=0.5"], "riel.behavior_weight_cap"),
    (["riel.rollout_timeout_s=0"], "riel.rollout_timeout_s"),
])
def test_impossible_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"`{key}`"):
        load_config(None, overrides)


def test_world_size_must_be_divisible_by_tp_pp():
    cfg = load_config(None, ["parallel.tensor_model_parallel_size=2"])
    with pytest.raises(ConfigError, match="does not divide the world size 3"):
        cfg.validate_layout(world_size=3)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.hidden_size=96", "logging.run_dir=x"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg


def test_every_field_is_documented():
    lines = describe()
    assert len(lines) > 80
    undocumented = [line for line in lines if line.rstrip().endswith("—")]
    assert not undocumented, undocumented


@pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "tokenizers")), reason=f"no shared data at {DATA}")
def test_hf_config_fills_model_fields_and_explicit_wins():
    llama = os.path.join(DATA, "tokenizers", "llama3", "config.json")
    cfg = load_config(None, [f"model.hf_config={llama}", "model.num_layers=2"])
    m = cfg.model
    assert (m.arch, m.hidden_size, m.num_attention_heads, m.num_query_groups, m.kv_channels) == ("llama", 2048, 32, 8, 64)
    assert m.rope_scaling == "llama3" and m.rope_scaling_factor == 32.0 and m.rotary_base == 500000.0
    assert m.add_qkv_bias is False and m.num_layers == 2


def test_cli_typo_exits_nonzero_naming_the_key():
    """Acceptance: `python -m megatron_meml.train examples/quickstart/config.yaml model.hiden_size=64`."""
    r = subprocess.run([sys.executable, "-m", "megatron_meml.train", "examples/quickstart/config.yaml",
                        "model.hiden_size=64"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "model.hiden_size" in r.stderr and "model.hidden_size" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_impossible_layout_is_one_line():
    r = subprocess.run([sys.executable, "-m", "megatron_meml.train", "examples/quickstart/config.yaml",
                        "parallel.tensor_model_parallel_size=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "TP=3 does not divide model.num_attention_heads=4" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_base_include_merges_sections(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  hidden_size: 96\n  num_layers: 3\nriel:\n  group_size: 8\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nmodel:\n  num_layers: 5\n")
    cfg = load_config(str(tmp_path / "run.yaml"))
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.riel.group_size) == (96, 5, 8)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "loop.yaml"))


def test_cli_sequence_too_short_for_any_response_is_one_line():
    r = subprocess.run([sys.executable, "-m", "megatron_meml.train", "mef.max_steps=1", "riel.enabled=false",
                        "eval.enabled=false", "data.seq_length=64", "logging.progress_bar=false",
                        "logging.tensorboard=false", "model.num_layers=1", "logging.run_dir=/tmp/meml_short_seq"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: config key `data.seq_length`")
