"""Rollout throughput and memory-bandwidth utilisation on one GPU (a step of tools/gpu_check.sh, ~2 minutes).

    python -m megatron_meml.gpu.rollout_check [--requests 256] [--prompt 128] [--new 512] [--layers 28] [--json OUT.json]
    python -m megatron_meml.gpu.rollout_check --tiny          # CPU-safe dry run of every part on a tiny shape

Model: Qwen2.5-1.5B-shaped megatron GPTModel (28 layers, hidden 1536, FFN 8960, 12 heads, 2 KV groups, head dim 128,
vocab 151936, tied embeddings, QKV bias, RoPE base 1e6), random weights, bf16. Workload: ``--requests`` concurrent
requests of ``--prompt`` random tokens (one prompt per request), greedy, no stop token, exactly ``--new`` new
tokens each, with the continuous engine (CUDA graphs on, Triton decode attention), its KV pool kept between calls.

Parts, in this order, each catching its own errors; the JSON (``--json``) is rewritten after each one:
  1. ceilings: copy bandwidth BW, a 1 GiB device-to-device copy, best of 5 (bytes read + written / time);
  2. ours: a warm-up ``generate`` at the FULL length (the pool at its final size, every CUDA graph the run uses
     captured, every Triton kernel compiled; ``SlotModel._capture`` is timed per bucket: ``capture_s``, reported
     apart), then with 1 token (T_prefill: prefill + first sample, best of 2) and with ``--new`` tokens (T_full).
     Decode step time = (T_full - T_prefill) / (decode steps of the full call - decode steps of the 1-token call),
     the decode forwards the engine actually ran (``last_stats``), not ``new - 1``; output tokens/s =
     requests * new / T_full; ``graphs_captured_in_timed`` must be 0 (no capture inside a timed call);
  3. MBU = bytes per decode step / decode step time / BW, bytes = weights (every parameter once, tied LM head once)
     + KV read (Σ_rows context · layers · 2 · kv_heads · head_dim · e, context averaged over the decode steps:
     prompt + new/2) + the logits traffic, ``logits_traffic_bytes``: the output GEMM writes [B, V] in the model
     dtype, ``.float()`` reads it and writes fp32, the graph's output ``clone`` reads and writes fp32, the sampler
     reads it twice (argmax, log-softmax for the log-prob): B·V·(2e + 4 + 8 + 8). ``mbu_without_logits`` beside it;
  4. decode kernel: ``meml_kernels.decode_attention`` (Triton) against its torch reference at the real shape (q
     [requests, heads, head_dim], caches [requests, groups, prompt + new, head_dim], ragged lengths in
     [prompt + 1, prompt + new]): max |diff| (fp32 reference), time of each and the kernel's KV bandwidth / BW;
  5. HF transformers ``generate`` on the same GPU, batch and prompts (``--hf-new`` tokens, greedy, its default
     dynamic cache), when transformers imports and time is left before ``--deadline``.
The last stdout line is one markdown table row:
``| rollout | requests | new | ours tok/s | step ms | MBU | BW GB/s | HF tok/s | ours/HF | notes |``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from megatron_meml.backend.runtime.compat import quiet_library_notes

quiet_library_notes()  # before megatron-core loads below: its TE / apex notes would precede the version check's line

from megatron_meml.backend.infer import slot_model
from megatron_meml.backend.runtime import parallel
from megatron_meml.backend.train import model as M
from megatron_meml.config import load_config
from megatron_meml.rollout.api import SamplingParams
from megatron_meml.rollout.continuous_engine import ContinuousEngine
from megatron_meml.types import Request
from megatron_meml.versions import require_supported


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
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "/tmp/out"), "rollout_check.json"))
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


def logits_traffic_bytes(rows: int, vocab: int, elem: int) -> float:
    """HBM bytes the logits of one decode step move (docstring, part 3): GEMM write (e), ``.float()`` read + fp32
    write (e + 4), the graph output's clone (4 + 4), two sampler reads (4 + 4)."""
    return float(rows) * vocab * (2 * elem + 4 + 8 + 8)


def build_ours(a):
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


