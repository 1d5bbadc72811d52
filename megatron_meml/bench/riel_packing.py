"""RIEL training forward-backward time: one row per sequence (the baseline) vs prompt-sharing rows
(``riel.share_prompts``), with and without leaving zero-advantage rollouts out (``riel.skip_zero_advantage``),
on the same model and the same step, in one run.

    python -m megatron_meml.bench.riel_packing [--questions 8] [--experts 3] [--group 8] [--prompt 100] [--response 16]
        [--zero-groups 0.25] [--layers 2] [--hidden 96] [--repeats 5]

A step is ``questions × experts`` prompts of about ``--prompt`` tokens, each with ``--group`` responses of 1..2×
``--response`` tokens (lengths drawn per response) and one advantage per response; a ``--zero-groups`` fraction of
the groups has all-equal rewards (advantage 0). Every variant packs the same sequences (token-mean weights) into
microbatches of ``--micro-tokens`` padded tokens and runs one ``backend.train.step.forward_backward`` with the RIEL
loss.
Variants run in interleaved rounds after one warm-up round (megatron_meml.bench.harness); the headline is the
median paired ratio flat time / variant time at torch's default threads; best-over-best time ratios close the output.
The loss of every variant is printed: sharing must not change it, skipping must not change it either (the skipped
rows carry no loss). Last line: ``shared+skip / flat time: <ratio>``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial

import torch

from megatron_meml.algo.objective import riel_loss
from megatron_meml.backend.runtime import parallel
from megatron_meml.backend.train import model as M
from megatron_meml.backend.train import optimizer as O
from megatron_meml.backend.train.step import forward_backward
from megatron_meml.bench.harness import headline_line, interleaved, set_threads
from megatron_meml.config import load_config
from megatron_meml.rollout.packing import TrainSequence, assign_weights, plan_microbatches
from megatron_meml.types import TokenKind


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--experts", type=int, default=3)
    p.add_argument("--group", type=int, default=8, help="G: responses per (question, expert)")
    p.add_argument("--prompt", type=int, default=100, help="prompt tokens (each prompt 0.8-1.2x this)")
    p.add_argument("--response", type=int, default=16, help="mean-ish response tokens (1..2x this)")
    p.add_argument("--zero-groups", type=float, default=0.25, help="fraction of groups with advantage 0")
    p.add_argument("--micro-tokens", type=int, default=2560, help="padded tokens per microbatch")
    p.add_argument("--row-tokens", type=int, default=1024, help="riel.shared_row_tokens")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--ffn", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=259)
    p.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default, the headline)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_sequences(a, vocab: int):
    """The step's GRPO sequences: prompts × G responses with advantages (zero for a ``--zero-groups`` fraction)."""
    g = torch.Generator().manual_seed(a.seed)
    seqs = []
    for q in range(a.questions * a.experts):
        n = int(a.prompt * (0.8 + 0.4 * torch.rand(1, generator=g).item()))
        prompt = torch.randint(3, vocab, (n,), generator=g).tolist()
        zero = torch.rand(1, generator=g).item() < a.zero_groups
        for i in range(a.group):
            r = int(torch.randint(a.response, 2 * a.response + 1, (1,), generator=g))
            resp = torch.randint(3, vocab, (r,), generator=g).tolist()
            adv = 0.0 if zero else float(torch.randn(1, generator=g))
            old = (-torch.rand(r, generator=g) * 3).tolist()
            seqs.append(TrainSequence.from_prompt_response(prompt, resp, TokenKind.GRPO, old, adv, tag=f"q{q}/g{i}"))
    return seqs


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = load_config(None, [f"model.num_layers={a.layers}", f"model.hidden_size={a.hidden}",
                             f"model.ffn_hidden_size={a.ffn}", f"model.num_attention_heads={a.heads}",
                             f"model.num_query_groups={a.kv_heads}", f"model.vocab_size={a.vocab}",
                             f"model.max_position_embeddings={4 * (a.prompt + 2 * a.response)}"])
    parallel.initialize(1, 1, seed=a.seed)
    chunks = M.build_model(cfg)
    opt, _ = O.build_optimizer(cfg, chunks, total_steps=1)
    seqs = make_sequences(a, a.vocab)
    assign_weights(seqs, "token_mean", [1.0, 1.0, 1.0])
    nonzero = [s for s in seqs if not (s.kind == TokenKind.GRPO and s.advantage == 0.0)]
    variants = {
        "flat": plan_microbatches(seqs, a.micro_tokens)[0],
        "flat+skip": plan_microbatches(nonzero, a.micro_tokens)[0],
        "shared": plan_microbatches(seqs, a.micro_tokens, share_prompts=True, max_row_tokens=a.row_tokens)[0],
        "shared+skip": plan_microbatches(nonzero, a.micro_tokens, share_prompts=True,
                                         max_row_tokens=a.row_tokens)[0],
    }
    loss_fn = partial(riel_loss, riel_cfg=cfg.riel)
    threads = set_threads(a.threads)
    steps = {name: partial(forward_backward, chunks, mbs, loss_fn, temperature=0.7) for name, mbs in variants.items()}
    rounds = interleaved(steps, rounds=a.repeats, warmup=1, before=lambda _: O.zero_grads(chunks, opt))
    times = rounds.seconds
    losses = {name: sum(r["loss"] for r in res) for name, res in rounds.last.items()}
    print(f"{len(seqs)} sequences ({len(seqs) - len(nonzero)} with advantage 0), "
          f"{sum(len(s.tokens) for s in seqs)} tokens unpadded")
    print(f"{'variant':12s} {'microbatches':>12s} {'padded tokens':>14s} {'best s':>8s} {'median s':>9s} "
          f"{'loss':>12s}")
    for name, mbs in variants.items():
        print(f"{name:12s} {len(mbs):12d} {sum(mb.tokens.numel() for mb in mbs):14d} {min(times[name]):8.3f} "
              f"{statistics.median(times[name]):9.3f} {losses[name]:12.6f}")
    print(headline_line(rounds, "flat", ["flat+skip", "shared", "shared+skip"], threads,
                        "flat time / each variant's time"))
    for name in ("flat+skip", "shared", "shared+skip"):  # best-over-best, the least disturbed run of each
        print(f"{name} / flat time: {min(times[name]) / min(times['flat']):.3f}")
    parallel.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
