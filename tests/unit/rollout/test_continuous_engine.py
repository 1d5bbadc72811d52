"""The continuous engine (slot pool, own KV cache) against the static engine on the same tiny model, in the one
spawned process of ``conftest.engine_checks``: same tokens and log-probs, greedy and sampled, with a pool that holds
every request and with a 3-slot pool and 5-token prefill chunks (slot reuse, a group admitted in parts, chunked
prefill). TP=2 / PP=2: ``tests/distributed/test_rollout_parallel.py``."""
import pytest


@pytest.fixture(scope="module")
def res(engine_checks):
    return engine_checks


@pytest.mark.parametrize("pool", ["pool", "small"])
def test_greedy_and_stop_tokens_match_static(res, pool):
    c = res["continuous"][pool]
    assert c["greedy"] == res["nocache"] == res["cache"]
    assert c["stop"] == res["stop_cache"]


@pytest.mark.parametrize("pool", ["pool", "small"])
def test_sampled_tokens_and_logprobs_match_static(res, pool):
    """16 other requests + a seeded request + its same-prompt twin: the continuous engine (prefix shared, any
    admission order) samples what the static engine samples, log-probs to 1e-4."""
    got, want = res["continuous"][pool]["sampled"], res["static_sampled"]
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    gap = max(abs(x - y) for (_, a), (_, b) in zip(got, want) for x, y in zip(a, b))
    assert gap < 1e-4


@pytest.mark.parametrize("pool", ["pool", "small"])
def test_stop_string_cut_like_static(res, pool):
    ids, reason, text = res["continuous"][pool]["stop_string"]
    s = res["stop_string"]
    assert (ids, reason) == (s["got"], "stop")
    assert text == s["text"]


def test_small_pool_really_reuses_slots_and_chunks_prefill(res):
    big, small = res["continuous"]["pool"]["stats"], res["continuous"]["small"]["stats"]
    assert big["prefill_steps"] == 1 and big["peak_slots"] == 8   # every prompt in one batched prefill
    assert small["peak_slots"] == 3 and small["prefill_steps"] > 8
    assert big["tokens"] == small["tokens"] == 8 * 24
