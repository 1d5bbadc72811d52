"""Backend unit tests. Each runs in a fresh process: the CPU runtime changes process-global torch state."""
import os

import pytest

from tests.conftest import DATA
from tests.distributed.launcher import spawn

QWEN = os.path.join(DATA, "tokenizers", "qwen2.5", "config.json")
LLAMA = os.path.join(DATA, "tokenizers", "llama3", "config.json")
needs_data = pytest.mark.skipif(not os.path.exists(QWEN), reason=f"shared data not found at {DATA} (set MEML_DATA)")


def test_cpu_runtime_lists_and_applies_every_change():
    r = spawn("tests.unit.backend.workers:cpu_runtime_changes", 1)[0]
    assert len(r["changes"]) == 6
    assert r["max_connections"] == "1"
    for key in ("factory_cuda", "factory_cuda_index", "factory_int", "tensor_cuda", "tensor_to_cuda"):
        assert r[key] == "cpu", key
    assert r["pin_memory"] is False
    assert r["before_type"] == "torch.FloatTensor" and r["type"] == "torch.cuda.FloatTensor"
    assert r["current_device"] == "cpu"
    assert r["event_ms"] >= 0 and r["stream_ok"] and r["current_stream"] == "_Stream"
    assert r["rng_is_cpu_generator"] and r["rng_restore"] and r["tracker_rng_restore"]


def test_cpu_runtime_is_off_with_cuda(monkeypatch):
    """On a CUDA machine activate() must change nothing."""
    import torch

    from megatron_meml.backend.runtime import cpu_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpu_runtime, "_ACTIVE", False)
    before = torch.cuda.current_device
    assert cpu_runtime.activate() is False
    assert torch.cuda.current_device is before


@needs_data
def test_qwen25_1p5b_parameter_count():
    r = spawn("tests.unit.backend.workers:count_params", 1, hf_config=QWEN)[0]
    assert r["padded_vocab"] == 151936 and r["tied"]
    assert r["params"] == 1_543_714_304
    assert "output_layer.weight" not in r["names"]  # tied
    assert any(n.endswith("linear_qkv.bias") for n in r["names"])  # Qwen2 qkv bias


@needs_data
def test_llama32_1b_parameter_count():
    r = spawn("tests.unit.backend.workers:count_params", 1, hf_config=LLAMA)[0]
    assert r["rope_scaling"] == "llama3" and r["tied"]
    assert r["params"] == 1_235_814_400
    assert not any(n.endswith("linear_qkv.bias") for n in r["names"])


@pytest.mark.parametrize("factor,low,high,orig", [(32.0, 1.0, 4.0, 8192), (8.0, 2.0, 8.0, 4096)])
def test_llama3_rope_scaling_matches_hf_formula(factor, low, high, orig):
    r = spawn("tests.unit.backend.workers:llama3_rope", 1, factor=factor, low=low, high=high, orig=orig)[0]
    assert max(abs(a - b) / b for a, b in zip(r["ours"], r["ref"])) < 1e-6


def test_nonfinite_gradients_are_detected():
    r = spawn("tests.unit.backend.workers:nonfinite_guard", 1)[0]
    assert (r["nan"], r["finite"]) == (False, True)
    assert r["skip"] == (False, True, 1, "RIEL step 7: non-finite gradients, step skipped (1 in a row)")
    assert r["abort"] == "RIEL: 2 consecutive non-finite steps (riel.max_nonfinite_steps=1); aborting"
    assert r["untouched"] and r["step"] == (True, True, 0)


def test_finished_stage_checkpoint_restores_trained_weights(tmp_path):
    r = spawn("tests.unit.backend.workers:finished_stage_weights", 1, run_dir=str(tmp_path))[0]
    assert r["loaded"] and r["moved"] > 1e-4 and r["after_vs_trained"] == 0.0


def test_sdpa_attention_matches_megatron_attention():
    """model.attention_impl=sdpa computes megatron's DotProductAttention: causal training, explicit padding masks
    (finite even on fully masked rows), KV-cache decode with and without a mask, GQA; values and gradients."""
    r = spawn("tests.unit.backend.workers:sdpa_matches_megatron_attention", 1)[0]
    for case in ("causal", "explicit_mask", "decode_no_mask", "decode_mask"):
        assert r[case]["shape"] and r[case]["finite"], case
        assert r[case]["out"] <= 1e-5 and r[case]["grad"] <= 1e-5, (case, r[case])
    assert r["model"]["types"] == ("SDPAttention", "DotProductAttention")
    assert r["model"]["logits"] <= 1e-5 and r["model"]["grads"] <= 1e-5, r["model"]
