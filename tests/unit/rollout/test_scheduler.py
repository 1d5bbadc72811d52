"""The RIEL scheduler on a scripted engine and a scripted reward pattern: the emitted microbatches hold exactly the
expected GRPO rows, the KL rows of the right (E+, E−) pair and the SFT rows once the buffer fills."""
import threading
from collections import Counter, defaultdict

import pytest
import torch

from megatron_meml.algo.sft_buffer import HardExampleBuffer
from megatron_meml.config.schema import RIELConfig, RolloutConfig
from megatron_meml.rollout.api import GenerationEngine
from megatron_meml.rollout.scheduler import RielScheduler
from megatron_meml.types import Record, Rollout, TokenKind

G, N, PAD, EOS = 4, 3, 0, 2
# rewards[qid][expert] = the G rewards, in sample order
REWARDS = {
    "q0": [[1, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]],  # E+ = 1 (0.75), E- = 2 (0.0); hard: e0 (3 wrong), e2 (4)
    "q1": [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],  # all equal: no KL, nothing hard
}
RECORDS = [Record(id="q0", question="ab", answer="1", solution="xy"),
           Record(id="q1", question="cde", answer="2", solution="z")]


class ScriptedEngine:
    """Response of the g-th request of (q, e): ids [100 + e, 110 + g, EOS], log-probs encoding (q, e, g)."""

    def __init__(self):
        self.seen = []

    def generate(self, requests, params):
        out = []
        for r in requests:
            out.append(Rollout(r, [100 + r.expert, 110 + g_of(r), EOS], logprobs_of(r.qid, r.expert, g_of(r)),
                               text=f"{r.qid}/{r.expert}/{g_of(r)}", finish_reason="eos"))
            self.seen.append(r.seed)
        return out


_G_INDEX = {}  # request seed -> sample index g within its (q, e) group (filled by make())


def g_of(request):
    return _G_INDEX[request.seed]


def logprobs_of(qid, e, g):
    q = int(qid[1:])
    return [-(1 + q + 0.1 * e + 0.01 * g), -0.5, -0.25]


class Renderer:
    def prompt(self, record, expert):
        return [1, 50 + expert] + [ord(c) for c in record.question]

    def example(self, record, expert):
        p = self.prompt(record, expert)
        resp = [ord(c) for c in record.solution] + [EOS]
        return p + resp, [0] * len(p) + [1] * len(resp)


def reward(text, record):
    qid, e, g = text.split("/")
    assert qid == record.id
    return float(REWARDS[qid][int(e)][int(g)])


def make(riel=None, dp_rank=0, dp_size=1, all_gather=None):
    riel = riel or RIELConfig(group_size=G, buffer_k=2, buffer_capacity=2, admit_prob=1.0, max_kl_responses=2,
                              lambda_kl=0.5, lambda_sft=2.0, skip_zero_advantage=False, kl_normalizer="own")
    rollout = RolloutConfig(max_new_tokens=8, seed=3)
    sched = RielScheduler(ScriptedEngine(), Renderer(), reward, riel, rollout, num_experts=N,
                          max_tokens_per_microbatch=24, pad_id=PAD, buffer=HardExampleBuffer.from_config(riel, seed=0),
                          dp_rank=dp_rank, dp_size=dp_size, all_gather=all_gather)
    _G_INDEX.clear()
    for i, r in enumerate(sched.requests(RECORDS, step=0)):
        _G_INDEX[r.seed] = i % G
    return sched


def rows(microbatches):
    """Every row as (kind, tokens, loss-token ids, old_logp on loss tokens, advantage, weight)."""
    out = []
    for mb in microbatches:
        for b in range(mb.tokens.shape[0]):
            m = mb.loss_mask[b] > 0
            if not m.any():
                continue
            n = int(m.nonzero().max()) + 2
            kinds = set(mb.kind[b][m].tolist())
            assert len(kinds) == 1
            out.append((TokenKind(kinds.pop()), tuple(mb.tokens[b, :n].tolist()),
                        tuple(mb.tokens[b, 1:][m[:-1]].tolist()), tuple(round(x, 6) for x in mb.old_logp[b][m].tolist()),
                        round(float(mb.advantages[b][m][0]), 6), round(float(mb.weight[b][m][0]), 6)))
    return out


