"""The complementarity knobs: the gated inter-expert KL and the per-expert question weighting (exact small cases),
and the gate inside the scheduler."""
import pytest

from megatron_meml.algo.complementarity import complement_weights, kl_gate_open, weight_advantages
from megatron_meml.config.schema import ConfigError, RIELConfig
from megatron_meml.types import Rollout, ScoredGroup


def group(e, rewards, adv=None):
    g = ScoredGroup("q", e, [Rollout(None, [], [], reward=r) for r in rewards])
    g.advantages = list(adv if adv is not None else [r - sum(rewards) / len(rewards) for r in rewards])
    return g


def test_gate():
    assert kl_gate_open([0.25, 0.0, 1.0], 0, 1, "none", 0.5)  # the paper: any m_E+ > m_E-
    assert kl_gate_open([0.75, 0.25, 1.0], 0, 1, "wrong_right", 0.5)  # E- wrong, E+ right
    assert not kl_gate_open([0.25, 0.0, 1.0], 0, 1, "wrong_right", 0.5)  # E+ not right either
    assert not kl_gate_open([1.0, 0.5], 0, 1, "wrong_right", 0.5)  # E- already right: the pull stops
    assert kl_gate_open([0.5, 0.375], 0, 1, "wrong_right", 0.5)  # tau <= m_E+ is right
    with pytest.raises(ValueError, match="riel.kl_gate"):
        kl_gate_open([1, 0], 0, 1, "family", 0.5)
    with pytest.raises(ConfigError, match="riel.kl_gate"):
        RIELConfig(kl_gate="always")


def test_complement_weights_and_advantages():
    gs = [group(0, [1, 1, 1, 1]), group(1, [1, 0, 0, 0]), group(2, [0, 0, 0, 0])]
    # m = 1, 0.25, 0 -> others' mean: e0 0.125, e1 0.5, e2 0.625
    assert complement_weights(gs, 1.0) == pytest.approx([1.875, 1.5, 1.375])
    weight_advantages(gs, 2.0)
    assert gs[1].advantages == pytest.approx([0.75 * 2.0, -0.25 * 2.0, -0.25 * 2.0, -0.25 * 2.0])
    assert sum(gs[1].advantages) == pytest.approx(0.0)  # still zero-sum within the group
    before = [list(g.advantages) for g in gs]
    weight_advantages(gs, 0.0)  # alpha = 0: the paper, untouched
    assert [g.advantages for g in gs] == before
    assert complement_weights(gs[:1], 1.0) == [1.0]


def test_scheduler_gates_the_kl_pair():
    from tests.unit.rollout.test_scheduler import RECORDS, make

    # q0: E+ = 1 (0.75), E- = 2 (0.0): E- wrong, E+ right -> kept; with tau = 0.8, E+ is not right -> gated out
    riel = RIELConfig(group_size=4, buffer_k=2, buffer_capacity=2, admit_prob=1.0, max_kl_responses=2,
                      skip_zero_advantage=False, kl_gate="wrong_right")
    out = make(riel).step(RECORDS, step=0)
    assert [(p.e_plus, p.e_minus) for p in out.kl_pairs] == [(1, 2)] and out.stats["kl/gated_out"] == 0
    riel.kl_gate_threshold = 0.8
    out = make(riel).step(RECORDS, step=0)
    assert out.kl_pairs == [] and out.stats["kl/gated_out"] == 1
