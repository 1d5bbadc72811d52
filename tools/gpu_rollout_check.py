"""Rollout throughput and memory-bandwidth utilisation on one GPU (a step of tools/gpu_check.sh, ~4 minutes).

    python tools/gpu_rollout_check.py [--requests 256] [--prompt 128] [--new 512] [--layers 28] [--hf-new 512]
    python tools/gpu_rollout_check.py --tiny          # CPU-safe dry run of every part on a tiny shape

Model: Qwen2.5-1.5B-shaped megatron GPTModel (28 layers, hidden 1536, FFN 8960, 12 heads, 2 KV groups, head dim 128,
vocab 151936, tied embeddings, QKV bias, RoPE base 1e6), random weights, bf16. Workload: ``--requests`` concurrent
requests of ``--prompt`` random tokens (one prompt per request), greedy, no stop token, exactly ``--new`` new
tokens each, with the continuous engine (CUDA graphs on, Triton decode attention).

Measured, in this order:
  1. copy bandwidth BW: a 1 GiB device-to-device copy, best of 5 (bytes read + written / time);
  2. ours: ``generate`` with ``--new`` tokens (T_full) and with 1 token (T_prefill: prefill + first sample);
     decode step time = (T_full - T_prefill) / (new - 1); output tokens/s = requests * new / T_full;
  3. MBU = (weight bytes + KV bytes read per decode step) / decode step time / BW, where the KV bytes of a step
     are Σ_rows context_len · (layers · 2 · kv_heads · head_dim · 2 B), averaged over the decode steps (context
     grows from prompt + 1 to prompt + new - 1) and the weights are every parameter once (tied LM head counted once);
  4. HF transformers ``generate`` on the same GPU, batch and prompts (``--hf-new`` tokens, greedy, static KV off:
     its default dynamic cache), when transformers imports.
Every part catches its own errors; the last line is always one markdown table row:
``| rollout | requests | new | ours tok/s | step ms | MBU | BW GB/s | HF tok/s | ours/HF | notes |``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=512)
    p.add_argument("--hf-new", type=int, default=512)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--ffn", type=int, default=8960)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--deadline", type=float, default=200.0, help="seconds; HF is skipped when ours ran past it")
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--tiny", action="store_true", help="CPU dry run: 2 layers, hidden 128, 8 requests, 16 tokens")
    a = p.parse_args(argv)
    if a.tiny:
        a.requests, a.prompt, a.new, a.hf_new, a.layers, a.hidden, a.ffn, a.heads, a.kv_heads, a.vocab = \
            8, 16, 16, 16, 2, 128, 256, 4, 2, 512
    return a


def copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """Bytes/s of a device-to-device copy (read + write), best of 5."""
    import torch

    n = nbytes // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 2 / best


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def build_ours(a):
    from megatron_meml.backend import model as M, parallel
    from megatron_meml.config import load_config

    dtype = "bf16" if not a.tiny else "fp32"
    cfg = load_config(None, [
        f"model.num_layers={a.layers}", f"model.hidden_size={a.hidden}", f"model.ffn_hidden_size={a.ffn}",
        f"model.num_attention_heads={a.heads}", f"model.num_query_groups={a.kv_heads}", f"model.vocab_size={a.vocab}",
        f"model.padded_vocab_size={a.vocab}", "model.add_qkv_bias=true", "model.rotary_base=1000000",
        "model.tie_word_embeddings=true", f"model.max_position_embeddings={max(4096, a.prompt + a.new)}",
        f"precision.dtype={dtype}", "seed=0"])
    parallel.initialize(1, 1, seed=0)
    model = M.build_gpt(cfg)  # megatron's own (device-side) init: random weights, no DDP wrapper needed here
    import torch

    if torch.cuda.is_available():
        model.cuda()
    return cfg, [model]


class _Tok:
    def __init__(self, vocab):
        self.vocab_size, self.eos_id = vocab, vocab

    def decode(self, ids):
        return ""


def run_ours(a, chunks, prompts, device):
    import torch

    from megatron_meml.rollout.continuous_engine import ContinuousEngine
    from megatron_meml.rollout.engine import SamplingParams
    from megatron_meml.types import Request

    eng = ContinuousEngine(chunks, _Tok(a.vocab), token_budget=a.requests * (a.prompt + a.new), stop_token_ids=[],
                           cuda_graphs=not a.no_graphs, keep_cache=True)  # graphs captured once, in the warm-up
    reqs = [Request(prompt_ids=p, qid=str(i), seed=i) for i, p in enumerate(prompts)]

    def timed(new):
        _sync(device)
        t0 = time.perf_counter()
        out = eng.generate(reqs, SamplingParams(max_new_tokens=new, top_k=1))
        _sync(device)
        assert sum(len(r.response_ids) for r in out) == len(reqs) * new
        return time.perf_counter() - t0

    timed(min(a.new, 8))             # warm-up: Triton compile, CUDA-graph capture of the buckets used
    t_pre = min(timed(1) for _ in range(2))
    t_full = timed(a.new)
    graphs = len(eng._model._graphs) if eng._model is not None else 0
    stats = dict(eng.last_stats)
    eng.release()
    return t_full, t_pre, graphs, stats


def weight_bytes(chunks) -> int:
    seen, total = set(), 0
    for c in chunks:
        for p in c.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
    return total


def run_hf(a, prompts, device):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      max_position_embeddings=max(4096, a.prompt + a.hf_new), tie_word_embeddings=True,
                      rope_theta=1000000.0, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)

    def go(new):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
        _sync(device)
        assert out.shape[1] - ids.shape[1] == new
        return time.perf_counter() - t0

    go(4)
    dt = go(a.hf_new)
    del model
    return len(prompts) * a.hf_new / dt


def main(argv=None):
    a = parse_args(argv)
    from megatron_meml.versions import require_supported

    require_supported()
    t_start = time.perf_counter()
    row = {"requests": a.requests, "new": a.new}
    notes = []
    try:
        import torch

        if not a.tiny and not torch.cuda.is_available():
            raise RuntimeError("needs CUDA (use --tiny for the CPU dry run)")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if a.tiny:
            torch.set_num_threads(1)
        row["bw_gbs"] = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 24)) / 1e9
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(1, a.vocab, (a.requests, a.prompt), generator=g).tolist()
        try:
            cfg, chunks = build_ours(a)
            t_full, t_pre, graphs, stats = run_ours(a, chunks, prompts, device)
            step = (t_full - t_pre) / max(a.new - 1, 1)
            kv_token = a.layers * 2 * a.kv_heads * (a.hidden // a.heads) * (2 if device.type == "cuda" else 4)
            avg_ctx = a.prompt + a.new / 2
            bytes_step = weight_bytes(chunks) + a.requests * avg_ctx * kv_token
            row.update(ours_tok_s=a.requests * a.new / t_full, step_ms=1e3 * step, t_full=t_full, t_prefill=t_pre,
                       graphs=graphs, gb_per_step=bytes_step / 1e9, mbu=bytes_step / step / (row["bw_gbs"] * 1e9),
                       decode_steps=stats.get("decode_steps"), peak_slots=stats.get("peak_slots"))
            del chunks
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 -- report and go on to the baseline
            traceback.print_exc()
            notes.append(f"ours failed: {type(exc).__name__}: {exc}"[:160])
        if time.perf_counter() - t_start > a.deadline:
            notes.append("HF skipped (deadline)")
        else:
            try:
                row["hf_tok_s"] = run_hf(a, prompts, device)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                notes.append(f"HF failed: {type(exc).__name__}: {exc}"[:160])
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        notes.append(f"{type(exc).__name__}: {exc}"[:160])
    row["seconds"] = time.perf_counter() - t_start
    print(json.dumps(row))

    def f(k, fmt):
        return fmt.format(row[k]) if k in row else "-"

    ratio = f"{row['ours_tok_s'] / row['hf_tok_s']:.2f}" if "ours_tok_s" in row and "hf_tok_s" in row else "-"
    notes.append(f"graphs={row.get('graphs', '-')}, {row['seconds']:.0f}s")
    print("| rollout | requests | new | ours tok/s | step ms | MBU | BW GB/s | HF tok/s | ours/HF | notes |")
    print(f"| rollout | {a.requests} | {a.new} | {f('ours_tok_s', '{:.0f}')} | {f('step_ms', '{:.2f}')} | "
          f"{f('mbu', '{:.1%}')} | {f('bw_gbs', '{:.0f}')} | {f('hf_tok_s', '{:.0f}')} | {ratio} | "
          f"{'; '.join(notes)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