def expected_rows():
    r = Renderer()
    exp = []
    adv = {"q0": [[0.75, -0.25, -0.25, -0.25], [0.25, 0.25, -0.75, 0.25], [0.0] * 4], "q1": [[0.0] * 4] * 3}
    for rec in RECORDS:
        for e in range(N):
            for g in range(G):
                resp = (100 + e, 110 + g, EOS)
                exp.append((TokenKind.GRPO, tuple(r.prompt(rec, e)) + resp, resp,
                            tuple(round(x, 6) for x in logprobs_of(rec.id, e, g)), adv[rec.id][e][g],
                            round(1 / 72, 6)))  # 24 rollouts x 3 response tokens
    for g in (0, 1):  # E+ = 1's first two correct responses, under E- = 2's prompt; teacher = P+ log-probs
        resp = (101, 110 + g, EOS)
        exp.append((TokenKind.KL, tuple(r.prompt(RECORDS[0], 2)) + resp, resp,
                    tuple(round(x, 6) for x in logprobs_of("q0", 1, g)), 0.0, round(0.5 / 6, 6)))
    for e in (0, 2):  # hard groups of q0 fill the buffer (B = 2): gold solution under P_e
        ids, mask = r.example(RECORDS[0], e)
        exp.append((TokenKind.SFT, tuple(ids), tuple(i for i, m in zip(ids, mask) if m), (0.0,) * 3, 0.0,
                    round(2.0 / 6, 6)))
    return exp


def test_step_emits_exactly_the_expected_rows():
    sched = make()
    out = sched.step(RECORDS, step=0)
    assert Counter(rows(out.microbatches)) == Counter(expected_rows())
    assert [(p.qid, p.e_plus, p.e_minus) for p in out.kl_pairs] == [("q0", 1, 2)]
    assert [(x.record.id, x.expert) for x in out.sft_examples] == [("q0", 0), ("q0", 2)]
    assert len(sched.buffer) == 0
    assert all(mb.tokens.numel() <= 24 or mb.tokens.shape[0] == 1 for mb in out.microbatches)
    assert len(out.microbatches) > 1 and {mb.name for mb in out.microbatches} >= {"grpo"}
    # weights: each term sums to its coefficient, so the microbatch sum is L_GRPO + λ1 L_KL + λ2 L_SFT
    per_kind = defaultdict(float)
    for mb in out.microbatches:
        for k in TokenKind:
            per_kind[k] += float((mb.weight * (mb.kind == int(k))).sum())
    assert per_kind[TokenKind.GRPO] == pytest.approx(1.0)
    assert per_kind[TokenKind.KL] == pytest.approx(0.5)
    assert per_kind[TokenKind.SFT] == pytest.approx(2.0)
    assert out.stats["kl/questions"] == 1 and out.stats["sft/fired"] == 2
    assert out.stats["reward/expert1"] == pytest.approx((0.75 + 1) / 2)


def test_zero_advantage_rollouts_are_left_out_of_the_forward():
    """riel.skip_zero_advantage: the 16 GRPO rows with A = 0 (q0's expert 2, all of q1) are not trained on; every
    other row is emitted with the weight it has when they are kept (the normaliser still counts them)."""
    riel = RIELConfig(group_size=G, buffer_k=2, buffer_capacity=2, admit_prob=1.0, max_kl_responses=2,
                      lambda_kl=0.5, lambda_sft=2.0, skip_zero_advantage=True, kl_normalizer="own")
    out = make(riel).step(RECORDS, step=0)
    kept = [r for r in expected_rows() if not (r[0] == TokenKind.GRPO and r[4] == 0.0)]
    assert len(expected_rows()) - len(kept) == 16
    assert Counter(rows(out.microbatches)) == Counter(kept)
    assert out.stats["rows/skipped_zero_advantage"] == 16
    assert out.stats["tokens/grpo"] == 72  # reported over all rollouts
    # with a reference KL the zero-advantage rows still carry a loss, so nothing is skipped
    riel.beta_ref = 0.1
    out = make(riel).step(RECORDS, step=0)
    assert out.stats["rows/skipped_zero_advantage"] == 0 and len(rows(out.microbatches)) == len(expected_rows())


def test_shared_prompt_rows_hold_the_same_loss_tokens():
    """share_prompts=True: fewer padded slots, and the same (kind, target token, old log-prob, advantage, weight)
    multiset over all loss tokens as the flat packing."""
    def tokens_of(mbs):
        out = []
        for mb in mbs:
            m = mb.loss_mask > 0
            tgt = torch.cat([mb.tokens[:, 1:], mb.tokens[:, :1]], 1)
            for f in zip(mb.kind[m].tolist(), tgt[m].tolist(), mb.old_logp[m].tolist(), mb.advantages[m].tolist(),
                         mb.weight[m].tolist()):
                out.append(tuple(round(x, 6) for x in f))
        return Counter(out)

    flat = make().step(RECORDS, step=0).microbatches
    sched = make()
    sched.share_prompts = True
    shared = sched.step(RECORDS, step=0).microbatches
    assert tokens_of(shared) == tokens_of(flat)
    assert any(mb.segment_ids is not None for mb in shared)
    assert sum(mb.tokens.numel() for mb in shared) < sum(mb.tokens.numel() for mb in flat)


