"""Generated tokens per second: our megatron KV-cache engine vs HF transformers ``generate`` (KV cache), greedy, on
the same tiny Qwen2-shaped model (random weights; both built from the same shape), the same prompts, in one run.

    python tools/bench_rollout.py [--batch 16] [--new-tokens 64] [--layers 2] [--hidden 128] [--repeats 5]
    python tools/bench_rollout.py --batch 48 --group 8 --min-prompt 60 --max-prompt 100 --new-tokens 48  # RIEL-shaped

Prompts have different lengths (HF gets them left-padded with an attention mask, ours right-aligned in its cache);
no stop token is set, so every request generates exactly ``--new-tokens`` tokens in both engines. Runs alternate
(ours, HF, ours, HF, ...) after one warm-up each. Each side's best run (the least disturbed by other processes on a
shared machine) gives the ratio; medians are printed too. One torch thread by default (``--threads 0``: torch's
default), since tiny matmuls on a shared 2-core machine are dominated by thread contention otherwise. The last line
is ``ours/hf tokens per second: <ratio>``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="requests per generation batch")
    p.add_argument("--group", type=int, default=1,
                   help="each distinct prompt repeated this many times (a RIEL step's G samples per prompt)")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per request")
    p.add_argument("--min-prompt", type=int, default=16)
    p.add_argument("--max-prompt", type=int, default=48)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--ffn", type=int, default=352)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=320, help="vocabulary (already a multiple of 64: no padding)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class _Tok:
    """Minimal tokenizer for the engine: no stop token is ever sampled (eos_id outside the vocabulary)."""

    def __init__(self, vocab: int):
        self.vocab_size, self.eos_id, self.pad_id = vocab, vocab, 0

    def decode(self, ids):
        return ""


def build_ours(a):
    from megatron_meml.backend import model as M, parallel
    from megatron_meml.config import load_config

    cfg = load_config(None, [f"model.num_layers={a.layers}", f"model.hidden_size={a.hidden}",
                             f"model.ffn_hidden_size={a.ffn}", f"model.num_attention_heads={a.heads}",
                             f"model.num_query_groups={a.kv_heads}", f"model.vocab_size={a.vocab}",
                             f"model.padded_vocab_size={a.vocab}", "model.max_position_embeddings=1024",
                             f"seed={a.seed}"])
    parallel.initialize(1, 1, seed=cfg.seed)
    return M.build_model(cfg)


def build_hf(a):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(a.seed)
    c = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                    num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=1024,
                    tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0, use_cache=True,
                    bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return Qwen2ForCausalLM(c).eval()


def main(argv=None) -> float:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from megatron_meml.rollout.engine import SamplingParams
    from megatron_meml.rollout.megatron_engine import MegatronEngine
    from megatron_meml.types import Request

    g = torch.Generator().manual_seed(a.seed)
    if a.batch % a.group:
        raise SystemExit("--batch must be a multiple of --group")
    lens = torch.randint(a.min_prompt, a.max_prompt + 1, (a.batch // a.group,), generator=g).tolist()
    prompts = [p for n in lens for p in [torch.randint(1, a.vocab, (n,), generator=g).tolist()] * a.group]
    lens = [len(p) for p in prompts]

    chunks = build_ours(a)
    tok = _Tok(a.vocab)
    engine = MegatronEngine(chunks, tok, token_budget=a.batch * (a.max_prompt + a.new_tokens), stop_token_ids=[])
    requests = [Request(prompt_ids=p, qid=str(i), seed=i) for i, p in enumerate(prompts)]
    params = SamplingParams(max_new_tokens=a.new_tokens, top_k=1)

    hf = build_hf(a)
    P = max(lens)
    ids = torch.zeros(a.batch, P, dtype=torch.long)
    mask = torch.zeros(a.batch, P, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        ids[i, P - len(p):] = torch.tensor(p)
        mask[i, P - len(p):] = 1

    def run_ours():
        t0 = time.perf_counter()
        out = engine.generate(requests, params)
        dt = time.perf_counter() - t0
        n = sum(len(r.response_ids) for r in out)
        assert n == a.batch * a.new_tokens, n
        return n / dt

    def run_hf():
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new_tokens, do_sample=False,
                              use_cache=True, pad_token_id=0, eos_token_id=None)
        dt = time.perf_counter() - t0
        n = (out.shape[1] - P) * a.batch
        assert n == a.batch * a.new_tokens, n
        return n / dt

    run_ours(), run_hf()  # warm-up
    ours, theirs = [], []
    for _ in range(a.repeats):
        ours.append(run_ours())
        theirs.append(run_hf())
    o, h = max(ours), max(theirs)
    print(f"model: {a.layers} layers, hidden {a.hidden}, ffn {a.ffn}, heads {a.heads}/{a.kv_heads}, vocab {a.vocab}; "
          f"batch {a.batch} ({a.batch // a.group} distinct prompts), prompts {min(lens)}..{max(lens)} tokens, "
          f"{a.new_tokens} new tokens, greedy, torch threads {torch.get_num_threads()}, {a.repeats} timed runs each")
    for name, runs in (("ours (megatron static KV cache)", ours), ("hf transformers generate", theirs)):
        print(f"{name:32s} best {max(runs):8.1f}  median {statistics.median(runs):8.1f} tokens/s  "
              f"runs: {', '.join(f'{x:.0f}' for x in runs)}")
    print(f"median ratio: {statistics.median(ours) / statistics.median(theirs):.3f}")
    print(f"ours/hf tokens per second: {o / h:.3f}")
    return o / h


if __name__ == "__main__":
    main()
