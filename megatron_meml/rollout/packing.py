"""From a RIEL step's training sequences to typed microbatches: aggregation weights and token-balanced packing.

A :class:`TrainSequence` is one row of the step's forward: GRPO (a rollout: prompt + response), KL (E+'s correct
response under E−'s prompt) or SFT (a buffer example: prompt + gold solution). :func:`plan_microbatches` is the one
function that decides which sequence goes into which microbatch on which data-parallel rank.

Aggregation weights (``MicroBatch.weight``; ``l_t`` is the per-token loss of the token's kind, coefficient c_k =
1, λ1, λ2 for GRPO, KL, SFT). Each term is normalised over the *global* batch of its own kind, so the sum of
``weight · l`` over all tokens of all microbatches on all DP ranks is exactly

    L = L_GRPO + λ1·L_KL + λ2·L_SFT

however the sequences are cut into microbatches:
    token_mean            w = c_k / T_k                     T_k = loss tokens of kind k in the step
    seq_mean_token_mean   w = c_k / (n_k · |o|)             n_k = sequences of kind k, |o| = this sequence's tokens
    constant              w = c_k / (n_k · C)               C = riel.constant_normalizer (default max_new_tokens):
                                                            Dr.GRPO's mean over sequences of token sums / C
(The paper does not say how the three terms are normalised against each other; applying the configured rule to
each term separately keeps λ1, λ2 meaningful as relative weights.)

Packing: sequences sorted by length (longest first) go first-fit into microbatches whose padded size
``rows × longest`` stays within ``max_tokens`` (a longer sequence gets a microbatch of its own); microbatches are
then dealt to DP ranks largest first, each to the rank with the fewest padded tokens so far. Every rank gets at
least one microbatch (a zero-weight one when there are fewer microbatches than ranks), because each rank must
take part in the gradient all-reduce. Kinds are mixed freely inside a microbatch (``kind`` is per token).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..types import MicroBatch, TokenKind

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")


@dataclass
class TrainSequence:
    """One training row. ``mask[i] = 1`` when token ``tokens[i]`` carries a loss (input-aligned; it is predicted
    from ``tokens[:i]``). ``old_logp[i]`` / ``advantage`` apply to the masked tokens (GRPO: rollout log-probs and
    the rollout's advantage; KL: the P+ log-probs of the response tokens; SFT: unused)."""

    tokens: List[int]
    mask: List[int]
    kind: TokenKind
    old_logp: Optional[List[float]] = None
    advantage: float = 0.0
    weight: float = 0.0  # per-token aggregation weight, filled by assign_weights
    tag: str = ""        # free-form provenance for logs and tests, e.g. "q3/e1/g5"

    def __post_init__(self):
        if len(self.mask) != len(self.tokens) or (self.old_logp is not None and len(self.old_logp) != len(self.tokens)):
            raise ValueError(f"sequence {self.tag!r}: tokens, mask and old_logp must have the same length")

    @property
    def num_loss_tokens(self) -> int:
        return int(sum(self.mask))

    @classmethod
    def from_prompt_response(cls, prompt: Sequence[int], response: Sequence[int], kind: TokenKind,
                             logprobs: Optional[Sequence[float]] = None, advantage: float = 0.0,
                             tag: str = "") -> "TrainSequence":
        """prompt + response with the loss on every response token (and its log-prob when given)."""
        tokens = list(prompt) + list(response)
        mask = [0] * len(prompt) + [1] * len(response)
        old = None if logprobs is None else [0.0] * len(prompt) + [float(x) for x in logprobs]
        return cls(tokens, mask, kind, old, advantage, tag=tag)


def assign_weights(seqs: Sequence[TrainSequence], aggregation: str, coefficients: Sequence[float],
                   constant: Optional[float] = None) -> None:
    """Set ``seq.weight`` for every sequence (see module docstring). ``coefficients[k]`` is c_k per TokenKind."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"config key `riel.aggregation`: must be one of {AGGREGATIONS}, got {aggregation!r}")
    tokens = {k: 0 for k in TokenKind}
    count = {k: 0 for k in TokenKind}
    for s in seqs:
        if s.num_loss_tokens:
            tokens[s.kind] += s.num_loss_tokens
            count[s.kind] += 1
    for s in seqs:
        n = s.num_loss_tokens
        c = float(coefficients[int(s.kind)])
        if n == 0:
            s.weight = 0.0
        elif aggregation == "token_mean":
            s.weight = c / tokens[s.kind]
        elif aggregation == "seq_mean_token_mean":
            s.weight = c / (count[s.kind] * n)
        else:
            if not constant or constant <= 0:
                raise ValueError("config key `riel.constant_normalizer`: aggregation=constant needs a positive value")
            s.weight = c / (count[s.kind] * float(constant))


def collate(seqs: Sequence[TrainSequence], pad_id: int) -> MicroBatch:
    """Right-padded, target-aligned tensors of one microbatch (see ``types.MicroBatch``): position t carries the
    loss, weight, advantage and old log-prob of predicting ``tokens[t + 1]``."""
    B = len(seqs)
    S = max(len(s.tokens) for s in seqs)
    tokens = torch.full((B, S), pad_id, dtype=torch.long)
    mask = torch.zeros(B, S)
    kind = torch.zeros(B, S, dtype=torch.int8)
    adv = torch.zeros(B, S)
    old = torch.zeros(B, S)
    per_kind = {k: 0 for k in TokenKind}
    for b, s in enumerate(seqs):
        n = len(s.tokens)
        tokens[b, :n] = torch.tensor(s.tokens, dtype=torch.long)
        m = torch.tensor(s.mask[1:], dtype=torch.float32)
        mask[b, :n - 1] = m
        kind[b, :] = int(s.kind)
        adv[b, :n - 1] = s.advantage * m
        if s.old_logp is not None:
            old[b, :n - 1] = torch.tensor(s.old_logp[1:], dtype=torch.float32) * m
        per_kind[s.kind] += int(m.sum())
    weight = mask * torch.tensor([s.weight for s in seqs], dtype=torch.float32)[:, None]
    name = max(per_kind, key=lambda k: (per_kind[k], -int(k))).name.lower()
    return MicroBatch(tokens=tokens, loss_mask=mask, kind=kind, weight=weight, advantages=adv, old_logp=old,
                      name=name)


def _empty_microbatch(pad_id: int) -> MicroBatch:
    """A zero-weight placeholder for a DP rank with nothing to do (it still joins the gradient all-reduce)."""
    return collate([TrainSequence([pad_id, pad_id], [0, 0], TokenKind.SFT, tag="empty")], pad_id)


def plan_microbatches(seqs: Sequence[TrainSequence], max_tokens: int, dp_size: int = 1,
                      pad_id: int = 0) -> List[List[MicroBatch]]:
    """The step's microbatches for every DP rank (``result[dp_rank]``), from sequences whose ``weight`` is set.

    1. sort by length, longest first (ties: input order);
    2. first fit: a sequence joins the first microbatch where ``(rows + 1) × longest <= max_tokens``;
    3. deal microbatches (largest padded size first) to the DP rank with the fewest padded tokens so far;
    4. a rank left without any microbatch gets a zero-weight placeholder.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens per microbatch must be >= 1, got {max_tokens}")
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i].tokens), i))
    bins: List[List[int]] = []
    for i in order:
        n = len(seqs[i].tokens)
        for b in bins:
            if (len(b) + 1) * len(seqs[b[0]].tokens) <= max_tokens and n <= len(seqs[b[0]].tokens):
                b.append(i)
                break
        else:
            bins.append([i])
    sizes = [len(b) * len(seqs[b[0]].tokens) for b in bins]
    per_rank: List[List[int]] = [[] for _ in range(dp_size)]
    load = [0] * dp_size
    for j in sorted(range(len(bins)), key=lambda j: (-sizes[j], j)):
        r = min(range(dp_size), key=lambda r: (load[r], r))
        per_rank[r].append(j)
        load[r] += sizes[j]
    return [[collate([seqs[i] for i in bins[j]], pad_id) for j in js] or [_empty_microbatch(pad_id)]
            for js in per_rank]
