"""The fused output layer (``meml_kernels.linear_logprobs``, Triton) against Liger-Kernel's fused linear cross
entropy and the plain torch logits path, in one run on one GPU (a step of tools/gpu_check.sh, ~1 minute).

    python -m megatron_meml.gpu.output_bench [--tokens 8192] [--hidden 1536] [--vocab 151936] [--json OUT.json]
    python -m megatron_meml.gpu.output_bench --tiny     # CPU dry run (64 tokens, hidden 32, vocab 512, fp32; the Triton
                                                  # kernel in the interpreter, TRITON_INTERPRET=1)

Shape (default): one MEF microbatch of Qwen2.5-1.5B, 4 x 2048 = 8192 tokens, hidden 1536, 151936 vocabulary rows,
bf16. Variants, each forward-only and forward + backward (gradients to hidden and weight):
  torch   logits = hidden @ W^T, log_softmax in fp32, gather the targets' log-probs (the [T, V] logits exist);
  ours    ``linear_token_logprobs(..., impl="triton")``: per-token log-probs, logits never materialised;
  liger   ``liger_fused_linear_cross_entropy(hidden, W, targets, reduction="sum")`` = -Σ log-probs.
Recorded per variant and mode: median ms over ``--reps`` timed calls after a warm-up (CUDA events on the GPU),
TFLOP/s against the nominal matmul FLOPs (2·T·H·V forward, 6·T·H·V forward + backward), the extra peak memory
over the inputs (max_memory_allocated; the CPU reports none), and the error against the fp32 torch reference
(ours: max |Δ log-prob|; liger: |Δ Σ log-prob| / |Σ log-prob|). ``summary`` in the JSON, written after every row.
Exit status 1 when ours disagrees with the reference, or when Liger does not import on a GPU (the comparison is
the point of the step; on the CPU a missing Liger is a note).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

from megatron_meml.backend.runtime.memory import peak_memory_bytes, reset_peak_memory


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "/tmp/out"), "output_bench.json"))
    p.add_argument("--tiny", action="store_true", help="CPU dry run: 64 tokens, hidden 32, vocab 512, fp32")
    a = p.parse_args(argv)
    if a.tiny:
        a.tokens, a.hidden, a.vocab, a.reps = 64, 32, 512, 1
    return a


def timer(device):
    """``time(fn, reps) -> median seconds``: CUDA events after one warm-up call on the GPU; perf_counter on the CPU."""
    import torch

    def run(fn, reps):
        if device.type == "cuda":
            fn()             # warm-up (compile, autotune); on the CPU the Triton interpreter has nothing to warm
        out = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                out.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return statistics.median(out)
    return run


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch
    from meml_kernels.linear_logprobs import linear_token_logprobs

    cuda = torch.cuda.is_available()
    if not cuda and not a.tiny:
        print("gpu_output_bench: needs CUDA (use --tiny for the CPU dry run)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dt = torch.bfloat16 if cuda else torch.float32
    T, H, V = a.tokens, a.hidden, a.vocab
    res = {"device": torch.cuda.get_device_name() if cuda else "CPU", "tokens": T, "hidden": H, "vocab": V,
           "dtype": str(dt), "reps": a.reps, "rows": [], "notes": []}

    def save():
        res["summary"] = summary(res)
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(a.json + ".tmp", a.json)

    g = torch.Generator().manual_seed(0)
    hid = torch.randn(T, H, generator=g).to(device, dt)
    w = (torch.randn(V, H, generator=g) * 0.02).to(device, dt)
    tgt = torch.randint(0, V, (T,), generator=g).to(device)
    with torch.no_grad():   # the fp32 reference
        ref = torch.log_softmax(hid.float() @ w.float().t(), dim=-1).gather(1, tgt[:, None]).squeeze(1)
    ref_sum = ref.sum().item()

    def torch_logp(x, wt):
        return torch.log_softmax((x @ wt.t()).float(), dim=-1).gather(1, tgt[:, None]).squeeze(1)

    def ours_logp(x, wt):
        return linear_token_logprobs(x, wt, tgt, impl="triton").logp

    variants = {"torch": (lambda x, wt: torch_logp(x, wt).sum()), "ours": (lambda x, wt: ours_logp(x, wt).sum())}
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        variants["liger"] = lambda x, wt: -liger_fused_linear_cross_entropy(x, wt, tgt, reduction="sum")
        res["liger"] = "importable"
    except Exception as exc:  # noqa: BLE001 -- ImportError, or a triton/torch mismatch inside liger
        res["liger"] = f"not importable: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        res["notes"].append(f"liger {res['liger']}")
    time_it = timer(device)
    flops = {"fwd": 2.0 * T * H * V, "fwd+bwd": 6.0 * T * H * V}
    for name, fn in variants.items():
        for mode in ("fwd", "fwd+bwd"):
            row = {"variant": name, "mode": mode}
            try:
                x, wt = hid.clone().requires_grad_(mode != "fwd"), w.clone().requires_grad_(mode != "fwd")
                if mode == "fwd":
                    with torch.no_grad():   # the correctness call doubles as the warm-up
                        if name == "ours":
                            logp = ours_logp(x, wt).float()
                            row["max_abs_err"] = (logp - ref).abs().max().item()
                            val = logp.sum().item()
                        else:
                            val = fn(x, wt).item()
                    call = (lambda: fn(x, wt))
                else:
                    def call():
                        x.grad = wt.grad = None
                        fn(x, wt).backward()
                    val = None
                if val is not None:
                    row["rel_err_sum"] = abs(val - ref_sum) / max(abs(ref_sum), 1e-9)
                if cuda:
                    torch.cuda.synchronize()
                    reset_peak_memory()
                    base = torch.cuda.memory_allocated()
                ctx = torch.no_grad() if mode == "fwd" else torch.enable_grad()
                with ctx:
                    s = time_it(call, a.reps)
                row.update(ms=1e3 * s, tflops=flops[mode] / s / 1e12)
                if cuda:
                    row["extra_peak_gib"] = (peak_memory_bytes() - base) / 2 ** 30
                del x, wt
            except Exception as exc:  # noqa: BLE001 -- one failing variant must not hide the others
                traceback.print_exc()
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()
            if cuda:
                torch.cuda.empty_cache()
    ours_fwd = next((r for r in res["rows"] if r["variant"] == "ours" and r["mode"] == "fwd"), {})
    tol = 5e-2 if dt == torch.bfloat16 else 1e-4
    res["ours_ok"] = "max_abs_err" in ours_fwd and ours_fwd["max_abs_err"] < tol
    res["tolerance"] = tol
    save()
    print(f"| output layer | variant | fwd ms | fwd TFLOP/s | fwd+bwd ms | extra GiB (fwd+bwd) | err |")
    for name in variants:
        f = next(r for r in res["rows"] if r["variant"] == name and r["mode"] == "fwd")
        b = next(r for r in res["rows"] if r["variant"] == name and r["mode"] == "fwd+bwd")
        print(f"| T={T} H={H} V={V} | {name} | {f.get('ms', float('nan')):.2f} | {f.get('tflops', float('nan')):.0f} | "
              f"{b.get('ms', float('nan')):.2f} | {b.get('extra_peak_gib', float('nan')):.2f} | "
              f"{f.get('max_abs_err', f.get('rel_err_sum', float('nan'))):.1e} |")
    print(res["summary"], flush=True)
    failed = not res["ours_ok"] or (cuda and "liger" not in variants) or any("error" in r for r in res["rows"])
    return 1 if failed else 0


def summary(res: dict) -> str:
    def ms(variant, mode):
        r = next((r for r in res["rows"] if r["variant"] == variant and r["mode"] == mode and "ms" in r), None)
        return None if r is None else r["ms"]

    parts = []
    for mode in ("fwd", "fwd+bwd"):
        o, l_, t = ms("ours", mode), ms("liger", mode), ms("torch", mode)
        if o is not None:
            parts.append(f"{mode}: ours {o:.2f} ms" + (f", liger {l_:.2f} ms ({l_ / o:.2f}x)" if l_ else "")
                         + (f", torch {t:.2f} ms ({t / o:.2f}x)" if t else ""))
    err = next((r["max_abs_err"] for r in res["rows"] if "max_abs_err" in r), None)
    if err is not None:
        parts.append(f"ours max |dlogp| {err:.1e}")
    return "; ".join(parts + res.get("notes", [])) or "no row finished"


if __name__ == "__main__":
    sys.exit(main())
