"""The pure name/layout arithmetic of the converter: GQA qkv grouping, SwiGLU [gate; up], TP shard rules (incl.
the stride-2 fc1 interleave), vocab padding, pipeline stage split, TE name aliases, the streaming writer."""
import pytest
import torch
from safetensors import safe_open

from megatron_meml.backend.ckpt import checkpoint_io as io
from megatron_meml.backend.ckpt import hf_convert as H

S = H.Shape(layers=4, hidden=3, ffn=4, heads=4, groups=2, head_dim=1, vocab=10, qkv_bias=True, tied=True)


def test_qkv_grouped_per_query_group():
    q = torch.tensor([0., 1., 2., 3.])  # 4 heads, head_dim 1
    k, v = torch.tensor([10., 11.]), torch.tensor([20., 21.])
    qkv = H.merge_qkv(q, k, v, S)
    # group 0: its 2 query heads, k_0, v_0; then group 1
    assert qkv.tolist() == [0., 1., 10., 20., 2., 3., 11., 21.]
    q2, k2, v2 = H.split_qkv(qkv, S)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_qkv_weights_round_trip_with_head_dim():
    s = H.Shape(layers=1, hidden=8, ffn=4, heads=6, groups=2, head_dim=4, vocab=5, qkv_bias=False, tied=False)
    q, k, v = torch.randn(24, 8), torch.randn(8, 8), torch.randn(8, 8)
    qkv = H.merge_qkv(q, k, v, s)
    assert qkv.shape == (2 * (3 + 2) * 4, 8)
    assert torch.equal(qkv[12:16], k[:4]) and torch.equal(qkv[16:20], v[:4])  # group 0 rows: q(12) k(4) v(4)
    assert all(torch.equal(a, b) for a, b in zip(H.split_qkv(qkv, s), (q, k, v)))


def test_fc1_is_gate_then_up_and_shards_interleave():
    gate, up = torch.arange(4.).view(4, 1), torch.arange(10., 14.).view(4, 1)
    fc1 = H.to_megatron("decoder.layers.0.mlp.linear_fc1.weight", [gate, up], S, 10)
    assert fc1.view(-1).tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    r0 = io.tp_shard(fc1, "decoder.layers.0.mlp.linear_fc1.weight", 2, 0)
    r1 = io.tp_shard(fc1, "decoder.layers.0.mlp.linear_fc1.weight", 2, 1)
    assert r0.view(-1).tolist() == [0, 1, 10, 11] and r1.view(-1).tolist() == [2, 3, 12, 13]  # [gate_r; up_r]
    assert torch.equal(io.tp_unshard([r0, r1], "decoder.layers.0.mlp.linear_fc1.weight"), fc1)
    out = dict(H.to_hf("decoder.layers.0.mlp.linear_fc1.weight", fc1, S))
    assert torch.equal(out["model.layers.0.mlp.gate_proj.weight"], gate)


@pytest.mark.parametrize("name,dim,stride", [
    ("embedding.word_embeddings.weight", 0, 1), ("output_layer.weight", 0, 1),
    ("decoder.layers.3.self_attention.linear_qkv.weight", 0, 1), ("decoder.layers.3.self_attention.linear_qkv.bias", 0, 1),
    ("decoder.layers.3.mlp.linear_fc1.weight", 0, 2), ("decoder.layers.3.self_attention.linear_proj.weight", 1, 1),
    ("decoder.layers.3.mlp.linear_fc2.weight", 1, 1), ("decoder.layers.3.input_layernorm.weight", None, 1),
    ("decoder.layers.3.pre_mlp_layernorm.weight", None, 1), ("decoder.final_layernorm.weight", None, 1),
    ("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight", None, 1),
])
def test_tp_layout_and_round_trip(name, dim, stride):
    assert io.tp_layout(name) == (dim, stride)
    full = torch.randn(8, 12)
    for tp in (1, 2, 4):
        parts = [io.tp_shard(full, name, tp, r) for r in range(tp)]
        if dim is None or tp == 1:
            assert all(p is full for p in parts)
        else:
            assert parts[0].shape[dim] == full.shape[dim] // tp
        assert torch.equal(io.tp_unshard(parts, name), full)


def test_shard_rejects_indivisible():
    with pytest.raises(io.CheckpointError, match="linear_fc1.weight"):
        io.tp_shard(torch.zeros(6, 2), "decoder.layers.0.mlp.linear_fc1.weight", 2, 0)


