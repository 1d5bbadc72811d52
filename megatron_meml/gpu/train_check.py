"""A short real training run on one GPU (part of tools/gpu_check.sh): MEF-style SFT on the synthetic task with a
small Qwen2-shaped model in bf16 through megatron-core (whatever version is installed there, 0.19 on the lent
machines), then a few RIEL steps (KV-cache rollouts, rewards, GRPO + KL + SFT microbatches). Prints one JSON line
with the numbers last.

    python -m megatron_meml.gpu.train_check [--steps 30] [--hidden 512] [--layers 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from megatron_meml.backend.runtime import compat
from megatron_meml.backend.runtime.memory import peak_memory_bytes
from megatron_meml.config import load_config
from megatron_meml.stages.common import finish
from megatron_meml.stages.mef import run_mef
from megatron_meml.stages.riel import run_riel
from megatron_meml.stages.run import setup


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--riel-steps", type=int, default=3, help="RIEL steps after MEF (rollouts + GRPO/KL/SFT on GPU)")
    ap.add_argument("--run-dir", default=os.path.join(os.environ.get("OUT", "/tmp"), "gpu_train_run"))
    a = ap.parse_args(argv)
    import torch

    overrides = [
        f"model.num_layers={a.layers}", f"model.hidden_size={a.hidden}", f"model.ffn_hidden_size={a.hidden * 3}",
        "model.num_attention_heads=8", "model.num_query_groups=2", "model.vocab_size=259",
        "model.max_position_embeddings=512", f"precision.dtype={a.dtype}", "data.seq_length=160",
        "data.micro_batch_size=32", "data.global_batch_size=64", f"mef.max_steps={a.steps}", "mef.lr=1e-3",
        f"riel.steps={a.riel_steps}", "riel.questions_per_step=4", "riel.group_size=4", "riel.buffer_k=2",
        "riel.buffer_capacity=4", "rollout.max_new_tokens=32", "eval.enabled=false", f"logging.run_dir={a.run_dir}", "logging.progress_bar=false",
        "logging.tensorboard=false", "experts.prompts=[Use equations., Go step by step., Split into parts.]",
    ]
    cfg = load_config(None, overrides)
    t0 = time.time()
    run = setup(cfg)
    build_s = time.time() - t0
    torch.cuda.synchronize()
    t0 = time.time()
    out = run_mef(run)
    torch.cuda.synchronize()
    train_s = time.time() - t0
    t0 = time.time()
    if a.riel_steps:
        out.update(run_riel(run))
        torch.cuda.synchronize()
    riel_s = time.time() - t0
    out.update(device=torch.cuda.get_device_name(), megatron_core=str(compat.megatron_version()),
               torch=torch.__version__, te=compat.have_te(), build_s=round(build_s, 2),
               train_s=round(train_s, 2), s_per_step=round(train_s / out["mef_steps"], 4), riel_s=round(riel_s, 2),
               peak_mem_gb=round(peak_memory_bytes() / 2**30, 3),
               ok=out["mef_loss_end"] < 0.5 * out["mef_loss_start"])
    finish(run)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
