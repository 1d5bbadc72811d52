"""Async RIEL on CUDA with NCCL (tests/distributed/async_workers.gpu_phases): the NCCL weight group of the bridge,
the hand-off, a stale step recomputed by hand, exact resume and the hang timeout. Needs two GPUs (NCCL refuses two
ranks on one device); run on a GPU machine: ``python3 -m pytest -m gpu tests/gpu -q``."""
import pytest
import torch

from tests.distributed.launcher import spawn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2,
                                                  reason="needs 2 CUDA devices (one per rank for NCCL)")]


def test_async_riel_on_nccl(tmp_path):
    res = spawn("tests.distributed.async_workers:gpu_phases", 2, tmp=str(tmp_path))
    (h_train, h_roll), (a_train, _), (r_train, _), (x_train, x_roll) = zip(*res)
    assert all(torch.equal(v, h_roll["full"][k]) for k, v in h_train["full"].items())
    assert [ids for ids, _ in h_train["remote"]] == [ids for ids, _ in h_train["local"]]
    c = a_train["check"]
    assert c["kernel"] == pytest.approx(c["hand"], rel=1e-4, abs=1e-5)
    ref, got = a_train["metrics"], r_train["metrics"]
    for s in (2, 3):  # CUDA kernels may reorder sums between runs: values to 1e-5, token counts exactly
        for k in ("tokens/grpo", "tokens/kl", "reward/mean"):
            assert got[s][k] == ref[s][k], (s, k)
        for k in ("loss", "grad_norm"):
            assert got[s][k] == pytest.approx(ref[s][k], rel=1e-5), (s, k)
    assert x_train["error"] is not None and "generating step 1" in x_train["error"]
    assert x_roll["error"] is not None
