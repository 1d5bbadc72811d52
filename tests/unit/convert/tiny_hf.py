"""Random tiny HF models for the conversion tests (no model hub): Qwen2 with qkv bias, tied embeddings and GQA, and
Llama with llama3 rope scaling and untied embeddings. Every parameter is drawn at random (norm weights around 1,
biases non-zero), so a swapped or mis-split tensor changes the logits."""
from __future__ import annotations

import torch

VOCAB_QWEN = 251  # odd: padded to 256 at TP=2
VOCAB_LLAMA = 203


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.08 * noise)


def qwen2(path: str, layers: int = 2, seed: int = 1, **overrides) -> torch.nn.Module:
    """Qwen2ForCausalLM: hidden 64, 4 heads / 2 kv heads, ffn 96, tied, qkv bias, rope theta 1e6; saved to ``path``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kw = dict(vocab_size=VOCAB_QWEN, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=1e6,
              rms_norm_eps=1e-6, tie_word_embeddings=True)
    kw.update(overrides)
    model = Qwen2ForCausalLM(Qwen2Config(**kw))
    _randomize(model, seed)
    model.save_pretrained(path)
    return model.eval()


def llama(path: str, layers: int = 2, seed: int = 2, max_shard_size=None, **overrides) -> torch.nn.Module:
    """LlamaForCausalLM: hidden 64, 4 heads / 2 kv heads, ffn 96, untied, llama3 rope scaling (factor 32,
    original context 64, so the scaled band covers most frequencies), rms eps 1e-5; saved to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(vocab_size=VOCAB_LLAMA, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=500000.0,
              rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64},
              rms_norm_eps=1e-5, tie_word_embeddings=False)
    kw.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**kw))
    _randomize(model, seed)
    if max_shard_size is None:
        model.save_pretrained(path)
    else:
        model.save_pretrained(path, max_shard_size=max_shard_size)
    return model.eval()
