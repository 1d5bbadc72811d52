"""From a RIEL step's training sequences to typed microbatches: aggregation weights and token-balanced packing.

A :class:`TrainSequence` is one row of the step's forward: GRPO (a rollout: prompt + response), KL (E+'s correct
response under E−'s prompt) or SFT (a buffer example: prompt + gold solution). :func:`plan_microbatches` is the one
function that decides which sequence goes into which microbatch on which data-parallel rank.

Aggregation weights (``MicroBatch.weight``; ``l_t`` is the per-token loss of the token's kind, coefficient c_k =
1, λ1, λ2 for GRPO, KL, SFT). Every term is normalised over the *global* batch, so the sum of ``weight · l`` over
all tokens of all microbatches on all DP ranks is exactly

    L = L_GRPO + λ1·L_KL + λ2·L_SFT

however the sequences are cut into microbatches. The rule (``riel.aggregation``) and the population it counts
(``riel.kl_normalizer`` / ``riel.sft_normalizer``: ``own`` = the term's own sequences, ``grpo`` = the GRPO
sequences, for every term g = GRPO when ``grpo``, g = k when ``own``):
    token_mean            w = c_k / T_g                     T_g = loss tokens of kind g in the step
    seq_mean_token_mean   w = c_k / (n_g · |o|)             n_g = sequences of kind g, |o| = this sequence's tokens
    constant              w = c_k / (n_g · C)               C = riel.constant_normalizer (default max_new_tokens):
                                                            Dr.GRPO's mean over sequences of token sums / C
The paper does not say how the three terms are normalised against each other. ``own`` makes each term a mean
over its own tokens, so a handful of KL tokens carries the weight of the whole GRPO term: with token_mean at λ1 = 1
the KL gradient measured ~30x GRPO's on the v1 quickstart and took over the update. ``grpo`` (the default for the
KL term) counts a KL sequence exactly like one more rollout in the GRPO mean whose advantage is λ1 on every token:
"E+'s correct answer is worth λ1 extra correct samples of E−". The KL term then grows with the number of
questions that have an E+/E− pair instead of being renormalised to full weight every step (measurements and the
chosen λ1 in algo/objective.py).

Packing: sequences sorted by length (longest first) go first-fit into microbatches whose padded size
``rows × longest`` stays within ``max_tokens`` (a longer sequence gets a microbatch of its own); microbatches are
then dealt to DP ranks largest first, each to the rank with the fewest padded tokens so far. Every rank gets at
least one microbatch (a zero-weight one when there are fewer microbatches than ranks), because each rank must
take part in the gradient all-reduce. Kinds are mixed freely inside a microbatch (``kind`` is per token).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

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
    # per-token factor on ``weight`` (input-aligned like ``mask``): the TIS weights of algo/rollout_correction.py
    token_scale: Optional[List[float]] = None

    def __post_init__(self):
        n = len(self.tokens)
        if len(self.mask) != n or any(x is not None and len(x) != n for x in (self.old_logp, self.token_scale)):
            raise ValueError(f"sequence {self.tag!r}: tokens, mask, old_logp and token_scale must have the same length")

    @property
    def num_loss_tokens(self) -> int:
        return int(sum(self.mask))

    @classmethod
    def from_prompt_response(cls, prompt: Sequence[int], response: Sequence[int], kind: TokenKind,
                             logprobs: Optional[Sequence[float]] = None, advantage: float = 0.0,
                             tag: str = "", response_scale: Optional[Sequence[float]] = None) -> "TrainSequence":
        """prompt + response with the loss on every response token (and its log-prob when given);
        ``response_scale``: a per-response-token factor on the aggregation weight (TIS)."""
        tokens = list(prompt) + list(response)
        mask = [0] * len(prompt) + [1] * len(response)
        old = None if logprobs is None else [0.0] * len(prompt) + [float(x) for x in logprobs]
        scale = None if response_scale is None else [1.0] * len(prompt) + [float(x) for x in response_scale]
        return cls(tokens, mask, kind, old, advantage, tag=tag, token_scale=scale)


NORMALIZERS = ("own", "grpo")


def assign_weights(seqs: Sequence[TrainSequence], aggregation: str, coefficients: Sequence[float],
                   constant: Optional[float] = None, normalizers: Optional[Sequence[str]] = None) -> None:
    """Set ``seq.weight`` for every sequence (see module docstring). ``coefficients[k]`` is c_k per TokenKind;
    ``normalizers[k]`` (default ``own`` for every kind) names the population kind k is normalised over. A ``grpo``
    normaliser in a step without GRPO loss tokens falls back to ``own``."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"config key `riel.aggregation`: must be one of {AGGREGATIONS}, got {aggregation!r}")
    normalizers = list(normalizers or ["own"] * len(TokenKind))
    for k, nz in zip(TokenKind, normalizers):
        if nz not in NORMALIZERS:
            raise ValueError(f"config key `riel.{k.name.lower()}_normalizer`: must be one of {NORMALIZERS}, got {nz!r}")
    tokens = {k: 0 for k in TokenKind}
    count = {k: 0 for k in TokenKind}
    for s in seqs:
        if s.num_loss_tokens:
            tokens[s.kind] += s.num_loss_tokens
            count[s.kind] += 1
    pop = {k: TokenKind.GRPO if normalizers[int(k)] == "grpo" and tokens[TokenKind.GRPO] else k for k in TokenKind}
    for s in seqs:
        n = s.num_loss_tokens
        c = float(coefficients[int(s.kind)])
        g = pop[s.kind]
        if n == 0:
            s.weight = 0.0
        elif aggregation == "token_mean":
            s.weight = c / tokens[g]
        elif aggregation == "seq_mean_token_mean":
            s.weight = c / (count[g] * n)
        else:
            if not constant or constant <= 0:
                raise ValueError("config key `riel.constant_normalizer`: aggregation=constant needs a positive value")
            s.weight = c / (count[g] * float(constant))


