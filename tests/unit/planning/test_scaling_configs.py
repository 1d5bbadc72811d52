"""examples/scaling: every config loads, its layout is valid for its shape and fits an 80 GB H100 in the planner at
the GPU count it is written for; shapes match the published HF configs (parameter counts, and the 1.5B / 1B
config.json files in shared/data); python -m megatron_meml.plan_scaling prints a plan; the table in docs/scaling.md is
the tool's output."""
import os
import subprocess
import sys

import pytest

from megatron_meml.config import load_config
from megatron_meml.planning import GiB, Hardware, Layout, ModelShape, Workload, evaluate
from tests.conftest import DATA, ROOT

from megatron_meml import plan_scaling

# published parameter counts (HF model cards / safetensors index totals)
PARAMS = {"qwen2.5-1.5b": 1_543_714_304, "qwen2.5-7b": 7_615_616_512, "qwen2.5-14b": 14_770_033_664,
          "qwen2.5-32b": 32_763_876_352, "qwen2.5-72b": 72_706_203_648, "llama3.2-1b": 1_235_814_400,
          "llama3.2-3b": 3_212_749_824, "llama3.1-8b": 8_030_261_248, "llama3.1-70b": 70_553_706_496}
H100 = Hardware(memory_gib=80.0, headroom=0.0)


def test_every_model_has_a_config():
    assert sorted(plan_scaling.SCALING_RUNS) == sorted(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_config_loads_with_a_valid_layout_that_fits(name):
    cfg = load_config(plan_scaling.config_path(name))
    m, p = cfg.model, cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    gpus = plan_scaling.SCALING_RUNS[name]
    assert m.num_attention_heads % tp == 0 and m.num_query_groups % tp == 0 and m.num_layers % pp == 0
    assert gpus % (tp * pp) == 0 and tp <= 8
    cfg.validate_layout(gpus)
    assert m.padded_vocab_size % tp == 0
    shape = ModelShape.from_config(cfg)
    assert shape.params() == PARAMS[name]
    plan = evaluate(shape, Layout(tp, pp, gpus // (tp * pp), m.recompute_activations, p.sequence_parallel),
                    Workload.from_config(cfg), H100)
    assert plan.peak < 80 * GiB, f"{name}: {plan.peak / GiB:.1f} GiB"
    assert cfg.precision.dtype == "bf16" and cfg.riel.enabled and cfg.logging.run_dir.endswith(name)


@pytest.mark.parametrize("name, hf", [("qwen2.5-1.5b", "qwen2.5"), ("llama3.2-1b", "llama3")])
def test_explicit_shape_matches_the_hf_config(name, hf):
    path = os.path.join(DATA, "tokenizers", hf, "config.json")
    if not os.path.exists(path):
        pytest.skip(f"shared data not found at {DATA} (set MEML_DATA)")
    ours = load_config(plan_scaling.config_path(name)).model
    ref = load_config(None, [f"model.hf_config={path}"]).model
    for key in ("arch", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "vocab_size", "padded_vocab_size", "rotary_base", "rope_scaling", "norm_epsilon", "add_qkv_bias",
                "tie_word_embeddings"):
        assert getattr(ours, key) == getattr(ref, key), key
    if ref.rope_scaling:
        for key in ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                    "rope_original_max_position"):
            assert getattr(ours, key) == getattr(ref, key), key
    assert (ours.kv_channels or ours.hidden_size // ours.num_attention_heads) == \
        (ref.kv_channels or ref.hidden_size // ref.num_attention_heads)


def test_plan_scaling_cli_prints_a_plan_for_72b_on_64_gpus():
    r = subprocess.run([sys.executable, "-m", "megatron_meml.plan_scaling", "--model", "qwen2.5-72b", "--gpus", "64"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "model qwen2.5-72b: 72.71B params" in r.stdout
    assert "recommended: TP=8 PP=2 DP=4" in r.stdout and "*cfg" in r.stdout
    assert "parallel.tensor_model_parallel_size=8" in r.stdout


def test_docs_scaling_table_is_the_tools_output():
    table = plan_scaling.readme_table(Hardware())
    page = open(os.path.join(ROOT, "docs", "scaling.md")).read()
    assert table in page, "docs/scaling.md's table is stale: regenerate with python -m megatron_meml.plan_scaling --readme"
