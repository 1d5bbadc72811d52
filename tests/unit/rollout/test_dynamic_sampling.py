"""Dynamic sampling per (question, expert) cell on a scripted engine: an all-equal cell leaves the GRPO batch and
its slot is refilled with a fresh question for the same expert, the batch keeps Q·N cells, the KL pair and the
hard-example buffer still see the dropped all-wrong cell, and an expert whose refills are all-equal too leaves
its slot empty after riel.max_resample_rounds."""
from collections import Counter

import pytest

from megatron_meml.algo.sft_buffer import HardExampleBuffer
from megatron_meml.config.schema import ConfigError, RIELConfig, RolloutConfig
from megatron_meml.rollout.dynamic_sampling import all_equal, fresh_questions
from megatron_meml.rollout.scheduler import RielScheduler
from megatron_meml.types import Record, Rollout, ScoredGroup, TokenKind

G, N, EOS = 4, 2, 2
STEP = [Record(id=f"q{i}", question=f"q{i}", answer="1", solution="s") for i in range(2)]
POOL = STEP + [Record(id=f"p{i}", question=f"p{i}", answer="1", solution="s") for i in range(6)]
# rewards of the step's cells: q0/e0 mixed, q0/e1 all wrong (dropped, hard), q1/e0 all right (dropped), q1/e1 mixed
STEP_REWARDS = {("q0", 0): [1, 0, 0, 0], ("q0", 1): [0, 0, 0, 0], ("q1", 0): [1, 1, 1, 1], ("q1", 1): [1, 1, 0, 0]}


class Engine:
    """Response [100 + e, 110 + g, EOS], text "qid/e/g"; g counts the requests of a (q, e) within one call."""

    def __init__(self):
        self.calls = []

    def generate(self, requests, params):
        seen = Counter()
        out = []
        for r in requests:
            g = seen[(r.qid, r.expert)]
            seen[(r.qid, r.expert)] += 1
            out.append(Rollout(r, [100 + r.expert, 110 + g, EOS], [-0.5, -0.5, -0.5], text=f"{r.qid}/{r.expert}/{g}",
                               finish_reason="eos"))
        self.calls.append(len(requests))
        return out


class Renderer:
    def prompt(self, record, expert):
        return [1, 50 + expert] + [ord(c) for c in record.question]

    def example(self, record, expert):
        p = self.prompt(record, expert)
        return p + [60, EOS], [0] * len(p) + [1, 1]


def make(pool_rewards, rounds=2):
    def reward(text, record):
        qid, e, g = text.split("/")
        table = STEP_REWARDS.get((qid, int(e))) or pool_rewards(int(e))
        return float(table[int(g)])

    riel = RIELConfig(group_size=G, buffer_k=2, buffer_capacity=64, admit_prob=1.0, skip_zero_advantage=False,
                      dynamic_sampling=True, max_resample_rounds=rounds)
    buf = HardExampleBuffer.from_config(riel, seed=0)
    sched = RielScheduler(Engine(), Renderer(), reward, riel, RolloutConfig(max_new_tokens=8, seed=1), num_experts=N,
                          max_tokens_per_microbatch=64, pad_id=0, buffer=buf, refill_pool=POOL)
    return sched, buf


def grpo_cells(out):
    """(qid-prefix, expert) of every GRPO row in the microbatches, one per row (G rows per cell)."""
    rows = []
    for mb in out.microbatches:
        for b in range(mb.tokens.shape[0]):
            m = mb.loss_mask[b] > 0
            if m.any() and int(mb.kind[b][m][0]) == int(TokenKind.GRPO):
                rows.append(int(mb.tokens[b][1]) - 50)  # expert id from the prompt's [1, 50 + e, ...]
    return Counter(rows)


def test_all_equal_cells_are_refilled_and_the_batch_keeps_its_size():
    sched, buf = make(lambda e: [0, 1, 0, 1])  # every fresh cell is mixed: one round fills both slots
    out = sched.step(STEP, step=0)
    s = out.stats
    assert s["dynamic/dropped_cells"] == 2 and s["dynamic/refilled_cells"] == 2 and s["dynamic/unfilled"] == 0
    assert s["dynamic/rounds"] == 1 and s["dynamic/rollouts"] == 2 * G
    assert sched.engine.calls == [len(STEP) * N * G, 2 * G]
    # Q·N = 4 cells of G rows, each expert keeps its 2 cells (its dropped slot went to a fresh question for it)
    assert grpo_cells(out) == Counter({0: 2 * G, 1: 2 * G})
    # the KL pairs come from every original cell: q0's E- is the dropped all-wrong cell (0/4 vs 1/4), q1's E+
    # the dropped all-right one (4/4 vs 2/4)
    assert [(p.qid, p.e_plus, p.e_minus) for p in out.kl_pairs] == [("q0", 0, 1), ("q1", 0, 1)]
    # the buffer saw the dropped all-wrong cell (q0, e1) and the hard mixed ones (3 wrong of 4 > K = 2)
    admitted = {(ex.record.id, ex.expert) for ex in buf.examples}
    assert ("q0", 1) in admitted and ("q0", 0) in admitted
    assert s["rollout/tokens"] == (len(STEP) * N * G + 2 * G) * 3


def test_unfillable_slot_stays_empty_after_the_budget_and_the_buffer_sees_every_refill():
    sched, buf = make(lambda e: [0, 1, 1, 0] if e == 0 else [0, 0, 0, 0], rounds=2)
    out = sched.step(STEP, step=3)
    s = out.stats
    # expert 0's slot fills in round 1; expert 1's refills are all wrong in both rounds
    assert s["dynamic/refilled_cells"] == 1 and s["dynamic/unfilled"] == 1 and s["dynamic/rounds"] == 2
    assert s["dynamic/rollouts"] == 2 * G + G
    assert grpo_cells(out) == Counter({0: 2 * G, 1: 1 * G})
    e1_hard = [ex.record.id for ex in buf.examples if ex.expert == 1]
    assert e1_hard[0] == "q0" and len(e1_hard) == 3 and len(set(e1_hard)) == 3  # q0 + two distinct fresh questions
    assert not set(e1_hard[1:]) & {r.id for r in STEP}


def test_off_by_default_and_config_checks():
    assert RIELConfig().dynamic_sampling is False
    with pytest.raises(ConfigError, match="riel.dynamic_sampling"):
        RIELConfig(dynamic_sampling=True, adv_pooled=True)
    with pytest.raises(ConfigError, match="riel.max_resample_rounds"):
        RIELConfig(max_resample_rounds=-1)


def test_helpers():
    g = lambda rs: ScoredGroup("q", 0, [Rollout(None, [], [], reward=r) for r in rs])  # noqa: E731
    assert all_equal(g([1, 1])) and all_equal(g([0, 0])) and not all_equal(g([0, 1]))
    got = fresh_questions(POOL, 3, {"q0", "q1", "p0"}, seed=5)
    assert len(got) == 3 and not {r.id for r in got} & {"q0", "q1", "p0"}
    assert fresh_questions(POOL, 3, {"q0", "q1", "p0"}, seed=5) == got  # seeded: the same on every rank
    assert len(fresh_questions(POOL, 20, set(), seed=0)) == len(POOL)
