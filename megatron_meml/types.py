"""Records passed between stages: dataset records, rollout requests/results, scored groups and typed microbatches.

Shapes: B = sequences in a microbatch, S = padded sequence length. Token-level tensors are aligned to *targets*:
position t holds the quantity for predicting ``tokens[:, t + 1]`` from ``tokens[:, : t + 1]``; the last position
is always masked out.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch


@dataclass
class Record:
    """One dataset example. ``answer`` is the gold final answer, ``solution`` the gold rationale (expert 0)."""

    id: str
    question: str
    answer: str
    solution: str
    meta: Dict[str, Any] = field(default_factory=dict)


class TokenKind(enum.IntEnum):
    """Which loss term a response token belongs to (one forward computes all three)."""

    GRPO = 0  # PPO-clip surrogate on a rollout token (+ optional reference KL)
    KL = 1    # inter-expert KL: token of an E+ correct response, scored under E-'s prompt
    SFT = 2   # NLL of a ground-truth solution token from the hard-example buffer (or MEF)


@dataclass
class Request:
    """One generation request: a prompt rendered for (question, expert) with its own seed."""

    prompt_ids: List[int]
    qid: str = ""
    expert: int = 0
    seed: int = 0
    max_new_tokens: Optional[int] = None


@dataclass
class Rollout:
    """A finished request: sampled ids, log-probs of each sampled token under the sampling distribution."""

    request: Request
    response_ids: List[int]
    logprobs: List[float]
    text: str = ""
    finish_reason: str = "length"  # "eos" | "stop" | "length"
    reward: float = 0.0
    # set when the training forward re-scored the rollout (algo/rollout_correction.py): ``logprobs`` then hold the
    # training forward's log-probs and this the engine's own
    engine_logprobs: Optional[List[float]] = None


@dataclass
class ScoredGroup:
    """All rollouts of one (question, expert): rewards r_{e,g} and advantages A_{e,g}."""

    qid: str
    expert: int
    rollouts: List[Rollout]
    advantages: List[float] = field(default_factory=list)

    @property
    def rewards(self) -> List[float]:
        return [r.reward for r in self.rollouts]


@dataclass
class MicroBatch:
    """A typed microbatch. All [B, S] tensors are target-aligned (see module docstring).

    The per-token loss is ``sum_t weight[b,t] * l(kind[b,t], logp[b,t], ...)`` where ``weight`` already holds the
    global-batch normaliser and the term's coefficient (λ1, λ2), so gradients do not depend on how the global batch
    is cut into microbatches or DP ranks. ``old_logp`` is the behaviour log-prob for GRPO tokens and the stop-grad
    log π(o_t | q, P+, o_<t) for KL tokens; unused for SFT.
    """

    tokens: torch.Tensor                     # [B, S] int64 input ids
    loss_mask: torch.Tensor                  # [B, S] float {0,1}: tokens that carry a loss
    kind: torch.Tensor                       # [B, S] int8 TokenKind
    weight: torch.Tensor                     # [B, S] float aggregation weights
    advantages: Optional[torch.Tensor] = None  # [B, S] float (GRPO)
    old_logp: Optional[torch.Tensor] = None    # [B, S] float (GRPO behaviour / KL teacher)
    ref_logp: Optional[torch.Tensor] = None    # [B, S] float (reference-KL, when beta > 0)
    name: str = "sft"                        # dominant kind, for logging
    # Prompt-sharing rows (rollout/packing.shared_rows); both None for plain right-padded causal rows.
    position_ids: Optional[torch.Tensor] = None  # [B, S] int64 RoPE position of every slot
    segment_ids: Optional[torch.Tensor] = None   # [B, S] int64: 0 shared prompt, k >= 1 its k-th continuation

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    def to(self, device) -> "MicroBatch":
        out = {}
        for k, v in self.__dict__.items():
            out[k] = v.to(device) if isinstance(v, torch.Tensor) else v
        return MicroBatch(**out)
