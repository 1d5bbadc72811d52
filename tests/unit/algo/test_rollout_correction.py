"""Truncated importance sampling and the mismatch telemetry (algo/rollout_correction.py), and the TIS weights
reaching the microbatch weights through packing."""
import math

import pytest

from megatron_meml.algo.rollout_correction import mismatch_metrics, tis_weights
from megatron_meml.rollout.packing import TrainSequence, assign_weights, collate
from megatron_meml.types import TokenKind


def test_tis_weight_is_the_capped_ratio_of_training_to_engine_probability():
    train, eng = [-1.0, -2.0, -0.5], [-1.0, -2.5, -3.0]
    w = tis_weights(train, eng, cap=2.0)
    assert w[0] == pytest.approx(1.0)
    assert w[1] == pytest.approx(math.exp(0.5))
    assert w[2] == 2.0  # exp(2.5) = 12.2, truncated at the cap
    assert tis_weights(train, eng, cap=0.0) is None
    with pytest.raises(ValueError):
        tis_weights([0.0], [0.0, 1.0], 2.0)


def test_mismatch_metrics_mean_max_and_per_expert():
    rows = [(0, [-1.0, -2.0], [-1.1, -2.0]), (1, [-0.5], [-0.2]), (1, [-3.0, -1.0], [-3.0, -1.0])]
    m = mismatch_metrics(rows, cap=2.0)
    assert m["mismatch/logp_abs_mean"] == pytest.approx((0.1 + 0.0 + 0.3 + 0 + 0) / 5)
    assert m["mismatch/logp_abs_max"] == pytest.approx(0.3)
    assert m["mismatch/logp_abs_mean/expert0"] == pytest.approx(0.05)
    assert m["mismatch/logp_abs_mean/expert1"] == pytest.approx(0.1)
    assert m["mismatch/tokens"] == 5
    w = [math.exp(-0.1), 1.0, math.exp(0.3), 1.0, 1.0]
    assert m["mismatch/tis_weight_mean"] == pytest.approx(sum(w) / 5)
    assert m["mismatch/tis_capped_fraction"] == 0.0
    assert mismatch_metrics([]) == {}


def test_token_scale_multiplies_the_aggregation_weight_of_its_tokens():
    plain = TrainSequence.from_prompt_response([5, 6, 7], [8, 9], TokenKind.GRPO, [-1.0, -2.0], 1.0)
    scaled = TrainSequence.from_prompt_response([5, 6, 7], [8, 9], TokenKind.GRPO, [-1.0, -2.0], 1.0,
                                                response_scale=[0.5, 2.0])
    assign_weights([plain, scaled], "token_mean", [1.0, 1.0, 1.0])
    a, b = collate([plain], 0), collate([scaled], 0)
    # target-aligned: slot 2 predicts token 3 (the first response token), slot 3 the second
    assert a.weight[0, 2:4].tolist() == pytest.approx([0.25, 0.25])
    assert b.weight[0, 2:4].tolist() == pytest.approx([0.125, 0.5])
    assert b.weight[0, :2].tolist() == [0.0, 0.0] and b.weight[0, 4].item() == 0.0
