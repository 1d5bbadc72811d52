"""Bad input gives one clear error naming the file, tensor or config field."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from megatron_meml.backend.ckpt import checkpoint_io as io
from megatron_meml.backend.ckpt import hf_convert as H
from megatron_meml.config.schema import ModelConfig

from . import tiny_hf



@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("hf") / "qwen2")
    tiny_hf.qwen2(d)
    return d


def _copy(src, dst, edit_config=None, edit_tensors=None):
    os.makedirs(dst)
    cfg = json.load(open(os.path.join(src, "config.json")))
    if edit_config:
        edit_config(cfg)
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    t = load_file(os.path.join(src, "model.safetensors"))
    if edit_tensors:
        edit_tensors(t)
    save_file(t, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_config_json(tmp_path):
    with pytest.raises(io.CheckpointError, match=r"config.json: not found"):
        H.HFCheckpoint(str(tmp_path))


def test_unknown_model_type(qwen, tmp_path):
    d = _copy(qwen, str(tmp_path / "m"), edit_config=lambda c: c.update(model_type="mistral"))
    with pytest.raises(io.CheckpointError, match=r"config.json: model_type 'mistral' is not qwen2 or llama"):
        H.import_hf(d, str(tmp_path / "ckpt"))


def test_shape_mismatch_names_file_and_tensor(qwen, tmp_path):
    d = _copy(qwen, str(tmp_path / "m"), edit_config=lambda c: c.update(intermediate_size=128))
    with pytest.raises(io.CheckpointError, match=r"model.safetensors: tensor model.layers.0.mlp.gate_proj.weight "
                                                   r"has shape \[96, 64\], config.json implies \[128, 64\]"):
        H.import_hf(d, str(tmp_path / "ckpt"))


def test_missing_tensor(qwen, tmp_path):
    d = _copy(qwen, str(tmp_path / "m"), edit_tensors=lambda t: t.pop("model.layers.1.self_attn.v_proj.bias"))
    with pytest.raises(io.CheckpointError, match=r"tensor model.layers.1.self_attn.v_proj.bias is missing"):
        H.import_hf(d, str(tmp_path / "ckpt"))


def test_unsupported_features_are_refused(qwen, tmp_path):
    d = _copy(qwen, str(tmp_path / "m"), edit_config=lambda c: c.update(
        use_sliding_window=True, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}))
    with pytest.raises(io.CheckpointError, match=r"unsupported: use_sliding_window=true; rope type 'yarn'"):
        H.import_hf(d, str(tmp_path / "ckpt"))


def test_tp_must_divide_heads(qwen, tmp_path):
    with pytest.raises(io.CheckpointError, match=r"TP=4 does not divide num_query_groups=2"):
        H.import_hf(qwen, str(tmp_path / "ckpt"), tp=4)


def test_checkpoint_must_fit_the_run_config(qwen, tmp_path):
    meta = H.import_hf(qwen, str(tmp_path / "ckpt"))
    run = ModelConfig(hidden_size=64, ffn_hidden_size=96, num_attention_heads=4, num_query_groups=2, num_layers=3)
    with pytest.raises(io.CheckpointError, match=r"meml_ckpt.json: model.num_layers=2 in the checkpoint but the "
                                                   r"run's config has model.num_layers=3"):
        io.check_model_matches(meta.model, run, os.path.join(meta.path, io.META))
    with pytest.raises(io.CheckpointError, match=r"meml_ckpt.json: not found"):
        io.read_meta(str(tmp_path))


def test_cli_reports_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "megatron_meml.convert_hf", "import", "--hf-dir",
                        str(tmp_path), "--out", str(tmp_path / "ckpt")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: {tmp_path}/config.json: not found (an HF model directory " \
                                                "needs config.json)"


def test_init_from_hf_names_the_mismatch_and_the_fix(qwen):
    from megatron_meml.config import load_config

    # a shape field set explicitly wins over the folder's config.json, so the mismatch reaches the loader
    cfg = load_config(None, [f"model.init_from_hf={qwen}", "model.ffn_hidden_size=176"])
    with pytest.raises(io.CheckpointError, match=r"config.json: model.ffn_hidden_size=96 in the checkpoint but the "
                                                   r"run's config has model.ffn_hidden_size=176 \(set model.hf_config="):
        H.init_model_weights([], cfg)
