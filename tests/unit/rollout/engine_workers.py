"""Module-level functions run in fresh processes by ``tests.distributed.launcher.spawn`` (the CPU runtime changes
process-global torch state, and megatron's parallel state is per process)."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Sequence

import torch

# 2 layers (one per stage at PP=2), GQA, byte vocabulary padded to a size both TP=1 and TP=2 share; a large init
# std makes the random model's greedy output varied (a degenerate repeat-one-token model would test little).
TINY = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128", "model.num_attention_heads=4",
        "model.num_query_groups=2", "model.vocab_size=259", "model.padded_vocab_size=320",
        "model.max_position_embeddings=256", "model.init_method_std=0.2"]

PROMPT_LENS = [5, 17, 9, 3, 12, 24, 7, 14]


def make_requests(lens: Sequence[int] = PROMPT_LENS, seed: int = 0, seed_offset: int = 0):
    from megatron_meml.types import Request

    g = torch.Generator().manual_seed(seed)
    return [Request(prompt_ids=torch.randint(32, 127, (n,), generator=g).tolist(), qid=f"r{i}",
                    seed=1000 + seed_offset + i) for i, n in enumerate(lens)]


def _setup(overrides: Sequence[str] = ()):
    from megatron_meml.backend.train import model as M
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.config import load_config

    cfg = load_config(None, list(TINY) + list(overrides))
    info = parallel.initialize(cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size,
                               seed=cfg.seed)
    return cfg, info, M.build_model(cfg)


def _ids(rollouts) -> List[List[int]]:
    return [r.response_ids for r in rollouts]


def parallel_generation(overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Greedy (cache and no-cache) and seeded sampled generation on this layout; every rank reports its result."""
    from megatron_meml.data.tokenizer import ByteTokenizer
    from megatron_meml.rollout.api import SamplingParams
    from megatron_meml.rollout.megatron_engine import MegatronEngine

    cfg, info, chunks = _setup(overrides)
    tok = ByteTokenizer()
    reqs = make_requests()
    twin = copy.deepcopy(reqs[1])
    twin.seed += 1  # a shared prompt: exercises the one-prefill-then-copy-rows path on every stage
    reqs.append(twin)
    greedy = SamplingParams(max_new_tokens=16, top_k=1)
    sampled = SamplingParams(max_new_tokens=16, temperature=0.8, top_p=0.95)
    out = {"rank": info.rank, "tp_rank": info.tp_rank, "pp_rank": info.pp_rank}
    out["greedy"] = _ids(MegatronEngine(chunks, tok).generate(reqs, greedy))
    out["greedy_nocache"] = _ids(MegatronEngine(chunks, tok, use_cache=False).generate(reqs, greedy))
    out["greedy_contiguous"] = _ids(MegatronEngine(chunks, tok, layout="contiguous").generate(reqs, greedy))
    ro = MegatronEngine(chunks, tok).generate(reqs, sampled)
    out["sampled"] = _ids(ro)
    out["sampled_logprobs"] = [r.logprobs for r in ro]
    # the continuous engine: one pool, then a pool of 3 slots with 5-token prefill chunks (slot reuse, a group
    # admitted in parts, chunked prefill, compaction), on every stage and TP rank
    from megatron_meml.rollout.continuous_engine import ContinuousEngine

    for name, kw in (("continuous", {}), ("continuous_small", dict(token_budget=3 * 40, prefill_tokens=5))):
        out[f"{name}_greedy"] = _ids(ContinuousEngine(chunks, tok, **kw).generate(reqs, greedy))
        ro = ContinuousEngine(chunks, tok, **kw).generate(reqs, sampled)
        out[f"{name}_sampled"] = _ids(ro)
        out[f"{name}_sampled_logprobs"] = [r.logprobs for r in ro]
    return out


def _snapshot(chunks):
    from megatron_meml.backend.train.model import unwrap

    return {"params": {n: p.detach().clone() for n, p in chunks[0].named_parameters()},
            "training": [m.training for m in chunks[0].modules()],
            "attrs": [sorted(vars(m).keys()) for m in chunks[0].modules()],
            "input_tensor": unwrap(chunks[0]).decoder.input_tensor}


