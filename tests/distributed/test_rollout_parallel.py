"""Generation on TP=2 and PP=2 (gloo, local processes) produces the same tokens as TP=1 from the same weights
(build_model's init is layout-invariant): greedy with and without the KV cache (both cache layouts), and seeded
sampling; and the continuous engine (its own KV cache, heads split under TP, hidden states handed between stages
under PP) emits those same tokens. Every rank of a layout ends with the same tokens."""
import pytest

from .launcher import spawn

WORKER = "tests.unit.rollout.engine_workers:parallel_generation"


@pytest.fixture(scope="module")
def baseline():
    return spawn(WORKER, 1)[0]


@pytest.mark.parametrize("overrides", [["parallel.tensor_model_parallel_size=2"],
                                       ["parallel.pipeline_model_parallel_size=2"]], ids=["tp2", "pp2"])
def test_parallel_generation_matches_single_process(baseline, overrides):
    ranks = spawn(WORKER, 2, overrides=overrides)
    assert baseline["greedy"] == baseline["greedy_nocache"]
    for r in ranks:
        assert r["greedy"] == baseline["greedy"], f"rank {r['rank']}"
        assert r["greedy_nocache"] == baseline["greedy"], f"rank {r['rank']}"
        assert r["greedy_contiguous"] == baseline["greedy"], f"rank {r['rank']}"
        assert r["sampled"] == baseline["sampled"], f"rank {r['rank']}"
        gap = max(abs(x - y) for a, b in zip(r["sampled_logprobs"], baseline["sampled_logprobs"]) for x, y in zip(a, b))
        assert gap < 1e-4
        for name in ("continuous", "continuous_small"):  # the continuous engine: same tokens as the static one
            assert r[f"{name}_greedy"] == baseline["greedy"], (name, r["rank"])
            assert r[f"{name}_sampled"] == baseline["sampled"], (name, r["rank"])
            gap = max(abs(x - y) for a, b in zip(r[f"{name}_sampled_logprobs"], baseline["sampled_logprobs"])
                      for x, y in zip(a, b))
            assert gap < 1e-4, (name, gap)
    assert {(r["tp_rank"], r["pp_rank"]) for r in ranks} == ({(0, 0), (1, 0)} if "tensor" in overrides[0]
                                                             else {(0, 0), (0, 1)})
