"""The megatron KV-cache engine on a tiny GPTModel (one process, spawned fresh: the CPU runtime is process-global).
All checks share one model build (``engine_workers.single_process_checks``)."""
import pytest

from .engine_workers import PROMPT_LENS


@pytest.fixture(scope="module")
def res(engine_checks):
    return engine_checks


def test_greedy_kv_cache_matches_full_reforward(res):
    """Prompts of lengths 3..24 in one batch: the cached loop and the no-cache twin emit identical tokens."""
    assert len(res["cache"]) == len(PROMPT_LENS)
    assert all(len(ids) == 24 for ids in res["cache"])
    assert res["cache"] == res["nocache"]
    assert len({tuple(ids) for ids in res["cache"]}) == len(PROMPT_LENS)  # a varied model, not one repeated token
    assert res["cache_vs_nocache_logp"] < 1e-4


def test_contiguous_layout_matches_too(res):
    """Prompts from slot 0 with forced prompt steps (the layout for attention without explicit masks)."""
    assert res["contiguous"] == res["nocache"]
    assert res["stop_contiguous"] == res["stop_nocache"]
    # aligned: 1 prefill + 23 decode steps; contiguous: + (max - min prompt length) forced prompt steps
    assert res["aligned_steps"] == 24
    assert res["contiguous_steps"] == 24 + max(PROMPT_LENS) - min(PROMPT_LENS)


def test_early_stops_and_row_compaction_match_no_cache(res):
    """Stop tokens end rows at different steps (finished rows are dropped from the cache mid-batch)."""
    assert res["stop_cache"] == res["stop_nocache"]
    assert all(r == "eos" for r in res["stop_reasons"])
    stops = set(res["stop_ids"])
    for full, cut in zip(res["cache"], res["stop_cache"]):
        k = next(i for i, t in enumerate(full) if t in stops)
        assert cut == full[:k + 1]  # the response keeps its stop token
    assert len({len(c) for c in res["stop_cache"]}) > 2


def test_token_budget_splits_batches_without_changing_tokens(res):
    assert res["small_budget_batches"] > 1
    assert res["small_budget"] == res["cache"]


def test_stop_string_cuts_at_completing_token(res):
    s = res["stop_string"]
    assert s["reason"] == "stop"
    assert s["got"] == s["full"][:len(s["got"])]
    assert s["stop"] in s["text"] and s["text"].endswith(s["stop"])


def test_seeded_request_same_alone_and_in_batch_of_16(res):
    (ids_a, lp_a), (ids_b, lp_b) = res["alone"], res["inside"]
    assert ids_a == ids_b and len(ids_a) > 0
    assert max(abs(x - y) for x, y in zip(lp_a, lp_b)) < 1e-4


def test_shared_prompt_prefill_keeps_samples(res):
    """A second request with the same prompt (another seed) shares the prefill and still samples its own tokens."""
    assert res["twin"] == res["twin_alone"]
    assert res["twin"] != res["inside"][0]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_equal_training_forward(res, temperature):
    gap, n, expected = res["logprob_gap"][temperature]
    assert n == expected > 0  # every GRPO response token was compared
    assert gap < 1e-4
    assert all(k > 0 for k in res["shared_microbatches"])  # ... read back from prompt-sharing rows


def test_engine_leaves_model_as_found(res):
    assert res["params_unchanged"]
    assert res["training_flags_unchanged"] and res["all_training"]
    assert res["attrs_unchanged"]
    assert res["input_tensor_none"]
