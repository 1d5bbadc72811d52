from megatron_meml.algo.inter_expert_kl import kl_pair, select_experts
from megatron_meml.types import Request, Rollout, ScoredGroup


def test_select_experts_argmax_argmin():
    assert select_experts([0.25, 0.75, 0.5]) == (1, 0)
    assert select_experts([0.5, 0.0, 1.0]) == (2, 1)


def test_select_experts_ties_go_to_lowest_index():
    assert select_experts([0.5, 0.5, 0.0]) == (0, 2)       # argmax tie between 0 and 1
    assert select_experts([0.75, 0.25, 0.25]) == (0, 1)    # argmin tie between 1 and 2
    assert select_experts([0.5, 0.0, 0.5, 0.0]) == (0, 1)


def test_select_experts_seeded_tie_draw():
    """With a tie_seed, E+ and E- are uniform draws among the tied experts, reproducible per seed."""
    draws = [select_experts([0.5, 0.5, 0.0, 0.0], tie_seed=s) for s in range(400)]
    assert draws == [select_experts([0.5, 0.5, 0.0, 0.0], tie_seed=s) for s in range(400)]
    for e in (0, 1):
        assert 150 <= sum(d[0] == e for d in draws) <= 250
    for e in (2, 3):
        assert 150 <= sum(d[1] == e for d in draws) <= 250
    assert all(select_experts([0.25, 0.75, 0.5], tie_seed=s) == (1, 0) for s in range(20))  # no tie: no draw
    assert select_experts([0.5, 0.5, 0.5], tie_seed=3) is None


def test_select_experts_skip_rules():
    assert select_experts([0.5, 0.5, 0.5]) is None         # m+ == m-
    assert select_experts([0.0, 0.0]) is None
    assert select_experts([0.5, 0.25], has_correct=[False, True]) is None  # E+ without a correct response
    assert select_experts([0.5, 0.25], has_correct=[True, False]) == (0, 1)
    assert select_experts([1.0]) is None                    # one expert: nothing to compare


def _group(expert, rewards):
    return ScoredGroup("q", expert, [Rollout(Request([1], "q", expert, seed=i), [expert, i], [-1.0, -2.0],
                                             reward=r) for i, r in enumerate(rewards)])


def test_kl_pair_collects_capped_correct_responses_of_e_plus():
    groups = [_group(2, [0, 0, 0, 0]), _group(0, [0, 1, 0, 0]), _group(1, [1, 0, 1, 1])]
    p = kl_pair(groups, max_responses=2)
    assert (p.e_plus, p.e_minus) == (1, 2)
    assert [r.response_ids for r in p.responses] == [[1, 0], [1, 2]]  # first two correct in sample order
    assert kl_pair([_group(0, [1, 0]), _group(1, [0, 1])], max_responses=4) is None  # equal means
