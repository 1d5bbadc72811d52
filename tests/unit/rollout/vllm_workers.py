"""Module-level functions run in fresh processes by ``tests.distributed.launcher.spawn``: one process (or one job
of 2 ranks) starts the vLLM engine once and everything the vLLM tests assert on is computed from it."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

import torch

# 2 layers (one per stage at PP=2), GQA, head dim 32 (vLLM's CPU attention has no head dim 16), the byte vocabulary
# padded to a size TP=1 and TP=2 share; a large init std so the random model's greedy output is varied.
TINY = ["model.num_layers=2", "model.hidden_size=128", "model.ffn_hidden_size=256", "model.num_attention_heads=4",
        "model.num_query_groups=2", "model.vocab_size=259", "model.padded_vocab_size=320",
        "model.max_position_embeddings=256", "model.init_method_std=0.1",
        "data.name=synthetic", "data.tokenizer=byte", "data.chat_template=plain", "data.seq_length=160",
        "data.micro_batch_size=32", "data.synthetic.num_train=64", "data.synthetic.num_test=32",
        "data.synthetic.num_riel=64", "experts.prompts=[Equations.,Steps.,Parts.]",
        "riel.train_split=riel", "riel.questions_per_step=2", "riel.group_size=4", "riel.buffer_k=3",
        "riel.buffer_capacity=4", "riel.lr=1e-3",
        "rollout.max_new_tokens=24", "rollout.token_budget=4096", "rollout.engine=vllm", "rollout.temperature=1.0",
        "mef.enabled=false", "eval.enabled=false", "logging.progress_bar=false", "logging.tensorboard=false",
        "checkpoint.resume=false"]

# fixed token sequences for the log-prob comparison (byte ids of text, like the chat rows)
SEQS = ["Equations.\nQ: 37 + 48 = ?\nA: 85", "Parts.\nQ: 3 m in cm?\nA: 300 cm", "Steps.\nQ: 2 + 3 * 4\nA: 14"]


def _megatron_logprobs(chunks, seqs: Sequence[List[int]], vocab: int):
    """log p(x_{t+1} | x_<=t) [L-1] per sequence from the Megatron forward (fp32 logits), on the last stage."""
    from megatron_meml.backend.ckpt.hf_convert import full_logits

    out = []
    for s in seqs:  # collective through the pipeline: every stage runs every sequence
        logits = full_logits(chunks, torch.tensor([s]), vocab)
        if logits is not None:
            lp = torch.log_softmax(logits[0].double(), -1)
            out.append(lp[torch.arange(len(s) - 1), torch.tensor(s[1:])].tolist())
    return out or None


def riel_then_compare(run_dir: str, overrides: Sequence[str] = (), greedy: bool = False) -> Dict[str, Any]:
    """3 RIEL optimizer steps with rollout.engine=vllm (the trainer's loop: generate with vLLM, re-score, TIS,
    step, refit), then vLLM's prompt_logprobs and the Megatron forward of SEQS; with ``greedy`` also greedy
    continuations of vLLM and our continuous engine on the same (trained) weights. Every rank reports."""
    from megatron_meml.stages import common, mef, riel, run as stages_run
    from megatron_meml.config import load_config
    from megatron_meml.data.tokenizer import ByteTokenizer
    from megatron_meml.rollout.vllm_engine import _SHARED

    cfg = load_config(None, list(TINY) + [f"logging.run_dir={run_dir}", "riel.steps=3"] + list(overrides))
    run = stages_run.setup(cfg)
    riel.run_riel(run)
    (eng,) = _SHARED.values()
    tok = ByteTokenizer()
    seqs = [tok.encode(s) for s in SEQS]
    out: Dict[str, Any] = {"rank": run.info.rank, "leader": eng.is_leader, "last_stage": run.info.is_last_stage,
                           "vllm": eng.prompt_logprobs(seqs), "megatron": _megatron_logprobs(run.chunks, seqs, 259)}
    path = os.path.join(run_dir, "metrics.jsonl")
    if run.info.is_logging_rank and os.path.exists(path):  # one file for the run: reported once
        out["metrics"] = [json.loads(line) for line in open(path)]
    if greedy:
        from megatron_meml.rollout.continuous_engine import ContinuousEngine
        from megatron_meml.rollout.api import SamplingParams
        from tests.unit.rollout.engine_workers import make_requests

        reqs = make_requests(lens=[5, 17, 9, 3, 12, 24, 7, 14, 30, 11, 6, 20])
        params = SamplingParams(max_new_tokens=32, top_k=1)
        ours = ContinuousEngine(run.chunks, tok, 8192).generate(reqs, params)
        theirs = eng.generate(reqs, params)
        out["greedy"] = {"ours": [r.response_ids for r in ours], "vllm": [r.response_ids for r in theirs],
                         "ours_lp": [r.logprobs for r in ours], "vllm_lp": [r.logprobs for r in theirs]}
    return out