@dataclass
class PackedRow:
    """One row of a microbatch, already target-aligned: slot t carries the loss of predicting ``tokens[t + 1]``.

    A flat row is one sequence (positions 0..n-1, plain causal attention). A shared row holds one prompt once and
    several sequences that continue it (:func:`shared_rows`); ``position_ids`` then restart for every segment and
    ``segment_ids`` limit attention: a slot sees the earlier slots of the shared prompt (segment 0) and of its own
    segment only."""

    tokens: List[int]
    loss_mask: List[float]
    kind: List[int]
    advantage: List[float]
    old_logp: List[float]
    weight: List[float]
    position_ids: Optional[List[int]] = None  # None: 0..n-1
    segment_ids: Optional[List[int]] = None   # None: one causal sequence

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, seq: TrainSequence, start: int) -> None:
        """Append ``seq.tokens[start:]`` with target-aligned fields (the last appended slot predicts nothing)."""
        n = len(seq.tokens)
        nxt = [float(m) for m in seq.mask[start + 1:]] + [0.0]
        self.tokens += seq.tokens[start:]
        self.loss_mask += nxt
        self.kind += [int(seq.kind)] * (n - start)
        self.advantage += [seq.advantage * m for m in nxt]
        old = seq.old_logp[start + 1:] + [0.0] if seq.old_logp is not None else [0.0] * (n - start)
        self.old_logp += [o * m for o, m in zip(old, nxt)]
        if seq.token_scale is None:
            self.weight += [seq.weight * m for m in nxt]
        else:
            self.weight += [seq.weight * m * c for m, c in zip(nxt, seq.token_scale[start + 1:] + [0.0])]


def flat_row(seq: TrainSequence) -> PackedRow:
    row = PackedRow([], [], [], [], [], [])
    row.extend(seq, 0)
    return row


def _first_loss(seq: TrainSequence) -> int:
    return next((i for i, m in enumerate(seq.mask) if m), len(seq.mask))


