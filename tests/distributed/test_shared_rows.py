"""Prompt-sharing rows (riel.share_prompts) compute exactly the loss and gradients of one row per sequence: each
response sees its prompt at the same RoPE positions through the segment mask. Checked on one process, with
tensor parallelism (TP=2) and with pipeline parallelism (PP=2: positions and mask reach the second stage)."""
import pytest

from .launcher import spawn

ARGS = dict(max_tokens=64, max_row_tokens=24, sequences="shared")


@pytest.fixture(scope="module")
def flat():
    r = spawn("tests.distributed.workers:riel_grads", 1, **ARGS, share=False)[0]
    assert r["shared_microbatches"] == 0
    return r


def _max_diff(a, b):
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("world,overrides", [(1, []), (2, ["parallel.tensor_model_parallel_size=2"]),
                                              (2, ["parallel.pipeline_model_parallel_size=2"])],
                         ids=["single", "tp2", "pp2"])
def test_shared_rows_match_flat_rows(flat, world, overrides):
    r = spawn("tests.distributed.workers:riel_grads", world, **ARGS, share=True, overrides=overrides)[0]
    assert r["shared_microbatches"] >= 1 and r["slots"] < flat["slots"]  # prompts really are shared
    for k in ("count/grpo", "count/kl", "count/sft"):
        assert r[k] == flat[k], k  # every loss token is still there
    assert abs(r["loss"] - flat["loss"]) <= 1e-6 * max(1.0, abs(flat["loss"]))  # fp32 sums of a loss ~10
    assert _max_diff(flat["grads"], r["grads"]) <= 1e-6
    assert max(v.abs().max().item() for v in flat["grads"].values()) > 1e-4  # a real gradient


def test_flat_single_matches_tp_flat(flat):
    """Sanity anchor: the flat reference itself agrees with a TP=2 flat run."""
    r = spawn("tests.distributed.workers:riel_grads", 2, **ARGS, share=False,
              overrides=["parallel.tensor_model_parallel_size=2"])[0]
    assert _max_diff(flat["grads"], r["grads"]) <= 1e-6
