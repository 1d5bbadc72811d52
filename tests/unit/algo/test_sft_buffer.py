import torch

from megatron_meml.algo.sft_buffer import HardExample, HardExampleBuffer, admit_hard_examples, is_hard
from megatron_meml.config.schema import RIELConfig
from megatron_meml.types import Record, Request, Rollout, ScoredGroup


def rec(i):
    return Record(id=f"q{i}", question=f"question {i}", answer=str(i), solution=f"sol {i} #### {i}")


def group(i, expert, n_wrong, G=8):
    rewards = [0.0] * n_wrong + [1.0] * (G - n_wrong)
    return ScoredGroup(f"q{i}", expert, [Rollout(Request([1], f"q{i}", expert), [2], [0.0], reward=r)
                                         for r in rewards])


def test_hard_means_more_than_k_wrong():
    assert not is_hard([0] * 6 + [1] * 2, k=6)
    assert is_hard([0] * 7 + [1], k=6)
    assert is_hard([0] * 8, k=6)


def test_admission_follows_the_seeded_generator():
    cfg = RIELConfig(group_size=8, buffer_k=6, buffer_capacity=100)
    buf = HardExampleBuffer.from_config(cfg, seed=7)
    assert buf.admit_prob == 6 / 8
    records = {f"q{i}": rec(i) for i in range(40)}
    groups = [group(i, e, n_wrong=7 if (i + e) % 3 else 6) for i in range(40) for e in range(2)]
    admit_hard_examples(buf, groups, records, k=6)
    g = torch.Generator().manual_seed(7)
    expected = []
    for gr in groups:
        if (int(gr.qid[1:]) + gr.expert) % 3:  # hard groups only draw
            if float(torch.rand((), generator=g, dtype=torch.float64)) < 0.75:
                expected.append((gr.qid, gr.expert))
    assert [(e.record.id, e.expert) for e in buf.examples] == expected
    assert 0 < len(expected) < sum(1 for gr in groups if is_hard(gr.rewards, 6))


def test_sft_fires_at_exactly_capacity_and_empties():
    buf = HardExampleBuffer(capacity=3, admit_prob=1.0, seed=0)
    records = {f"q{i}": rec(i) for i in range(10)}
    assert admit_hard_examples(buf, [group(0, 0, 8), group(1, 0, 8)], records, k=6) == []
    assert len(buf) == 2
    fired = admit_hard_examples(buf, [group(2, 1, 8), group(3, 0, 8)], records, k=6)
    assert [(e.record.id, e.expert) for e in fired] == [("q0", 0), ("q1", 0), ("q2", 1)]
    assert [e.record.id for e in buf.examples] == ["q3"]  # admitted after the fire, into the emptied buffer
    assert admit_hard_examples(buf, [group(4, 0, 6)], records, k=6) == [] and len(buf) == 1  # not hard


def test_state_dict_round_trip_continues_identically(tmp_path):
    a = HardExampleBuffer(capacity=50, admit_prob=0.5, seed=3)
    records = {f"q{i}": rec(i) for i in range(30)}
    admit_hard_examples(a, [group(i, 0, 8) for i in range(10)], records, k=6)
    torch.save(a.state_dict(), tmp_path / "buf.pt")
    b = HardExampleBuffer(capacity=1, admit_prob=0.0, seed=99)
    b.load_state_dict(torch.load(tmp_path / "buf.pt", weights_only=True))
    assert [e.record for e in b.examples] == [e.record for e in a.examples]
    more = [group(i, 1, 8) for i in range(10, 30)]
    admit_hard_examples(a, more, records, k=6)
    admit_hard_examples(b, more, records, k=6)
    assert [(e.record.id, e.expert) for e in a.examples] == [(e.record.id, e.expert) for e in b.examples]
    assert HardExample.from_dict(a.examples[0].to_dict()) == a.examples[0]
