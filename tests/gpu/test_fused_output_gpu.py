"""The fused output layer on a GPU (Triton kernels, CUDA): equal to the logits path in fp32 (tight) and in bf16 (the
logits path rounds the logits to bf16 before the log-softmax, the fused kernel keeps them in fp32 accumulators, so
only close). Run with ``python3 -m pytest -m gpu tests/gpu/test_fused_output_gpu.py`` (part of tools/gpu_check.sh)."""
import pytest
import torch

from tests.distributed.launcher import spawn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PLAN = {"riel": ["epilogue", "logits"], "sft": ["epilogue", "logits"]}


def _rel(a, b):
    scale = max(v.abs().max().item() for v in a.values())
    return max((a[k] - b[k]).abs().max().item() for k in a) / scale


def test_fused_output_on_gpu_matches_logits_path():
    r = spawn("tests.distributed.fused_workers:fused_vs_logits", 1, models=[["precision.dtype=fp32"],
                                                                             ["precision.dtype=bf16"]],
              plans=[PLAN, PLAN], impl="auto")[0]
    for model, (loss_tol, grad_tol) in ((0, (1e-5, 1e-4)), (1, (2e-2, 1e-1))):
        for work, runs in r[model].items():
            ref, run = runs["logits"], runs["epilogue"]
            lr, lf = ref["metrics"]["loss"], run["metrics"]["loss"]
            assert abs(lr - lf) <= loss_tol * max(1.0, abs(lr)), (model, work, lr, lf)
            assert _rel(ref["grads"], run["grads"]) <= grad_tol, (model, work)
            assert run["padded_grad"] == 0.0, (model, work)
