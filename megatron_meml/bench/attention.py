"""A/B of prompt-sharing (segment) attention on the CPU, forward + backward: ``EXPAND_KV`` "never" (the earlier
call: ``enable_gqa`` with the mask), "cuda" (the default: on the CPU the same call), "always" (the GPU formulation:
KV groups expanded, run on the CPU). Interleaved rounds (megatron_meml.bench.harness, order reversed every other
round); headline = median over rounds of the paired ratio (time of A / time of B in the same round) at torch's
default thread count.

    python -m megatron_meml.bench.attention [--rounds 9] [--seq 1024] [--threads 0]
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from megatron_meml.backend.train import attention as A
from megatron_meml.bench.harness import interleaved, set_threads


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default, the headline)")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--conts", type=int, default=8)
    a = ap.parse_args(argv)
    threads = set_threads(a.threads)
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
        out = A.segment_attention(q, k, v, plan, hn ** -0.5)
        out.sum().backward()
        return out.detach()

    policies = ["never", "cuda", "always"]
    rounds = interleaved({p: (lambda p=p: run(p)) for p in policies}, rounds=a.rounds, warmup=1, alternate=True,
                         work=lambda name, out: 1.0)
    times, outs = rounds.seconds, rounds.last
    print(f"torch {torch.__version__}, threads {threads}, S={S} B={B} np={np_} ng={ng} hn={hn}, "
          f"prompt {a.prompt} + {a.conts} x {cont}, fp32, fwd+bwd, {a.rounds} interleaved rounds")
    for p in policies:
        print(f"  {p:6s}: median {statistics.median(times[p]) * 1e3:8.2f} ms   best {min(times[p]) * 1e3:8.2f} ms")
    for p in ("cuda", "always"):
        ratio = rounds.headline(p, "never")     # rate p / rate never = time never / time p, per round
        tot = rounds.sum_ratio(p, "never")
        diff = (outs[p] - outs["never"]).abs().max().item()
        print(f"  today (never) / {p}: median paired ratio {ratio:.3f}, sum ratio {tot:.3f}, max |out diff| {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
