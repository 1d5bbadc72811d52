"""Worker for tests/distributed/test_fused_output.py: one process group, one model, the same microbatches through
the fused output layer (hidden x W in the kernel, no logits) and through the logits path, gradients of each."""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Sequence

import torch
import torch.distributed as dist

from tests.distributed.workers import TINY, gather_dp_grad_buffers, global_batch, riel_sequences, \
    shared_prompt_sequences


def _run(chunks, optimizer, cfg, mbs, loss_fn, temperature, fused: bool, score: bool,
         impl: str = "torch") -> Dict[str, Any]:
    """One forward-backward with the output path switched to ``fused``; the summed loss (broadcast from the last
    stage), per-microbatch metrics, full gradients, and forward-only log-probs of the same microbatches."""
    from megatron.core import parallel_state as ps
    from megatron_meml.backend.train import optimizer as O, state, step as S
    from megatron_meml.backend.train.output_layer import OutputOptions, set_options

    for c in chunks:
        set_options(c, OutputOptions(fused=fused, vocab_limit=cfg.model.vocab_size, impl=impl))
    O.zero_grads(chunks, optimizer)
    res = S.forward_backward(chunks, mbs, loss_fn, temperature=temperature)
    keys = sorted(res[0]) if res else []
    obj = [keys] if ps.is_pipeline_last_stage() else [None]
    dist.broadcast_object_list(obj, src=dist.get_world_size() - 1)
    keys = obj[0]
    dev = next(chunks[0].parameters()).device          # CUDA tensors for NCCL on a GPU machine
    local = torch.tensor([sum(r[k] for r in res) for k in keys], dtype=torch.float64, device=dev)
    if not ps.is_pipeline_last_stage():
        local.zero_()
    dist.all_reduce(local, group=ps.get_pipeline_model_parallel_group())
    gather_dp_grad_buffers(chunks)
    grads = state.full_state_dict(chunks, cfg.model.num_layers, value=lambda n, p: p.main_grad)
    # the raw output-layer gradient rows of this rank's vocabulary shard (padding rows must stay exactly 0)
    from megatron_meml.backend.train.model import unwrap
    padded = torch.zeros((), dtype=torch.float64, device=dev)
    gpt = unwrap(chunks[0])
    if ps.is_pipeline_last_stage():
        w = gpt.shared_embedding_or_output_weight()
        start = ps.get_tensor_model_parallel_rank() * w.shape[0]
        lo = max(0, cfg.model.vocab_size - start)
        if lo < w.shape[0]:
            padded = w.main_grad[lo:].abs().max().double()
    dist.all_reduce(padded, op=dist.ReduceOp.MAX)
    padded_grad = float(padded)
    logps = S.forward_logprobs(chunks, mbs, temperature=temperature) if score else None
    return {"metrics": dict(zip(keys, local.cpu().tolist())), "grads": grads, "padded_grad": padded_grad,
            "logps": logps}


def fused_vs_logits(models: Sequence[Sequence[str]] = ((),), plan: Dict[str, Sequence[str]] = None,
                    score: bool = True, plans: Sequence[Dict[str, Sequence[str]]] = None,
                    impl: str = "torch") -> Dict[str, Any]:
    """For each model (a list of config overrides; all share one process group) and each workload of ``plan`` --
    ``riel``: RIEL rows (GRPO + KL + SFT, temperature 0.7), ``shared``: the same kinds in prompt-sharing rows
    (segment masks, per-slot positions), ``sft``: MEF's SFT microbatches -- the results of the runs named in the
    plan: ``epilogue`` (fused path, the loss as the kernel's epilogue: ``RielObjective`` / ``SFTObjective``),
    ``plain`` (fused path, ``riel_loss`` on the log-probs) and ``logits`` (the logits path). ``score``: also the
    forward-only log-probs (``forward_logprobs``) of the first workload. ``plans``: one plan per model instead.
    Each model may have its own layout (megatron's groups are re-formed). ``impl``: the kernels' implementation
    (``auto`` = Triton on CUDA). Returned on rank 0 as
    {model index: {workload: {run: result}}}."""
    from megatron_meml.algo.objective import RielObjective, SFTObjective, riel_loss
    from megatron_meml.backend.train import model as M, optimizer as O
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.config import load_config
    from megatron_meml.rollout.packing import assign_weights, plan_microbatches
    from megatron_meml.types import MicroBatch, TokenKind

    plan = plan or {"riel": ["epilogue", "plain", "logits"], "shared": ["epilogue", "logits"],
                    "sft": ["epilogue", "logits"]}
    out: Dict[str, Any] = {}
    for i, overrides in enumerate(models):
        cfg = load_config(None, list(TINY) + list(overrides) + ["riel.lambda_kl=0.5", "riel.lambda_sft=2.0"])
        parallel.initialize(cfg.parallel.tensor_model_parallel_size,  # re-forms megatron's groups per model
                            cfg.parallel.pipeline_model_parallel_size, seed=cfg.seed)
        chunks = M.build_model(cfg)
        opt, _ = O.build_optimizer(cfg, chunks, total_steps=1)
        objective = RielObjective(cfg.riel, impl=impl)
        losses = {"epilogue": objective, "plain": partial(riel_loss, riel_cfg=cfg.riel, impl=impl),
                  "logits": objective}
        res: Dict[str, Any] = {}
        for j, (work, runs) in enumerate((plans[i] if plans else plan).items()):
            if work == "sft":
                tokens, mask = global_batch()
                total = mask.sum()
                mbs = [MicroBatch(tokens=t, loss_mask=m, weight=m / total,
                                  kind=torch.full_like(t, int(TokenKind.SFT), dtype=torch.int8))
                       for t, m in zip(tokens.chunk(2), mask.chunk(2))]
                fns, temperature = {k: SFTObjective(impl=impl) for k in losses}, 1.0
            else:
                seqs = riel_sequences() if work == "riel" else shared_prompt_sequences()
                assign_weights(seqs, "token_mean", [1.0, 0.5, 2.0])
                mbs = plan_microbatches(seqs, 48 if work == "riel" else 64, dp_size=1,
                                        share_prompts=work == "shared", max_row_tokens=24)[0]
                assert work == "riel" or any(mb.segment_ids is not None for mb in mbs)
                fns, temperature = losses, 0.7
            res[work] = {r: _run(chunks, opt, cfg, mbs, fns[r], temperature, r != "logits", score and j == 0, impl)
                         for r in runs}
        out[i] = res
    return out if dist.get_rank() == 0 else {}