def run_ours(a, chunks, prompts, device) -> dict:
    """Part 2 (docstring): warm-up at the full length, then T_prefill and T_full; capture times apart."""
    captures = []
    original = slot_model.SlotModel._capture

    def timed_capture(self, bucket):            # instrumentation only: the same capture, timed
        _sync(device)
        t0 = time.perf_counter()
        original(self, bucket)
        _sync(device)
        captures.append((bucket, time.perf_counter() - t0))

    slot_model.SlotModel._capture = timed_capture
    eng = ContinuousEngine(chunks, _Tok(a.vocab), token_budget=a.requests * (a.prompt + a.new), stop_token_ids=[],
                           cuda_graphs=not a.no_graphs, keep_cache=True)
    reqs = [Request(prompt_ids=p, qid=str(i), seed=i) for i, p in enumerate(prompts)]

    def timed(new):
        _sync(device)
        t0 = time.perf_counter()
        out = eng.generate(reqs, SamplingParams(max_new_tokens=new, top_k=1))
        _sync(device)
        dt = time.perf_counter() - t0
        assert sum(len(r.response_ids) for r in out) == len(reqs) * new
        return dt, dict(eng.last_stats)

    try:
        t_warm, _ = timed(a.new)                # warm-up at the full length (pool, graphs, kernels)
        n_warm = len(captures)
        t_pre, st_pre = min((timed(1) for _ in range(2)), key=lambda r: r[0])
        t_full, st_full = timed(a.new)
    finally:
        slot_model.SlotModel._capture = original
        eng.release()
    steps = st_full.get("decode_steps", 0) - st_pre.get("decode_steps", 0)
    return dict(t_warmup=t_warm, t_prefill=t_pre, t_full=t_full, decode_s=t_full - t_pre,
                decode_steps=steps, decode_steps_full=st_full.get("decode_steps"),
                prefill_steps=st_full.get("prefill_steps"), peak_slots=st_full.get("peak_slots"),
                step_ms=1e3 * (t_full - t_pre) / max(steps, 1), ours_tok_s=a.requests * a.new / t_full,
                capture_s=sum(dt for _, dt in captures[:n_warm]), graphs=n_warm,
                capture_buckets=[b for b, _ in captures[:n_warm]], graphs_captured_in_timed=len(captures) - n_warm)


def decode_kernel_check(a, device, bw: float) -> dict:
    """Part 4 (docstring): the Triton decode kernel against its reference at the run's shape."""
    import torch
    from meml_kernels.decode_attention import decode_attention

    g = torch.Generator(device="cpu").manual_seed(1)
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    hd, C, B = a.hidden // a.heads, a.prompt + a.new, a.requests
    q = torch.randn(B, a.heads, hd, generator=g).to(device, dt)
    k = torch.randn(B, a.kv_heads, C, hd, generator=g).to(device, dt)
    v = torch.randn(B, a.kv_heads, C, hd, generator=g).to(device, dt)
    lengths = torch.randint(a.prompt + 1, C + 1, (B,), generator=g).to(device)
    scale = hd ** -0.5
    ours = decode_attention(q, k, v, lengths, scale, max_len=C, impl="triton")
    ref = decode_attention(q.float(), k.float(), v.float(), lengths, scale, max_len=C, impl="torch")
    err = (ours.float() - ref).abs().max().item()

    def best(fn, n):            # the correctness calls above were the warm-up (compile / autotune)
        times = []
        for _ in range(n):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return min(times)

    n = 20 if device.type == "cuda" else 1      # the CPU runs the kernel in Triton's interpreter: one timing
    t_ours = best(lambda: decode_attention(q, k, v, lengths, scale, max_len=C, impl="triton"), n)
    t_ref = best(lambda: decode_attention(q, k, v, lengths, scale, max_len=C, impl="torch"), n)
    kv_bytes = float(lengths.sum().item()) * a.kv_heads * hd * 2 * q.element_size()
    return dict(shape=dict(q=list(q.shape), cache=list(k.shape), dtype=str(dt)), max_abs_err=err,
                ok=bool(err < (2e-2 if dt == torch.bfloat16 else 1e-4)), kernel_ms=1e3 * t_ours,
                reference_ms=1e3 * t_ref, speedup=t_ref / t_ours, kernel_kv_gbs=kv_bytes / t_ours / 1e9,
                kernel_bw_fraction=kv_bytes / t_ours / bw)


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


