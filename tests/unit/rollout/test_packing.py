"""Aggregation weights make the microbatch sum equal the global objective however sequences are packed."""
import random

import pytest
import torch

from megatron_meml.rollout.packing import TrainSequence, assign_weights, collate, plan_microbatches
from megatron_meml.types import TokenKind

COEF = [1.0, 0.5, 2.0]


def make_seqs(n=23, seed=0):
    rng = random.Random(seed)
    seqs = []
    for i in range(n):
        kind = TokenKind(i % 3)
        p, r = rng.randint(2, 9), rng.randint(1, 12)
        lp = [-rng.random() for _ in range(r)] if kind != TokenKind.SFT else None
        seqs.append(TrainSequence.from_prompt_response(list(range(3, 3 + p)), [rng.randint(3, 99) for _ in range(r)],
                                                       kind, lp, advantage=rng.uniform(-1, 1), tag=str(i)))
    return seqs


def token_loss(tokens, pos):
    """A deterministic stand-in for a per-token loss l_t (depends on the sequence content and position)."""
    return ((tokens * 31 + pos * 7) % 13).float() / 13.0 + 0.1


def reference(seqs, agg, C=10.0):
    """L = sum_k c_k * L_k computed sequence by sequence."""
    total = 0.0
    for k in TokenKind:
        ks = [s for s in seqs if s.kind == k]
        per_seq = []
        for s in ks:
            t = torch.tensor(s.tokens)
            ls = [float(token_loss(t[i - 1], torch.tensor(i - 1))) for i in range(1, len(s.tokens)) if s.mask[i]]
            per_seq.append(ls)
        if not ks:
            continue
        if agg == "token_mean":
            L = sum(sum(x) for x in per_seq) / sum(len(x) for x in per_seq)
        elif agg == "seq_mean_token_mean":
            L = sum(sum(x) / len(x) for x in per_seq) / len(per_seq)
        else:
            L = sum(sum(x) / C for x in per_seq) / len(per_seq)
        total += COEF[int(k)] * L
    return total


def objective(plan):
    tot = 0.0
    for rank in plan:
        for mb in rank:
            pos = torch.arange(mb.tokens.shape[1]).expand_as(mb.tokens)
            tot += float((mb.weight * mb.loss_mask * token_loss(mb.tokens, pos)).sum())
    return tot


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "constant"])
def test_weights_give_the_global_objective_for_any_packing(agg):
    seqs = make_seqs()
    assign_weights(seqs, agg, COEF, constant=10.0)
    ref = reference(seqs, agg)
    for max_tokens, dp in [(1, 1), (40, 1), (64, 2), (10_000, 1), (30, 3)]:
        assert objective(plan_microbatches(seqs, max_tokens, dp)) == pytest.approx(ref, rel=1e-5)


def test_packing_capacity_balance_and_every_rank_busy():
    seqs = make_seqs(40, seed=1)
    assign_weights(seqs, "token_mean", COEF)
    plan = plan_microbatches(seqs, 60, dp_size=2, pad_id=0)
    rows = sum(mb.tokens.shape[0] for r in plan for mb in r)
    assert rows == 40
    for r in plan:
        for mb in r:
            assert mb.tokens.numel() <= 60 or mb.tokens.shape[0] == 1
    loads = [sum(mb.tokens.numel() for mb in r) for r in plan]
    assert max(loads) - min(loads) <= max(len(s.tokens) for s in seqs) * 4
    empty = plan_microbatches(seqs[:1], 60, dp_size=3)
    assert [len(r) for r in empty] == [1, 1, 1]
    assert sum(float(mb.weight.sum()) for r in empty[1:] for mb in r) == 0.0


def test_collate_is_target_aligned():
    s = TrainSequence.from_prompt_response([5, 6, 7], [8, 9], TokenKind.GRPO, [-0.5, -0.25], advantage=0.75)
    s.weight = 0.1
    k = TrainSequence.from_prompt_response([5], [8, 9, 10], TokenKind.KL, [-1.0, -2.0, -3.0])
    k.weight = 0.2
    mb = collate([s, k], pad_id=0)
    assert mb.tokens.tolist() == [[5, 6, 7, 8, 9], [5, 8, 9, 10, 0]]
    assert mb.loss_mask.tolist() == [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]  # position t predicts tokens[t+1]
    assert mb.old_logp.tolist() == [[0, 0, -0.5, -0.25, 0], [-1, -2, -3, 0, 0]]
    assert mb.advantages[0].tolist() == [0, 0, 0.75, 0.75, 0] and mb.advantages[1].abs().sum() == 0
    assert mb.kind.tolist() == [[0] * 5, [1] * 5] and mb.kind.dtype == torch.int8
    assert torch.allclose(mb.weight, mb.loss_mask * torch.tensor([[0.1], [0.2]]))
    assert mb.name == "kl"  # 3 KL loss tokens vs 2 GRPO