def test_grpo_normalizer_counts_a_kl_row_like_a_rollout_and_split_terms_keep_every_row():
    """riel.kl_normalizer=grpo (the default): a KL token weighs λ1 / T_GRPO (T_GRPO = 72 rollout tokens), not
    λ1 / T_KL; split_terms packs each term into its own microbatches with the same rows and weights."""
    riel = RIELConfig(group_size=G, buffer_k=2, buffer_capacity=2, admit_prob=1.0, max_kl_responses=2,
                      lambda_kl=0.5, lambda_sft=2.0, skip_zero_advantage=False)
    assert riel.kl_normalizer == "grpo" and riel.sft_normalizer == "own"
    out = make(riel).step(RECORDS, step=0, split_terms=True)
    want = [r[:5] + (round(0.5 / 72, 6),) if r[0] == TokenKind.KL else r for r in expected_rows()]
    assert Counter(rows(out.microbatches)) == Counter(want)
    assert [k for k, _ in out.terms] == [TokenKind.GRPO, TokenKind.KL, TokenKind.SFT]
    for kind, mbs in out.terms:
        assert {r[0] for r in rows(mbs)} == {kind}
    assert out.microbatches == [mb for _, mbs in out.terms for mb in mbs]


def test_ties_between_experts_are_a_seeded_draw():
    """q0 has two experts tied for E+ (rewards 0.5) and one below: E+ is drawn per (seed, step, question), not the
    lowest index; the same seed and step give the same draw."""
    tie = {"q0": [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]], "q1": REWARDS["q1"]}
    drawn = []
    for step in range(24):
        sched = make()
        sched.reward_fn = lambda text, rec: float(tie[rec.id][int(text.split("/")[1])][int(text.split("/")[2])])
        _G_INDEX.update({r.seed: i % G for i, r in enumerate(sched.requests(RECORDS, step=step))})
        (pair,) = sched.step(RECORDS, step=step).kl_pairs
        drawn.append(pair.e_plus)
        assert pair.e_minus == 1
    assert set(drawn) == {0, 2} and 6 <= drawn.count(0) <= 18
    sched = make()
    sched.reward_fn = lambda text, rec: float(tie[rec.id][int(text.split("/")[1])][int(text.split("/")[2])])
    _G_INDEX.update({r.seed: i % G for i, r in enumerate(sched.requests(RECORDS, step=5))})
    assert sched.step(RECORDS, step=5).kl_pairs[0].e_plus == drawn[5]


def test_buffer_below_capacity_gives_no_sft_and_switches_work():
    riel = RIELConfig(group_size=G, buffer_k=2, buffer_capacity=3, admit_prob=1.0, inter_expert_kl=False,
                      skip_zero_advantage=False)
    sched = make(riel)
    out = sched.step(RECORDS, step=0)
    kinds = Counter(r[0] for r in rows(out.microbatches))
    assert kinds == {TokenKind.GRPO: 24} and out.sft_examples == [] and out.kl_pairs == []
    assert len(sched.buffer) == 2  # waits for a third hard example


def test_requests_and_seeds():
    sched = make()
    reqs = sched.requests(RECORDS, step=0)
    assert len(reqs) == 2 * N * G
    assert [(r.qid, r.expert) for r in reqs[:G + 1]] == [("q0", 0)] * G + [("q0", 1)]
    assert len({r.seed for r in reqs}) == len(reqs)
    assert [r.seed for r in sched.requests(RECORDS, step=1)] != [r.seed for r in reqs]
    assert isinstance(sched.engine, GenerationEngine)


def test_data_parallel_split_gives_the_same_step():
    """Two DP ranks (threads) generate half the requests each; the union of their microbatches is the DP=1 step."""
    single = rows(make().step(RECORDS, step=0).microbatches)
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def gather_for(rank):
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out
        return gather

    scheds = [make(dp_rank=r, dp_size=2, all_gather=gather_for(r)) for r in range(2)]
    ts = [threading.Thread(target=lambda r=r: results.__setitem__(r, scheds[r].step(RECORDS, step=0)))
          for r in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(len(res.microbatches) >= 1 for res in results)
    assert Counter(rows(results[0].microbatches) + rows(results[1].microbatches)) == Counter(single)
    assert sum(len(s.engine.seen) for s in scheds) == 2 * N * G
