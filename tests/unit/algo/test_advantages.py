import pytest

from megatron_meml.algo.advantages import compute_advantages
from megatron_meml.config.schema import RIELConfig
from megatron_meml.types import Request, Rollout, ScoredGroup


def group(qid, expert, rewards):
    return ScoredGroup(qid=qid, expert=expert,
                       rollouts=[Rollout(Request([1], qid, expert), [2], [0.0], reward=r) for r in rewards])


def test_one_correct_of_eight():
    g = group("q", 0, [0, 0, 0, 1, 0, 0, 0, 0])
    (adv,) = compute_advantages([g], RIELConfig())
    assert adv[3] == pytest.approx(0.875)
    assert all(a == pytest.approx(-0.125) for i, a in enumerate(adv) if i != 3)
    assert g.advantages == adv


def test_groups_are_per_question_and_expert_and_constant_groups_are_zero():
    gs = [group("q1", 0, [1, 1, 0, 0]), group("q1", 1, [1, 1, 1, 1]), group("q2", 0, [0, 0, 0, 1])]
    adv = compute_advantages(gs, RIELConfig(group_size=4, buffer_k=2))
    assert adv[0] == pytest.approx([0.5, 0.5, -0.5, -0.5])
    assert adv[1] == [0.0, 0.0, 0.0, 0.0]
    assert adv[2] == pytest.approx([-0.25, -0.25, -0.25, 0.75])


def test_pooled_std_and_positive_only_options():
    gs = [group("q1", 0, [1, 1, 0, 0]), group("q1", 1, [1, 1, 1, 1])]
    pooled = compute_advantages(gs, RIELConfig(group_size=4, buffer_k=2, adv_pooled=True))
    assert pooled[0] == pytest.approx([0.25, 0.25, -0.75, -0.75]) and pooled[1] == pytest.approx([0.25] * 4)
    std = compute_advantages([group("q", 0, [1, 1, 0, 0])], RIELConfig(group_size=4, buffer_k=2, adv_std_norm=True))
    s = (4 * 0.25 / 3) ** 0.5  # unbiased std of [1,1,0,0]
    assert std[0] == pytest.approx([0.5 / (s + 1e-6)] * 2 + [-0.5 / (s + 1e-6)] * 2, rel=1e-5)
    pos = compute_advantages([group("q", 0, [0, 0, 0, 1])], RIELConfig(group_size=4, buffer_k=2,
                                                                      adv_positive_only=True))
    assert pos[0] == pytest.approx([0, 0, 0, 0.75])