def summary(row: dict) -> str:
    parts = []
    if "ours_tok_s" in row:
        parts.append(f"{row['ours_tok_s']:.0f} tok/s, step {row['step_ms']:.2f} ms over {row['decode_steps']} decode "
                     f"steps, MBU {row['mbu']:.1%} ({row['mbu_without_logits']:.1%} without logits), capture "
                     f"{row['capture_s']:.1f} s ({row['graphs']} graphs)")
    if "kernel" in row:
        k = row["kernel"]
        parts.append(f"decode kernel err {k['max_abs_err']:.1e} {'ok' if k['ok'] else 'TOO LARGE'}, "
                     f"{k['speedup']:.1f}x ref, {k['kernel_bw_fraction']:.0%} BW")
    if "hf_tok_s" in row:
        parts.append(f"HF {row['hf_tok_s']:.0f} tok/s" + (f" (ours {row['ours_tok_s'] / row['hf_tok_s']:.2f}x)"
                                                         if "ours_tok_s" in row else ""))
    return "; ".join(parts + row.get("notes", [])) or "no part finished"


def main(argv=None):
    a = parse_args(argv)
    require_supported()
    t_start = time.perf_counter()
    row = {"requests": a.requests, "prompt": a.prompt, "new": a.new, "layers": a.layers, "hidden": a.hidden,
           "vocab": a.vocab, "tiny": a.tiny, "notes": []}
    notes = row["notes"]

    def save():          # after every part: a run cut short keeps what it measured
        row["seconds"] = time.perf_counter() - t_start
        row["summary"] = summary(row)
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json + ".tmp", "w") as f:
            json.dump(row, f, indent=1)
        os.replace(a.json + ".tmp", a.json)

    try:
        import torch

        if not a.tiny and not torch.cuda.is_available():
            raise RuntimeError("needs CUDA (use --tiny for the CPU dry run)")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        row["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
        if a.tiny:
            torch.set_num_threads(1)
        row["bw_gbs"] = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 24)) / 1e9
        save()
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(1, a.vocab, (a.requests, a.prompt), generator=g).tolist()
        try:
            cfg, chunks = build_ours(a)
            row.update(run_ours(a, chunks, prompts, device))
            e = 2 if device.type == "cuda" else 4
            kv_token = a.layers * 2 * a.kv_heads * (a.hidden // a.heads) * e
            avg_ctx = a.prompt + a.new / 2
            rows = row["peak_slots"] or a.requests
            weights, kv = weight_bytes(chunks), a.requests * avg_ctx * kv_token
            logits = logits_traffic_bytes(rows, a.vocab, e)
            step_s, bw = row["step_ms"] / 1e3, row["bw_gbs"] * 1e9
            row.update(weight_bytes=weights, kv_bytes_per_step=kv, logits_bytes_per_step=logits,
                       gb_per_step=(weights + kv + logits) / 1e9, mbu=(weights + kv + logits) / step_s / bw,
                       mbu_without_logits=(weights + kv) / step_s / bw)
            del chunks
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 -- report and go on to the kernel check and the baseline
            traceback.print_exc()
            notes.append(f"ours failed: {type(exc).__name__}: {exc}"[:160])
        save()
        try:
            row["kernel"] = decode_kernel_check(a, device, row["bw_gbs"] * 1e9)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            notes.append(f"decode kernel check failed: {type(exc).__name__}: {exc}"[:160])
        save()
        if time.perf_counter() - t_start > a.deadline:
            notes.append(f"HF skipped (past --deadline {a.deadline:.0f} s)")
        else:
            try:
                row["hf_tok_s"] = run_hf(a, prompts, device)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                notes.append(f"HF failed: {type(exc).__name__}: {exc}"[:160])
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        notes.append(f"{type(exc).__name__}: {exc}"[:160])
    save()
    print(json.dumps(row))

    def f(k, fmt):
        return fmt.format(row[k]) if k in row else "-"

    ratio = f"{row['ours_tok_s'] / row['hf_tok_s']:.2f}" if "ours_tok_s" in row and "hf_tok_s" in row else "-"
    tail = notes + [f"graphs={row.get('graphs', '-')} captured in {row.get('capture_s', 0):.1f}s, "
                    f"{row['seconds']:.0f}s"]
    print("| rollout | requests | new | ours tok/s | step ms | MBU | BW GB/s | HF tok/s | ours/HF | notes |")
    print(f"| rollout | {a.requests} | {a.new} | {f('ours_tok_s', '{:.0f}')} | {f('step_ms', '{:.2f}')} | "
          f"{f('mbu', '{:.1%}')} | {f('bw_gbs', '{:.0f}')} | {f('hf_tok_s', '{:.0f}')} | {ratio} | "
          f"{'; '.join(tail)} |")
    failed = any(n.startswith(("ours failed", "decode kernel")) for n in notes) or \
        not row.get("kernel", {}).get("ok", False) or "ours_tok_s" not in row
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