def shared_rows(seqs: Sequence[TrainSequence], max_row_tokens: int,
                max_tokens: Optional[int] = None) -> List[PackedRow]:
    """Rows that hold a common prompt once. Sequences whose tokens before their first loss token are identical
    (a RIEL step's G rollouts of one (question, expert), the KL responses scored under that prompt, a buffer example
    of that prompt) share ``prompt[:-1]``; each continues as a segment ``prompt[-1] + response`` at positions
    ``len(prompt) - 1 ...``, so every response token sees exactly the context it has in its flat row and the loss,
    log-probs and gradients are those of the flat rows. A group is split over several rows of balanced length (each
    repeating the prompt; :func:`_balanced_split`) to keep rows within ``max_row_tokens``; a sequence alone under its
    prompt stays a flat row. With ``max_tokens`` (the microbatch size), the row length bound is the one of
    ``max_row_tokens · {1, 7/8, ..., 1/4}`` whose rows :func:`plan_microbatches` packs into the fewest padded
    tokens (ties: the shorter bound): one group that just fits a full row would otherwise set the padded width
    of a microbatch whose other rows are half as long."""
    groups: Dict[tuple, List[TrainSequence]] = {}
    for sq in seqs:
        p = _first_loss(sq)
        groups.setdefault(tuple(sq.tokens[:p]) if p >= 1 else ("flat", id(sq)), []).append(sq)
    plans = []  # (key, p, members, segs) of the groups that share their prompt; flat rows: (None, row)
    for key, members in groups.items():
        p = len(key) if key and key[0] != "flat" else 0
        if len(members) == 1 or p < 2:
            plans.extend((None, flat_row(sq)) for sq in members)
        else:
            plans.append((key, p, members, [len(sq.tokens) - (p - 1) for sq in members]))
    flat = [len(pl[1]) for pl in plans if pl[0] is None]
    cap = max_row_tokens
    shared = [pl for pl in plans if pl[0] is not None]
    if max_tokens is not None and shared:

        def padded(bound: int) -> int:
            lens = flat + [p - 1 + sum(segs[j] for j in part) for _, p, _, segs in shared
                           for part in _balanced_split(segs, p - 1, bound)]
            return sum(n * w for n, w in _first_fit(lens, max_tokens))

        bounds = sorted({max(1, max_row_tokens * f // 8) for f in range(2, 9)})
        cap = min(bounds, key=lambda b: (padded(b), b))
    rows: List[PackedRow] = []
    for plan in plans:
        if plan[0] is None:
            rows.append(plan[1])
            continue
        key, p, members, segs = plan
        for part in _balanced_split(segs, p - 1, cap):
            row = PackedRow(list(key[:-1]), [0.0] * (p - 1), [int(members[part[0]].kind)] * (p - 1), [0.0] * (p - 1),
                            [0.0] * (p - 1), [0.0] * (p - 1), list(range(p - 1)), [0] * (p - 1))
            for sid, j in enumerate(part, start=1):
                sq = members[j]
                row.extend(sq, p - 1)
                row.position_ids += list(range(p - 1, p - 1 + segs[j]))
                row.segment_ids += [sid] * segs[j]
            rows.append(row)
    return [r if r.segment_ids is None or max(r.segment_ids) > 1 else _as_flat(r) for r in rows]


def _first_fit(lengths: Sequence[int], max_tokens: int) -> List[tuple]:
    """(rows, width) of each microbatch of :func:`plan_microbatches`' first fit over rows of ``lengths``."""
    bins: List[List[int]] = []
    for n in sorted(lengths, reverse=True):
        for b in bins:
            if (b[0] + 1) * b[1] <= max_tokens:
                b[0] += 1
                break
        else:
            bins.append([1, n])
    return [tuple(b) for b in bins]


def _balanced_split(segs: Sequence[int], base: int, cap: int) -> List[List[int]]:
    """Split a group's segments (lengths ``segs``, each row also holding the ``base`` shared slots) over the fewest
    rows of at most ``cap`` slots, balanced: k rows (from ``ceil(sum / (cap - base))`` up), longest segment first
    into the shortest row, until every row fits or holds a single segment (which may exceed ``cap`` alone). Rows of
    similar length pad less in a microbatch than greedy filling, which leaves a full row and a short remainder
    (G = 8 rollouts of 58 tokens under a 100-token prompt, cap 512: 7 + 1 segments, rows of 506 and 158 slots,
    padded to 2 x 506; balanced: 4 + 4, 2 x 336). Each row lists its segments in input order."""
    n = len(segs)
    if base + sum(segs) <= cap:
        return [list(range(n))]
    k = max(2, -(-sum(segs) // max(1, cap - base)))
    order = sorted(range(n), key=lambda j: (-segs[j], j))
    while True:
        parts: List[List[int]] = [[] for _ in range(min(k, n))]
        load = [0] * len(parts)
        for j in order:
            r = min(range(len(parts)), key=lambda r: (load[r], r))
            parts[r].append(j)
            load[r] += segs[j]
        if k >= n or all(base + load[r] <= cap or len(parts[r]) == 1 for r in range(len(parts))):
            return sorted((sorted(pt) for pt in parts if pt), key=lambda pt: pt[0])
        k += 1


def _as_flat(row: PackedRow) -> PackedRow:
    """A shared row that ended up with one segment is an ordinary flat row."""
    row.position_ids, row.segment_ids = None, None
    return row


def collate_rows(rows: Sequence[PackedRow], pad_id: int) -> MicroBatch:
    """Right-padded tensors of one microbatch. ``position_ids`` / ``segment_ids`` are set only when a row is shared
    (padding slots get segment −1: they attend among themselves, carry no loss, and no real slot sees them)."""
    B, S = len(rows), max(len(r) for r in rows)
    tokens = torch.full((B, S), pad_id, dtype=torch.long)
    f = {k: torch.zeros(B, S) for k in ("loss_mask", "advantage", "old_logp", "weight")}
    kind = torch.zeros(B, S, dtype=torch.int8)
    shared = any(r.segment_ids is not None for r in rows)
    pos = torch.arange(S).repeat(B, 1) if shared else None
    seg = torch.full((B, S), -1, dtype=torch.long) if shared else None
    per_kind = {k: 0.0 for k in TokenKind}
    for b, r in enumerate(rows):
        n = len(r)
        tokens[b, :n] = torch.tensor(r.tokens, dtype=torch.long)
        for k in f:
            f[k][b, :n] = torch.tensor(getattr(r, k), dtype=torch.float32)
        kind[b, :n] = torch.tensor(r.kind, dtype=torch.int8)
        kind[b, n:] = r.kind[-1]
        if shared:
            if r.position_ids is not None:
                pos[b, :n] = torch.tensor(r.position_ids)
                seg[b, :n] = torch.tensor(r.segment_ids)
            else:
                seg[b, :n] = 0
        for k_, m in zip(r.kind, r.loss_mask):
            per_kind[TokenKind(k_)] += m
    name = max(per_kind, key=lambda k: (per_kind[k], -int(k))).name.lower()
    return MicroBatch(tokens=tokens, loss_mask=f["loss_mask"], kind=kind, weight=f["weight"],
                      advantages=f["advantage"], old_logp=f["old_logp"], name=name, position_ids=pos,
                      segment_ids=seg)


def collate(seqs: Sequence[TrainSequence], pad_id: int) -> MicroBatch:
    """Right-padded, target-aligned tensors of one microbatch of flat rows (see ``types.MicroBatch``): position t
    carries the loss, weight, advantage and old log-prob of predicting ``tokens[t + 1]``."""
    return collate_rows([flat_row(s) for s in seqs], pad_id)


def _empty_microbatch(pad_id: int) -> MicroBatch:
    """A zero-weight placeholder for a DP rank with nothing to do (it still joins the gradient all-reduce)."""
    return collate([TrainSequence([pad_id, pad_id], [0, 0], TokenKind.SFT, tag="empty")], pad_id)


def plan_microbatches(seqs: Sequence[TrainSequence], max_tokens: int, dp_size: int = 1, pad_id: int = 0,
                      share_prompts: bool = False, max_row_tokens: Optional[int] = None) -> List[List[MicroBatch]]:
    """The step's microbatches for every DP rank (``result[dp_rank]``), from sequences whose ``weight`` is set.

    0. rows: one per sequence, or with ``share_prompts`` the prompt-sharing rows of :func:`shared_rows` (at most
       ``max_row_tokens`` slots, default ``max_tokens``; the bound that pads least);
    1. sort rows by length, longest first (ties: input order);
    2. first fit: a row joins the first microbatch where ``(rows + 1) × longest <= max_tokens``;
    3. deal microbatches (largest padded size first) to the DP rank with the fewest padded tokens so far;
    4. a rank left without any microbatch gets a zero-weight placeholder.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens per microbatch must be >= 1, got {max_tokens}")
    rows = shared_rows(seqs, max_row_tokens or max_tokens, max_tokens) if share_prompts else [flat_row(s) for s in seqs]
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i))
    bins: List[List[int]] = []
    for i in order:
        n = len(rows[i])
        for b in bins:
            if (len(b) + 1) * len(rows[b[0]]) <= max_tokens and n <= len(rows[b[0]]):
                b.append(i)
                break
        else:
            bins.append([i])
    sizes = [len(b) * len(rows[b[0]]) for b in bins]
    per_rank: List[List[int]] = [[] for _ in range(dp_size)]
    load = [0] * dp_size
    for j in sorted(range(len(bins)), key=lambda j: (-sizes[j], j)):
        r = min(range(dp_size), key=lambda r: (load[r], r))
        per_rank[r].append(j)
        load[r] += sizes[j]
    return [[collate_rows([rows[i] for i in bins[j]], pad_id) for j in js] or [_empty_microbatch(pad_id)]
            for js in per_rank]
