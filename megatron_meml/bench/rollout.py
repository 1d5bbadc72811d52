"""Generated tokens per second: our engines (``continuous``: slot pool + own KV cache, the default; ``static``:
megatron's static KV cache) vs HF transformers ``generate`` (KV cache), greedy, on the same tiny Qwen2-shaped model
(random weights; both built from the same shape), the same prompts, in one run.

    python -m megatron_meml.bench.rollout [--batch 16] [--new-tokens 64] [--layers 2] [--hidden 128] [--repeats 5]
    python -m megatron_meml.bench.rollout --batch 48 --group 8 --min-prompt 60 --max-prompt 100 --new-tokens 48  # RIEL-shaped
    python -m megatron_meml.bench.rollout --lengths longtail --batch 64 --group 8 --min-prompt 90 --max-prompt 110

``--lengths uniform`` (default): every request generates exactly ``--new-tokens``; engines: continuous, static and
HF; last line ``ours/hf tokens per second: <continuous / hf>``. ``--lengths longtail``: each request's
``max_new_tokens`` is drawn from a long-tailed distribution on [8, 512] (log-normal, median ``--new-tokens``,
sigma 1, clipped), one draw per request (the G samples of a group share the prompt, not the length: in RL they
stop at different points); HF ``generate`` has no per-request limit, so the longtail run compares continuous with
static only; last line ``continuous/static tokens per second: <ratio>``.

Prompts have different lengths (HF gets them left-padded with an attention mask, ours right-aligned in its cache);
no stop token is set, so every request generates exactly ``--new-tokens`` tokens in both engines. Runs alternate
(ours, HF, ours, HF, ...) after one warm-up each. Each side's best run (the least disturbed by other processes on a
shared machine) gives the ratio; medians are printed too. The last line is ``ours/hf tokens per second: <ratio>``.

``--engines continuous,static,vllm,hf`` picks the engines (default continuous,static,hf); ``vllm`` is
``rollout/vllm_engine.py`` (vLLM in-process, TP=1, fed token ids, the same weights through one refit; start-up not
timed; ``--vllm-compile`` uses vLLM's default torch.compile instead of eager). The headline (line ``headline``) is
what a user gets: torch's default thread count (``--threads 0``, the default; ``--threads 1`` pins one thread) and,
per engine, the **median over the interleaved rounds of the paired ratio** (its tokens / its seconds divided by
the continuous engine's in the same round); best-over-best ratios are printed beside it, labelled.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from megatron_meml.backend.runtime.compat import quiet_library_notes

quiet_library_notes()  # before megatron-core loads below: its TE / apex notes would precede the version check's line

import torch

from megatron_meml.backend.runtime import parallel
from megatron_meml.backend.train import model as M
from megatron_meml.bench.harness import headline_line, interleaved, set_threads
from megatron_meml.config import load_config
from megatron_meml.rollout.api import SamplingParams
from megatron_meml.rollout.continuous_engine import ContinuousEngine
from megatron_meml.rollout.megatron_engine import MegatronEngine
from megatron_meml.rollout.vllm_engine import VLLMEngine
from megatron_meml.types import Request
from megatron_meml.versions import require_supported


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
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default, the headline)")
    p.add_argument("--engines", default="continuous,static,hf", help="comma list of continuous,static,vllm,hf")
    p.add_argument("--vllm-compile", action="store_true", help="vllm: torch.compile (default: enforce_eager)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lengths", choices=("uniform", "longtail"), default="uniform")
    p.add_argument("--max-tail", type=int, default=512, help="longtail: largest max_new_tokens")
    p.add_argument("--token-budget", type=int, default=0,
                   help="KV positions for both engines (0: every request at once)")
    p.add_argument("--no-hf", action="store_true", help="skip the HF baseline")
    return p.parse_args(argv)


def longtail_lengths(n: int, median: int, hi: int, seed: int, lo: int = 8):
    """n draws of round(exp(N(log median, 1))) clipped to [lo, hi] (a long tail: a few requests run to ``hi``)."""
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.exp(torch.randn(n, generator=g, dtype=torch.float64) + torch.log(torch.tensor(float(median))))
    return x.round().clamp(lo, hi).long().tolist()


class _Tok:
    """Minimal tokenizer for the engine: no stop token is ever sampled (eos_id outside the vocabulary)."""

    def __init__(self, vocab: int):
        self.vocab_size, self.eos_id, self.pad_id = vocab, vocab, 0

    def decode(self, ids):
        return ""


def build_ours(a):
    cfg = load_config(None, [f"model.num_layers={a.layers}", f"model.hidden_size={a.hidden}",
                             f"model.ffn_hidden_size={a.ffn}", f"model.num_attention_heads={a.heads}",
                             f"model.num_query_groups={a.kv_heads}", f"model.vocab_size={a.vocab}",
                             f"model.padded_vocab_size={a.vocab}", "model.max_position_embeddings=1024",
                             f"seed={a.seed}", f"rollout.vllm_enforce_eager={not a.vllm_compile}",
                             "rollout.mismatch_interval=0"])
    parallel.initialize(1, 1, seed=cfg.seed)
    return cfg, M.build_model(cfg)


def build_hf(a):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(a.seed)
    c = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                    num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=1024,
                    tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0, use_cache=True,
                    bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return Qwen2ForCausalLM(c).eval()


def _checked(expect: int):
    """The harness's work count of a run: its generated tokens, which must be the ``expect`` requested."""
    def work(name, n):
        assert n == expect, (name, n, expect)
        return n
    return work


