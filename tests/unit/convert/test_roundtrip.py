"""HF -> checkpoint (any TP/PP) -> HF is bit-identical (same keys, torch.equal per tensor, tied lm_head left out as
HF does), and what we export is an HF model transformers loads with the same logits and config."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from megatron_meml.backend.ckpt import checkpoint_io as io
from megatron_meml.backend.ckpt import hf_convert as H

from . import tiny_hf


def _hf_tensors(d):
    files = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    out = {}
    for f in files:
        out.update(load_file(os.path.join(d, f)))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    q, l = str(root / "qwen2"), str(root / "llama")
    return {"qwen2": (q, tiny_hf.qwen2(q)), "llama": (l, tiny_hf.llama(l))}


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (2, 2)])
def test_import_export_is_bit_identical(models, arch, tp, pp, tmp_path):
    src, _ = models[arch]
    meta = H.import_hf(src, str(tmp_path / "ckpt"), tp, pp)
    assert (meta.tp, meta.pp) == (tp, pp) and len(meta.shards) == tp * pp
    assert meta.padded_vocab_size == io.padded_vocab(meta.vocab_size, tp)
    # each rank's file holds exactly its slice of its stage
    emb = io.read_tensor(str(tmp_path / "ckpt" / io.shard_file(tp - 1, 0)), "embedding.word_embeddings.weight")
    assert emb.shape[0] == meta.padded_vocab_size // tp
    H.export_hf(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    a, b = _hf_tensors(src), _hf_tensors(str(tmp_path / "out"))
    assert set(a) == set(b)
    assert ("lm_head.weight" in b) == (arch == "llama")  # tied Qwen2: no lm_head, as save_pretrained writes it
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_export_loads_in_transformers_with_same_logits(models, arch, tmp_path):
    from transformers import AutoModelForCausalLM

    src, ref = models[arch]
    H.import_hf(src, str(tmp_path / "ckpt"), 2, 2)
    H.export_hf(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    got = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    assert got.config.rope_parameters == ref.config.rope_parameters
    assert got.config.rms_norm_eps == ref.config.rms_norm_eps
    assert got.config.tie_word_embeddings == ref.config.tie_word_embeddings
    tokens = torch.randint(0, ref.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(got(input_ids=tokens).logits, ref(input_ids=tokens).logits)


def test_synthesized_config_round_trips_rope_and_eps(models, tmp_path):
    """A checkpoint without the original config.json (e.g. written by the trainer) exports a config.json from the
    stored model fields that transformers reads back to the same rope theta / llama3 scaling / eps."""
    from transformers import AutoModelForCausalLM

    src, ref = models["llama"]
    H.import_hf(src, str(tmp_path / "ckpt"), 1, 1)
    os.remove(tmp_path / "ckpt" / "hf_config.json")
    H.export_hf(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    cfg = json.load(open(tmp_path / "out" / "config.json"))
    assert cfg["rope_theta"] == 500000.0 and cfg["rope_scaling"]["rope_type"] == "llama3"
    got = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    for k in ("rope_theta", "rope_type", "factor", "low_freq_factor", "high_freq_factor",
              "original_max_position_embeddings"):
        assert got.config.rope_parameters[k] == ref.config.rope_parameters[k], k
    assert got.config.rms_norm_eps == 1e-5 and got.config.head_dim == 16
    tokens = torch.randint(0, 203, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(got(input_ids=tokens).logits, ref(input_ids=tokens).logits)


def test_multi_file_index_in_and_out(tmp_path):
    """HF-style sharded input (model-0000i-of-0000n + index json) and sharded export above max_shard_bytes."""
    from transformers import AutoModelForCausalLM

    src = str(tmp_path / "hf")
    ref = tiny_hf.llama(src, max_shard_size="60KB")
    assert os.path.isfile(os.path.join(src, "model.safetensors.index.json"))
    H.import_hf(src, str(tmp_path / "ckpt"), 2, 1)
    files = H.export_hf(str(tmp_path / "ckpt"), str(tmp_path / "out"), max_shard_bytes=60_000)
    assert len(files) > 1 and all(os.path.basename(f).startswith("model-0000") for f in files)
    index = json.load(open(tmp_path / "out" / "model.safetensors.index.json"))
    a, b = _hf_tensors(src), _hf_tensors(str(tmp_path / "out"))
    assert set(index["weight_map"]) == set(a) == set(b)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    got = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    tokens = torch.randint(0, 203, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(got(input_ids=tokens).logits, ref(input_ids=tokens).logits)


def test_dtype_cast_on_import(models, tmp_path):
    src, _ = models["qwen2"]
    H.import_hf(src, str(tmp_path / "ckpt"), 2, 1, dtype=torch.bfloat16)
    H.export_hf(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    a, b = _hf_tensors(src), _hf_tensors(str(tmp_path / "out"))
    assert all(b[k].dtype == torch.bfloat16 and torch.equal(a[k].bfloat16(), b[k]) for k in a)
    assert json.load(open(tmp_path / "out" / "config.json"))["dtype"] == "bfloat16"


def test_checkpoint_fields_come_from_config_json(models, tmp_path):
    src, _ = models["llama"]
    meta = H.import_hf(src, str(tmp_path / "ckpt"), 1, 2)
    m = meta.model
    assert m["arch"] == "llama" and m["rotary_base"] == 500000.0 and m["rope_scaling"] == "llama3"
    assert m["rope_scaling_factor"] == 32.0 and m["rope_original_max_position"] == 64
    assert m["norm_epsilon"] == 1e-5 and m["tie_word_embeddings"] is False and m["add_qkv_bias"] is False
    assert m["kv_channels"] == 16 and m["num_query_groups"] == 2 and meta.vocab_size == 203
    cfg = H.config_for(dict(m, vocab_size=meta.vocab_size), tp=2, pp=2)
    assert cfg.model.padded_vocab_size == 256 and cfg.model.rope_low_freq_factor == 1.0