def single_process_checks() -> Dict[str, Any]:
    """Everything the single-process engine tests assert on, computed in one process (one model build)."""
    from megatron_meml.backend.train import step as S
    from megatron_meml.config import load_config
    from megatron_meml.data.synthetic import generate
    from megatron_meml.data.tokenizer import ByteTokenizer
    from megatron_meml.rollout.api import SamplingParams
    from megatron_meml.rollout.megatron_engine import MegatronEngine
    from megatron_meml.rollout.scheduler import build_riel_scheduler
    from megatron_meml.types import TokenKind

    cfg, info, chunks = _setup()
    for c in chunks:
        c.train()
    before = _snapshot(chunks)
    tok = ByteTokenizer()
    out: Dict[str, Any] = {}
    reqs = make_requests()
    greedy = SamplingParams(max_new_tokens=24, top_k=1)

    # 1. KV cache vs full re-forward, prompts of different lengths in one batch (+ early stops -> row compaction)
    eng, ref = MegatronEngine(chunks, tok), MegatronEngine(chunks, tok, use_cache=False)
    a, b = eng.generate(reqs, greedy), ref.generate(reqs, greedy)
    out["aligned_steps"] = eng.last_stats["steps"]
    out["cache"], out["nocache"] = _ids(a), _ids(b)
    out["cache_vs_nocache_logp"] = max(abs(x - y) for r, s in zip(a, b) for x, y in zip(r.logprobs, s.logprobs))
    stops = sorted({ids[k] for ids in out["cache"] for k in (3, 9, 15)})  # ids the model does emit
    a = MegatronEngine(chunks, tok, stop_token_ids=stops).generate(reqs, greedy)
    b = MegatronEngine(chunks, tok, stop_token_ids=stops, use_cache=False).generate(reqs, greedy)
    out["stop_cache"], out["stop_nocache"] = _ids(a), _ids(b)
    out["stop_reasons"] = [r.finish_reason for r in a]
    out["stop_ids"] = stops
    # the contiguous layout (prompts from slot 0, forced prompt steps; the path for Transformer Engine attention)
    contiguous = MegatronEngine(chunks, tok, layout="contiguous")
    out["contiguous"] = _ids(contiguous.generate(reqs, greedy))
    out["contiguous_steps"] = contiguous.last_stats["steps"]
    out["stop_contiguous"] = _ids(MegatronEngine(chunks, tok, stop_token_ids=stops, layout="contiguous")
                                  .generate(reqs, greedy))
    # small token budget: several generation batches, same greedy tokens
    small = MegatronEngine(chunks, tok, token_budget=2 * (24 + 24))
    out["small_budget"] = _ids(small.generate(reqs, greedy))
    out["small_budget_batches"] = small.last_stats["batches"]

    # 2. stop string: cut at the first token that completes it
    text0 = out["cache"][0]
    j = next(k for k in range(2, len(text0) - 1) if all(32 <= t < 127 for t in text0[k:k + 2]))
    stop = tok.decode(text0[j:j + 2])
    r = eng.generate(reqs[:1], SamplingParams(max_new_tokens=24, top_k=1, stop_strings=(stop,)))[0]
    out["stop_string"] = {"stop": stop, "full": text0, "got": r.response_ids, "reason": r.finish_reason,
                          "text": r.text}

    # 3. a seeded request alone and inside a batch of 16 others (different prompts, lengths, seeds) + its twin
    sampled = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, top_k=50)
    alone = eng.generate([reqs[2]], sampled)[0]
    others = make_requests([4, 30, 8, 11, 2, 19, 6, 25, 13, 9, 21, 5, 16, 3, 27, 10], seed=5, seed_offset=500)
    twin = copy.deepcopy(reqs[2])
    twin.seed += 77  # same prompt, other seed: prefilled together with reqs[2] (one prefill, cache rows copied)
    batch = others[:7] + [reqs[2]] + others[7:] + [twin]
    got = eng.generate(batch, sampled)
    inside = got[7]
    out["alone"], out["inside"] = (alone.response_ids, alone.logprobs), (inside.response_ids, inside.logprobs)
    out["twin"], out["twin_alone"] = got[-1].response_ids, eng.generate([twin], sampled)[0].response_ids

    # 5. the continuous engine against the static one: greedy / stop tokens / stop string / sampled, with a pool
    # that holds everything and with 3 slots + 5-token prefill chunks (slot reuse, groups admitted in parts)
    from megatron_meml.rollout.continuous_engine import ContinuousEngine

    cont = {}
    for name, kw in (("pool", {}), ("small", dict(token_budget=3 * 48, prefill_tokens=5))):
        c = ContinuousEngine(chunks, tok, **kw)
        cont[name] = {"greedy": _ids(c.generate(reqs, greedy)), "stats": dict(c.last_stats)}
        cont[name]["stop"] = _ids(ContinuousEngine(chunks, tok, stop_token_ids=stops, **kw).generate(reqs, greedy))
        ro = c.generate(batch, sampled)
        cont[name]["sampled"] = [(r.response_ids, r.logprobs) for r in ro]
        r = c.generate(reqs[:1], SamplingParams(max_new_tokens=24, top_k=1, stop_strings=(stop,)))[0]
        cont[name]["stop_string"] = (r.response_ids, r.finish_reason, r.text)
    out["continuous"] = cont
    out["static_sampled"] = [(r.response_ids, r.logprobs) for r in got]

    # the engine left the model exactly as it found it (checked before the training forward below, whose pipeline
    # schedule itself tags layers with `current_microbatch`)
    after = _snapshot(chunks)
    out["params_unchanged"] = all(torch.equal(before["params"][k], v) for k, v in after["params"].items())
    out["training_flags_unchanged"] = before["training"] == after["training"]
    out["all_training"] = all(after["training"])
    out["attrs_unchanged"] = before["attrs"] == after["attrs"]
    out["input_tensor_none"] = after["input_tensor"] is None

    # 4. rollout log-probs vs the training forward, through the scheduler's microbatches
    records = generate("train", 2, seed=3)
    prompts = ["You are expert zero.", "Expert one, step by step."]
    out["logprob_gap"] = {}
    for T in (1.0, 0.7):
        run_cfg = load_config(None, list(TINY) + [f"rollout.temperature={T}", "rollout.max_new_tokens=12",
                                                  "rollout.seed=11", "riel.group_size=3", "riel.buffer_k=1",
                                                  "riel.buffer_capacity=2", "riel.max_kl_responses=2",
                                                  "data.micro_batch_size=2", "data.seq_length=100",
                                                  "riel.skip_zero_advantage=false"])  # compare every rollout
        assert run_cfg.riel.share_prompts  # the training forward runs on prompt-sharing rows
        sched = build_riel_scheduler(run_cfg, chunks, tok, prompts, lambda text, rec: float(len(text) % 2))
        step = sched.step(records, step=0)
        out.setdefault("sched_kinds", []).append(sorted({mb.name for mb in step.microbatches}))
        logps = S.forward_logprobs(chunks, step.microbatches, temperature=T)
        gap, n = 0.0, 0
        for mb, lp in zip(step.microbatches, logps):
            sel = (mb.kind == int(TokenKind.GRPO)) & (mb.loss_mask > 0)
            if sel.any():
                gap = max(gap, float((lp[sel] - mb.old_logp[sel]).abs().max()))
            n += int(sel.sum())
        out["logprob_gap"][T] = (gap, n, step.stats["tokens/grpo"])
        out.setdefault("shared_microbatches", []).append(sum(mb.segment_ids is not None for mb in step.microbatches))

    return copy.deepcopy(out)