def run(argv=None) -> float:
    """The benchmark; returns the last line's ratio (ours/hf, or continuous/static without HF)."""
    a = parse_args(argv)
    require_supported()
    threads = set_threads(a.threads)
    g = torch.Generator().manual_seed(a.seed)
    if a.batch % a.group:
        raise SystemExit("--batch must be a multiple of --group")
    lens = torch.randint(a.min_prompt, a.max_prompt + 1, (a.batch // a.group,), generator=g).tolist()
    prompts = [p for n in lens for p in [torch.randint(1, a.vocab, (n,), generator=g).tolist()] * a.group]
    lens = [len(p) for p in prompts]
    longtail = a.lengths == "longtail"
    new = longtail_lengths(a.batch, a.new_tokens, a.max_tail, a.seed) if longtail else [a.new_tokens] * a.batch
    expect = sum(new)

    cfg, chunks = build_ours(a)
    tok = _Tok(a.vocab)
    budget = a.token_budget or a.batch * (a.max_prompt + max(new))
    chosen = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = [e for e in chosen if e not in ("continuous", "static", "vllm", "hf")]
    if bad or "continuous" not in chosen:
        raise SystemExit(f"--engines: continuous plus any of static,vllm,hf (got {a.engines!r})")
    engines = {"continuous": ContinuousEngine(chunks, tok, token_budget=budget, stop_token_ids=[]),
               "static": MegatronEngine(chunks, tok, token_budget=budget, stop_token_ids=[])}
    if "vllm" in chosen:
        cfg.rollout.token_budget = budget
        cfg.model.max_position_embeddings = max(1024, a.max_prompt + max(new))
        t0 = time.perf_counter()
        engines["vllm"] = VLLMEngine(cfg, chunks, tok, stop_token_ids=[])
        print(f"vllm start-up (not timed below): {time.perf_counter() - t0:.1f} s, refit "
              f"{engines['vllm'].refit_seconds:.3f} s", flush=True)
    requests = [Request(prompt_ids=p, qid=str(i), seed=i, max_new_tokens=n)
                for i, (p, n) in enumerate(zip(prompts, new))]
    params = SamplingParams(max_new_tokens=max(new), top_k=1)
    runs = {k: (lambda e=e: sum(len(r.response_ids) for r in e.generate(requests, params)))
            for k, e in engines.items() if k in chosen or k == "static"}

    if not longtail and not a.no_hf and "hf" in chosen:
        hf = build_hf(a)
        P = max(lens)
        ids = torch.zeros(a.batch, P, dtype=torch.long)
        mask = torch.zeros(a.batch, P, dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding
            ids[i, P - len(p):] = torch.tensor(p)
            mask[i, P - len(p):] = 1

        def run_hf():
            with torch.no_grad():
                out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new_tokens, do_sample=False,
                                  use_cache=True, pad_token_id=0, eos_token_id=None)
            return (out.shape[1] - P) * a.batch

        runs["hf"] = run_hf

    same = [r.response_ids for r in engines["continuous"].generate(requests, params)] == \
        [r.response_ids for r in engines["static"].generate(requests, params)]
    rounds = interleaved(runs, rounds=a.repeats, warmup=1, work=_checked(expect))
    rates = {k: rounds.rates(k) for k in runs}
    lengths = f"exactly {a.new_tokens}" if not longtail else \
        f"longtail {min(new)}..{max(new)} (median {sorted(new)[len(new) // 2]}, mean {expect / len(new):.0f})"
    print(f"model: {a.layers} layers, hidden {a.hidden}, ffn {a.ffn}, heads {a.heads}/{a.kv_heads}, vocab {a.vocab}; "
          f"batch {a.batch} ({a.batch // a.group} distinct prompts), prompts {min(lens)}..{max(lens)} tokens, "
          f"new tokens {lengths}, greedy, KV budget {budget}, torch threads {threads}, "
          f"{a.repeats} timed runs each")
    names = {"continuous": "ours (continuous engine)", "static": "ours (static engine)",
             "hf": "hf transformers generate", "vllm": "vllm (in-process, TP=1)"}
    for k, r in rates.items():
        print(f"{names[k]:32s} best {max(r):8.1f}  median {statistics.median(r):8.1f} tokens/s  "
              f"runs: {', '.join(f'{x:.0f}' for x in r)}")
    print(f"continuous and static emit identical tokens: {same}")
    st = engines["continuous"].last_stats
    print(f"continuous engine: {st.get('steps')} forwards ({st.get('prefill_steps')} prefill, "
          f"{st.get('decode_steps')} decode), peak {st.get('peak_slots')} slots")
    c_s = max(rates["continuous"]) / max(rates["static"])
    med = {k: statistics.median(r) for k, r in rates.items()}
    print(f"median ratio continuous/static: {med['continuous'] / med['static']:.3f}")
    if "vllm" in rates:
        same_v = [r.response_ids for r in engines["vllm"].generate(requests, params)] == \
            [r.response_ids for r in engines["continuous"].generate(requests, params)]
        print(f"vllm and continuous emit identical greedy tokens: {same_v}")
        print(f"best-over-best vllm/continuous: {max(rates['vllm']) / max(rates['continuous']):.3f}")
    print(headline_line(rounds, "continuous", [k for k in rates if k != "continuous" and k in chosen], threads,
                        "each engine / continuous"))
    if "hf" in rates:
        print(f"median ratio ours/hf: {statistics.median(rates['continuous']) / statistics.median(rates['hf']):.3f}")
        print(f"continuous/static tokens per second: {c_s:.3f}")
        ratio = max(rates["continuous"]) / max(rates["hf"])
        print(f"ours/hf tokens per second: {ratio:.3f}")
        return ratio
    print(f"continuous/static tokens per second: {c_s:.3f}")
    return c_s


def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
