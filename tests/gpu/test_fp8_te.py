"""FP8 training steps through Transformer Engine (precision.fp8 = hybrid | e4m3, delayed scaling): a small model on
one GPU takes a few optimizer steps on a fixed batch; the losses stay finite and fall, the layers are TE modules and
they ran in FP8. Run on a GPU machine with TE: ``python3 -m pytest -m "gpu and te" tests/gpu/test_fp8_te.py``."""
import math

import pytest
import torch

from megatron_meml.backend.runtime import compat
from tests.distributed.launcher import spawn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.te,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not compat.have_te(), reason="Transformer Engine is not importable (FP8 runs only through TE)"),
]


def fp8_steps(recipe: str, steps: int = 6):
    """Worker (one process): ``steps`` SFT optimizer steps in FP8 on one fixed batch."""
    from megatron_meml.backend.train import model as M, optimizer as O
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.backend.train.step import forward_backward
    from megatron_meml.config import load_config
    from megatron_meml.types import MicroBatch

    # every GEMM dimension a multiple of 16 and tokens per microbatch a multiple of 8 (TE's FP8 GEMM constraints)
    cfg = load_config(None, [
        "precision.dtype=bf16", f"precision.fp8={recipe}", "precision.fp8_amax_history_len=16",
        "model.num_layers=2", "model.hidden_size=256", "model.ffn_hidden_size=1024", "model.num_attention_heads=8",
        "model.num_query_groups=2", "model.vocab_size=512", "data.seq_length=128", "data.micro_batch_size=8",
        "data.global_batch_size=8"])
    parallel.initialize(1, 1, seed=cfg.seed)
    chunks = M.build_model(cfg)
    optimizer, scheduler = O.build_optimizer(cfg, chunks, lr=1e-3, total_steps=steps)
    dev = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator().manual_seed(0)
    b, s = cfg.data.micro_batch_size, cfg.data.seq_length
    tokens = torch.randint(0, cfg.model.vocab_size, (b, s), generator=g)
    mask = torch.ones(b, s)
    mask[:, -1] = 0  # the last position has no target
    mb = MicroBatch(tokens=tokens, loss_mask=mask, kind=torch.zeros(b, s, dtype=torch.int8), weight=mask / mask.sum())

    def loss_fn(logp, mb):
        return -(logp * mb.weight * mb.loss_mask).sum(), {}

    losses = []
    for _ in range(steps):
        O.zero_grads(chunks, optimizer)
        out = forward_backward(chunks, [mb.to(dev)], loss_fn)
        O.optimizer_step(optimizer, scheduler)
        losses.append(out[0]["loss"])
    te_modules = [m for m in chunks[0].modules() if type(m).__module__.startswith("transformer_engine")]
    return {"losses": losses, "config_fp8": M.unwrap(chunks[0]).config.fp8, "te_modules": len(te_modules),
            "ran_fp8": any(getattr(m, "fp8", False) for m in te_modules)}


@pytest.mark.parametrize("recipe", ["hybrid", "e4m3"])
def test_fp8_steps_train(recipe):
    r = spawn("tests.gpu.test_fp8_te:fp8_steps", 1, recipe=recipe)[0]
    assert r["config_fp8"] == recipe
    assert r["te_modules"] > 0, "the TE layer spec was not used"
    assert r["ran_fp8"], "no TE module ran with FP8 enabled"
    assert all(math.isfinite(x) for x in r["losses"]), r["losses"]
    assert r["losses"][-1] < r["losses"][0], r["losses"]
