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


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "constant"])
def test_grpo_normalizer_weighs_kl_and_sft_rows_like_rollouts(agg):
    """normalizers=grpo for KL and SFT: their rows get the weight a GRPO row of the same length would get, times
    λ1 / λ2; GRPO rows are unchanged; without GRPO rows a term falls back on its own population."""
    seqs = make_seqs()
    assign_weights(seqs, agg, COEF, constant=10.0)
    own = [q.weight for q in seqs]
    assign_weights(seqs, agg, COEF, constant=10.0, normalizers=["own", "grpo", "grpo"])
    grpo = [q for q in seqs if q.kind == TokenKind.GRPO]
    T, n = sum(q.num_loss_tokens for q in grpo), len(grpo)
    for q, w in zip(seqs, own):
        c = COEF[int(q.kind)]
        want = {"token_mean": c / T, "seq_mean_token_mean": c / (n * q.num_loss_tokens),
                "constant": c / (n * 10.0)}[agg]
        assert q.weight == pytest.approx(w if q.kind == TokenKind.GRPO else want)
    rest = [q for q in seqs if q.kind != TokenKind.GRPO]
    assign_weights(rest, agg, COEF, constant=10.0, normalizers=["own", "grpo", "grpo"])
    again = [q.weight for q in rest]
    assign_weights(rest, agg, COEF, constant=10.0)
    assert again == [q.weight for q in rest]
    with pytest.raises(ValueError, match="riel.kl_normalizer"):
        assign_weights(seqs, agg, COEF, constant=10.0, normalizers=["own", "tokens", "own"])


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


def test_shared_rows_layout():
    """Two rollouts of prompt [5, 6, 7] share it: slots [5, 6 | 7, 8, 9 | 7, 10], positions restart at the last
    prompt token, segment ids 0 / 1 / 2, and each segment's loss / old log-prob / advantage stays target-aligned."""
    from megatron_meml.rollout.packing import shared_rows

    a = TrainSequence.from_prompt_response([5, 6, 7], [8, 9], TokenKind.GRPO, [-0.5, -0.25], advantage=0.75)
    b = TrainSequence.from_prompt_response([5, 6, 7], [10], TokenKind.KL, [-1.0])
    c = TrainSequence.from_prompt_response([4, 6, 7], [11, 12], TokenKind.GRPO, [-0.1, -0.2], advantage=-1.0)
    a.weight, b.weight, c.weight = 0.1, 0.2, 0.3
    rows = shared_rows([a, c, b], max_row_tokens=100)
    shared, alone = rows
    assert shared.tokens == [5, 6, 7, 8, 9, 7, 10]
    assert shared.position_ids == [0, 1, 2, 3, 4, 2, 3]
    assert shared.segment_ids == [0, 0, 1, 1, 1, 2, 2]
    assert shared.loss_mask == [0, 0, 1, 1, 0, 1, 0]
    assert shared.old_logp == [0, 0, -0.5, -0.25, 0, -1.0, 0]
    assert shared.advantage == [0, 0, 0.75, 0.75, 0, 0, 0]
    assert shared.kind[2:] == [0, 0, 0, 1, 1]
    assert shared.weight == pytest.approx([0, 0, 0.1, 0.1, 0, 0.2, 0])
    assert alone.tokens == c.tokens and alone.segment_ids is None  # nobody shares its prompt: a flat row
    assert alone.loss_mask == collate([c], 0).loss_mask[0].tolist()
    # rows are capped: the second segment does not fit in 6 slots, so the prompt is repeated in a second row
    # (which, holding one segment, is an ordinary flat row)
    capped = shared_rows([a, b], max_row_tokens=6)
    assert [r.tokens for r in capped] == [[5, 6, 7, 8, 9], [5, 6, 7, 10]]
    assert all(r.segment_ids is None for r in capped)


def test_shared_rows_balance_a_split_group_and_pick_the_bound_that_pads_least():
    """A group too long for one row is split into rows of similar length (not a full row plus a short remainder),
    each listing its segments in input order; given the microbatch size, the row bound is lowered when one long
    row would set the padded width of rows half as long."""
    from megatron_meml.rollout.packing import shared_rows

    prompt = list(range(1, 11))                                            # 10 tokens: 9 shared slots per row
    group = [TrainSequence.from_prompt_response(prompt, [50 + i] * 6, TokenKind.GRPO, [-0.1] * 6, tag=str(i))
             for i in range(8)]                                              # segments of 7 slots
    rows = shared_rows(group, max_row_tokens=60)                            # 9 + 8 x 7 = 65 > 60: two rows
    assert [len(r) for r in rows] == [37, 37]                               # greedy: 58 (7 segments) + 16 (1)
    assert [[r.tokens[r.segment_ids.index(s)] for s in range(1, 5)] for r in rows] == [[10] * 4, [10] * 4]
    firsts = [[r.tokens[r.segment_ids.index(s) + 1] for s in range(1, 5)] for r in rows]
    assert sorted(firsts[0] + firsts[1]) == list(range(50, 58)) and all(f == sorted(f) for f in firsts)
    # a second prompt whose group just fits one 60-slot row: alone it sets the microbatch width to 58
    other = [TrainSequence.from_prompt_response([90] * 10, [60 + i] * 6, TokenKind.GRPO, [-0.1] * 6)
             for i in range(7)]
    for s in group + other:
        s.weight = 1.0
    plain = shared_rows(group + other, max_row_tokens=60)
    tuned = shared_rows(group + other, max_row_tokens=60, max_tokens=1000)
    assert sorted(len(r) for r in plain) == [37, 37, 58]
    assert max(len(r) for r in tuned) < 58
    assert len(tuned) * max(len(r) for r in tuned) < len(plain) * 58


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_shared_rows_keep_the_objective(agg):
    """The packed objective with prompt sharing equals the per-sequence reference (the stand-in loss depends on
    the token and its RoPE position, both of which sharing must preserve)."""
    rng = random.Random(3)
    prompts = [[3, 4, 5, 6], [7, 8], [9, 10, 11]]
    seqs = []
    for i in range(20):
        kind = TokenKind(i % 3)
        r = rng.randint(1, 7)
        lp = [-rng.random() for _ in range(r)] if kind != TokenKind.SFT else None
        seqs.append(TrainSequence.from_prompt_response(prompts[i % 3], [rng.randint(12, 99) for _ in range(r)], kind,
                                                       lp, advantage=rng.uniform(-1, 1), tag=str(i)))
    assign_weights(seqs, agg, COEF)
    ref = reference(seqs, agg)
    for max_tokens, dp in [(40, 1), (64, 2), (400, 1)]:
        plan = plan_microbatches(seqs, max_tokens, dp, share_prompts=True, max_row_tokens=24)
        total = 0.0
        for mbs in plan:
            for mb in mbs:
                pos = mb.position_ids if mb.position_ids is not None else torch.arange(mb.tokens.shape[1]).expand_as(mb.tokens)
                total += float((mb.weight * mb.loss_mask * token_loss(mb.tokens, pos)).sum())
        assert total == pytest.approx(ref, rel=1e-5)
        assert sum(mb.tokens.numel() for mbs in plan for mb in mbs) < sum(len(s.tokens) for s in seqs) * 1.5