def test_vocab_padding_rule_and_fit():
    assert io.padded_vocab(151936, 8) == 151936 and io.padded_vocab(128256, 4) == 128256
    assert io.padded_vocab(251, 1) == 251 and io.padded_vocab(251, 2) == 256 and io.padded_vocab(203, 4) == 256
    emb = torch.randn(10, 3)
    padded = io.fit_vocab(emb, "embedding.word_embeddings.weight", 10, 16)
    assert padded.shape == (16, 3) and torch.equal(padded[:10], emb) and not padded[10:].any()
    assert torch.equal(io.fit_vocab(padded, "embedding.word_embeddings.weight", 10, 12), padded[:12])
    with pytest.raises(io.CheckpointError, match="vocab rows"):
        io.fit_vocab(emb, "output_layer.weight", 10, 8)
    assert [n for n, _ in H.to_hf("embedding.word_embeddings.weight", padded, S)] == ["model.embed_tokens.weight"]
    assert H.to_hf("embedding.word_embeddings.weight", padded, S)[0][1].shape == (10, 3)


def test_names_per_stage():
    all_names = H.megatron_names(S)
    assert all_names[0] == "embedding.word_embeddings.weight" and all_names[-1] == "decoder.final_layernorm.weight"
    assert len(all_names) == 2 + 4 * 7  # tied: no output_layer
    stages = [H.megatron_names(S, st, 2) for st in range(2)]
    assert stages[0] + stages[1] == all_names
    assert "decoder.layers.2.input_layernorm.weight" in stages[1] and "decoder.layers.1.mlp.linear_fc2.weight" in stages[0]
    untied = H.Shape(**dict(S.__dict__, tied=False, qkv_bias=False))
    names = H.megatron_names(untied)
    assert names[-1] == "output_layer.weight" and not any(n.endswith("linear_qkv.bias") for n in names)
    assert H.hf_sources("decoder.layers.2.self_attention.linear_qkv.bias") == [
        "model.layers.2.self_attn.q_proj.bias", "model.layers.2.self_attn.k_proj.bias",
        "model.layers.2.self_attn.v_proj.bias"]
    assert H.megatron_shape("decoder.layers.0.self_attention.linear_qkv.weight", S, 16) == [8, 3]
    with pytest.raises(io.CheckpointError, match="PP=3"):
        H.megatron_names(S, 0, 3)


def test_te_names_map_to_local_names():
    assert io.canonical_name("decoder.layers.5.self_attention.linear_qkv.layer_norm_weight") == \
        "decoder.layers.5.input_layernorm.weight"
    assert io.canonical_name("decoder.layers.5.mlp.linear_fc1.layer_norm_weight") == \
        "decoder.layers.5.pre_mlp_layernorm.weight"
    assert io.canonical_name("decoder.layers.5.mlp.linear_fc1.weight") == "decoder.layers.5.mlp.linear_fc1.weight"


def test_streaming_writer_is_valid_safetensors(tmp_path):
    path = str(tmp_path / "x.safetensors")
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).bfloat16(), "c": torch.arange(6, dtype=torch.int64)}
    with io.SafetensorsWriter(path, [(k, v.dtype, v.shape) for k, v in tensors.items()], {"format": "pt"}) as w:
        for k, v in tensors.items():
            w.write(k, v)
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt"} and set(f.keys()) == set(tensors)
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v)


def test_streaming_writer_errors(tmp_path):
    w = io.SafetensorsWriter(str(tmp_path / "y.safetensors"), [("a", torch.float32, [2]), ("b", torch.float32, [2])])
    with pytest.raises(io.CheckpointError, match="expected tensor a next, got b"):
        w.write("b", torch.zeros(2))
    with pytest.raises(io.CheckpointError, match=r"tensor a is \(3,\)"):
        w.write("a", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(io.CheckpointError, match="only 1 of 2 tensors"):
        w.close()


@pytest.mark.parametrize("family,expect", [
    ("qwen2.5", dict(layers=28, hidden=1536, ffn=8960, heads=12, groups=2, head_dim=128, vocab=151936,
                     qkv_bias=True, tied=True)),
    ("llama3", dict(layers=16, hidden=2048, ffn=8192, heads=32, groups=8, head_dim=64, vocab=128256,
                    qkv_bias=False, tied=True)),
])
def test_shared_configs_map_to_shapes(family, expect):
    """The real Qwen2.5-1.5B (transformers 4 style) and Llama-3.2-1B configs parse into the shapes and rope."""
    import os
    from tests.conftest import DATA

    c, fields = H.read_hf_config(os.path.join(DATA, "tokenizers", family, "config.json"))
    assert H.Shape.of(fields) == H.Shape(**expect)
    if family == "llama3":
        assert fields["rope_scaling"] == "llama3" and fields["rope_scaling_factor"] == 32.0
        assert fields["rotary_base"] == 500000.0 and io.padded_vocab(fields["vocab_size"], 8) == 128256
    else:
        assert fields["rotary_base"] == 1e6 and "rope_scaling" not in fields and fields["norm_epsilon"] == 1e-6