def continuous_cuda_checks() -> Dict[str, Any]:
    """On CUDA: the continuous engine with CUDA graphs (Triton decode attention) vs without graphs vs the static
    engine -- greedy and sampled tokens, log-probs, and a pool small enough to pad decode batches to buckets."""
    from megatron_meml.data.tokenizer import ByteTokenizer
    from megatron_meml.rollout.continuous_engine import ContinuousEngine
    from megatron_meml.rollout.api import SamplingParams
    from megatron_meml.rollout.megatron_engine import MegatronEngine

    cfg, info, chunks = _setup()
    tok = ByteTokenizer()
    reqs = make_requests()
    twin = copy.deepcopy(reqs[1])
    twin.seed += 1
    reqs.append(twin)
    out: Dict[str, Any] = {}
    for pname, params in (("greedy", SamplingParams(max_new_tokens=16, top_k=1)),
                          ("sampled", SamplingParams(max_new_tokens=16, temperature=0.8, top_p=0.95))):
        ro = MegatronEngine(chunks, tok).generate(reqs, params)
        out[f"static_{pname}"] = [(r.response_ids, r.logprobs) for r in ro]
        for name, kw in (("graphs", dict(cuda_graphs=True, keep_cache=True)), ("eager", dict(cuda_graphs=False)),
                         ("graphs_small", dict(cuda_graphs=True, keep_cache=True, token_budget=3 * 40,
                                               prefill_tokens=5))):
            eng = ContinuousEngine(chunks, tok, **kw)
            ro = eng.generate(reqs, params)
            out[f"{name}_{pname}"] = [(r.response_ids, r.logprobs) for r in ro]
            out[f"{name}_captured"] = len(eng._model._graphs) if eng._model is not None else 0
    return out


