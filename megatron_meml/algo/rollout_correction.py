"""Rollout/training mismatch: its telemetry and its correction by truncated importance sampling (TIS).

The engine that samples a rollout (ours, or vLLM) computes the log-prob of each sampled token with its own kernels,
dtype and batch shapes; the training forward computes it again with its own. Call them, for sampled token o_t,

    logp_eng_t   = log μ(o_t | ·)      the engine's (the behaviour policy the sample was actually drawn from)
    logp_old_t   = log π_old(o_t | ·)  the training forward on the same weights before the optimizer step

On-policy GRPO assumes μ = π_old. They differ by rounding (fp32: ~1e-6; bf16: ~1e-2) and, for an engine other
than the training forward (vLLM), by everything its kernels do differently. Telemetry per step, over the sampled
tokens T of the step (per expert e: the tokens of rollouts under expert e's prompt):

    mismatch/logp_abs_mean           = mean_{t in T} |logp_eng_t - logp_old_t|
    mismatch/logp_abs_max            = max_{t in T}  |logp_eng_t - logp_old_t|
    mismatch/logp_abs_mean/expert{e} = the mean over expert e's tokens

Correction (truncated importance sampling; Yao et al. 2025 "Your efficient RL framework secretly brings you
off-policy RL training", as verl's ``rollout_is`` / TRL's ``vllm_importance_sampling_correction`` do): the
PPO ratio uses the training forward's old log-probs, r_t = exp(logπθ_t − logp_old_t), and each GRPO token's loss
is weighted by

    w_t = min(exp(logp_old_t − logp_eng_t), C)        C = riel.tis_cap (0 = off: w_t = 1)

    l_t = −w_t · min(r_t·A_t, clip(r_t, 1−ε_low, 1+ε_high)·A_t)

w_t is a constant (no gradient). It re-weights samples drawn from μ towards π_old (unbiased without the cap);
the cap bounds the variance that a token with μ ≪ π_old would otherwise bring. Only GRPO tokens are weighted: the
inter-expert KL and SFT rows are not samples of μ. With top-p / top-k truncation the engine's log-prob is the
truncated distribution's for vLLM (its ``processed_logprobs``: the distribution it sampled from, the right μ) and
the untruncated one for ours (``rollout/engine.py``'s contract).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List, Optional, Sequence


def tis_weights(train_logp: Sequence[float], engine_logp: Sequence[float], cap: float) -> Optional[List[float]]:
    """w_t = min(exp(train_logp_t − engine_logp_t), cap) per token; None when ``cap`` is 0 (TIS off)."""
    if not cap:
        return None
    if len(train_logp) != len(engine_logp):
        raise ValueError(f"tis_weights: {len(train_logp)} training log-probs vs {len(engine_logp)} engine log-probs")
    return [min(math.exp(min(a - b, 50.0)), float(cap)) for a, b in zip(train_logp, engine_logp)]


def mismatch_metrics(rows: Sequence[tuple], cap: float = 0.0) -> Dict[str, float]:
    """Telemetry of the module docstring from ``rows`` = (expert, engine_logp [L], train_logp [L]) per rollout.
    Also ``mismatch/tis_weight_mean`` and ``mismatch/tis_capped_fraction`` (tokens whose weight hit the cap) when
    ``cap`` > 0, and ``mismatch/tokens``. Empty dict when there are no tokens."""
    total, count, worst = 0.0, 0, 0.0
    per_e: Dict[int, List[float]] = defaultdict(lambda: [0.0, 0])
    w_sum, capped = 0.0, 0
    for expert, eng, train in rows:
        for a, b in zip(eng, train):
            d = abs(a - b)
            total += d
            count += 1
            worst = max(worst, d)
            per_e[int(expert)][0] += d
            per_e[int(expert)][1] += 1
            if cap:
                w = math.exp(min(b - a, 50.0))
                w_sum += min(w, cap)
                capped += w >= cap
    if not count:
        return {}
    out = {"mismatch/logp_abs_mean": total / count, "mismatch/logp_abs_max": worst, "mismatch/tokens": float(count)}
    out.update({f"mismatch/logp_abs_mean/expert{e}": s / n for e, (s, n) in sorted(per_e.items())})
    if cap:
        out["mismatch/tis_weight_mean"] = w_sum / count
        out["mismatch/tis_capped_fraction"] = capped / count
    return out
