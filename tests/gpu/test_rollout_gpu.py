"""The megatron KV-cache engine on CUDA (megatron-core 0.19 on the lent machines: its process-wide InferenceMode
flag, the local or Transformer Engine attention): the same checks as tests/unit/rollout/test_megatron_engine.py,
one spawned process, one model build. Run on a GPU machine: ``python3 -m pytest -m gpu tests/gpu -q``."""
import pytest
import torch

from tests.distributed.launcher import spawn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_engine_on_cuda():
    res = spawn("tests.unit.rollout.engine_workers:single_process_checks", 1)[0]
    assert res["cache"] == res["nocache"] == res["contiguous"]
    assert res["stop_cache"] == res["stop_nocache"] == res["stop_contiguous"]
    assert res["small_budget"] == res["cache"]
    assert res["alone"][0] == res["inside"][0]
    for temperature, (gap, n, expected) in res["logprob_gap"].items():
        assert n == expected > 0 and gap < 1e-4, (temperature, gap)
    assert res["params_unchanged"] and res["training_flags_unchanged"] and res["input_tensor_none"]


def _same(a, b, tol=2e-3):
    assert [ids for ids, _ in a] == [ids for ids, _ in b]
    return max(abs(x - y) for (_, p), (_, q) in zip(a, b) for x, y in zip(p, q)) < tol


def test_continuous_engine_cuda_graphs_match_static():
    """Continuous engine on CUDA: CUDA-graph decode (bucketed batches, Triton decode attention) == eager == the
    static engine, greedy and sampled, with a pool of 3 slots too (graph buckets padded, slots reused)."""
    res = spawn("tests.unit.rollout.engine_workers:continuous_cuda_checks", 1)[0]
    for pname in ("greedy", "sampled"):
        for name in ("graphs", "eager", "graphs_small"):
            assert _same(res[f"{name}_{pname}"], res[f"static_{pname}"]), (name, pname)
    assert res["graphs_captured"] > 0 and res["graphs_small_captured"] > 0
    assert res["eager_captured"] == 0
