"""The RIEL objective's normalisation is exact for the global batch: one global batch of 8 mixed GRPO / KL / SFT
sequences gives the same gradients (<= 1e-6, fp32) cut as 1x8, 4x2 microbatches, over DP=2, and as one pass per
term (the per-term gradient norms of backend/train/term_grads.py)."""
import pytest

from .launcher import spawn

SEQ = 12  # every sequence has 12 tokens


@pytest.fixture(scope="module")
def one_by_eight():
    r = spawn("tests.distributed.workers:riel_grads", 1, max_tokens=8 * SEQ)[0]
    assert r["microbatches"] == 1
    return r


def _max_diff(a, b):
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_four_by_two_microbatches(one_by_eight):
    r = spawn("tests.distributed.workers:riel_grads", 1, max_tokens=2 * SEQ)[0]
    assert r["microbatches"] == 4
    assert abs(r["loss"] - one_by_eight["loss"]) <= 1e-6
    assert _max_diff(one_by_eight["grads"], r["grads"]) <= 1e-6


def test_data_parallel_two_ranks(one_by_eight):
    r = spawn("tests.distributed.workers:riel_grads", 2, max_tokens=2 * SEQ)[0]
    assert r["microbatches"] == 2  # 4 microbatches dealt over 2 ranks
    assert abs(r["loss"] - one_by_eight["loss"]) <= 1e-6
    assert _max_diff(one_by_eight["grads"], r["grads"]) <= 1e-6
    assert max(v.abs().max().item() for v in one_by_eight["grads"].values()) > 1e-4  # a real gradient


def test_per_term_passes_sum_to_the_same_gradient_and_measure_each_term(one_by_eight):
    """backend.term_grads at DP=2 x TP=2 with the distributed optimizer: one pass per term (GRPO, KL, SFT) leaves
    the single-pass gradient in the buffers, and each term's norm is that term's own gradient norm (shards combined
    over DP, tensor-parallel duplicates counted once)."""
    one = one_by_eight
    r = spawn("tests.distributed.workers:riel_grads", 4, max_tokens=2 * SEQ, by_term=True,
              overrides=["parallel.tensor_model_parallel_size=2"])[0]
    assert abs(r["loss"] - one["loss"]) <= 1e-6
    assert _max_diff(one["grads"], r["grads"]) <= 1e-6
    for term in ("grpo", "kl", "sft"):
        assert r["reference_norms"][term] > 1e-4
        assert abs(r["term_norms"][term] - r["reference_norms"][term]) <= 1e-5 * r["reference_norms"][term], term