def rollout_vs_training_logprob_gap(dtype: str = "bf16") -> Dict[str, Any]:
    """|old_logp - training logp| over every GRPO token of one RIEL step (prompt-sharing training rows), for the
    continuous engine with the sampled token's log-prob from the hidden states in fp32 (``fp32_logprobs``, the
    default) and from the model-dtype logits (the earlier behaviour), both as GRPO's old_logp
    (``rollout.mismatch_interval=0``); and with old_logp re-scored by the training forward (``rescored``, the
    ``rollout.mismatch_interval=1``; the default in bf16). Same requests, seeds and tokens in all three."""
    from megatron_meml.backend.train import step as S
    from megatron_meml.config import load_config
    from megatron_meml.data.synthetic import generate
    from megatron_meml.data.tokenizer import ByteTokenizer
    from megatron_meml.rollout.continuous_engine import ContinuousEngine
    from megatron_meml.rollout.scheduler import build_riel_scheduler
    from megatron_meml.types import TokenKind

    overrides = list(TINY) + [f"precision.dtype={dtype}", "rollout.temperature=1.0", "rollout.max_new_tokens=12",
                              "rollout.seed=11", "riel.group_size=3", "riel.buffer_k=1", "riel.buffer_capacity=2",
                              "riel.max_kl_responses=2", "data.micro_batch_size=2", "data.seq_length=100",
                              "riel.skip_zero_advantage=false"]
    cfg, info, chunks = _setup(overrides)
    tok = ByteTokenizer()
    records = generate("train", 2, seed=3)
    prompts = ["You are expert zero.", "Expert one, step by step."]
    out: Dict[str, Any] = {"dtype": str(next(chunks[0].parameters()).dtype)}
    for name, fp32, rescore in (("hidden_fp32", True, 0), ("logits", False, 0), ("rescored", True, 1)):
        eng = ContinuousEngine(chunks, tok, cfg.rollout.token_budget, stop_token_ids=[tok.eos_id],
                               vocab_size=cfg.model.vocab_size, cuda_graphs=False, fp32_logprobs=fp32)
        cfg.rollout.mismatch_interval = rescore  # 0: old_logp = the engine's; 1: the training forward's
        sched = build_riel_scheduler(cfg, chunks, tok, prompts, lambda text, rec: float(len(text) % 2), engine=eng)
        step = sched.step(records, step=0)
        logps = S.forward_logprobs(chunks, step.microbatches, temperature=1.0)
        diffs = []
        for mb, lp in zip(step.microbatches, logps):
            sel = (mb.kind == int(TokenKind.GRPO)) & (mb.loss_mask > 0)
            diffs.append((lp[sel].double() - mb.old_logp[sel].double()).abs())
        d = torch.cat(diffs)
        out[name] = {"max": float(d.max()), "mean": float(d.mean()), "n": int(d.numel()),
                     "median": float(d.median()), "below_1e-5": float((d < 1e-5).double().mean()),
                     "shared": sum(mb.segment_ids is not None for mb in step.microbatches)}
    return copy.deepcopy(out)
