"""A/B of prompt-sharing (segment) attention on the CPU, forward + backward: ``EXPAND_KV`` "never" (the earlier
call: ``enable_gqa`` with the mask), "cuda" (the default: on the CPU the same call), "always" (the GPU formulation:
KV groups expanded, run on the CPU). Interleaved rounds; headline = median over rounds of the paired ratio
(time of A / time of B in the same round).

    .venv/bin/python benchmarks/attention_backend_ab.py [--rounds 9] [--seq 1024]
"""
import argparse
import statistics
import time

import torch

from megatron_meml.backend import attention as A


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--conts", type=int, default=8)
    a = ap.parse_args()
    S, B, np_, ng, hn = a.seq, a.batch, 12, 2, 128          # Qwen2.5-1.5B heads
    cont = (S - a.prompt) // a.conts
    seg = torch.full((B, S), -1, dtype=torch.long)
    for b in range(B):
        seg[b, :a.prompt] = 0
        for i in range(a.conts):
            seg[b, a.prompt + i * cont:a.prompt + (i + 1) * cont] = i + 1
    mask = A.segment_attention_mask(seg)
    plan = A._segment_layout(mask)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(S, B, np_, hn, generator=g, requires_grad=True)
    k = torch.randn(S, B, ng, hn, generator=g, requires_grad=True)
    v = torch.randn(S, B, ng, hn, generator=g, requires_grad=True)

    def run(policy):
        A.EXPAND_KV[0] = policy
        t = time.perf_counter()
        out = A.segment_attention(q, k, v, plan, hn ** -0.5)
        out.sum().backward()
        return time.perf_counter() - t, out.detach()

    policies = ["never", "cuda", "always"]
    for p in policies:   # warm-up
        run(p)
    times = {p: [] for p in policies}
    outs = {}
    for r in range(a.rounds):
        for p in (policies if r % 2 == 0 else policies[::-1]):
            dt, outs[p] = run(p)
            times[p].append(dt)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, S={S} B={B} np={np_} ng={ng} hn={hn}, "
          f"prompt {a.prompt} + {a.conts} x {cont}, fp32, fwd+bwd, {a.rounds} interleaved rounds")
    for p in policies:
        print(f"  {p:6s}: median {statistics.median(times[p]) * 1e3:8.2f} ms   best {min(times[p]) * 1e3:8.2f} ms")
    for p in ("cuda", "always"):
        ratio = statistics.median(x / y for x, y in zip(times["never"], times[p]))
        tot = sum(times["never"]) / sum(times[p])
        diff = (outs[p] - outs["never"]).abs().max().item()
        print(f"  today (never) / {p}: median paired ratio {ratio:.3f}, sum ratio {tot:.3f}, max |out diff| {diff:.2e}")


if __name__ == "__main__":
    main()
