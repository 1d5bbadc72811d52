"""The MEML training stages. Reads like the algorithm:

  MEF  (multi-expert fine-tuning): for each global batch of (question, expert, teacher response) rows, render the
       conversation with the expert's system prompt, NLL on the assistant tokens (token-mean over the global
       batch), one optimizer step.
  RIEL (reinforced inter-expert learning): generate -> reward -> advantage -> losses -> step (see ``run_riel``).

Parallelism and Megatron stay in ``backend/``; this file only calls it.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from .backend import model as bmodel
from .backend import optimizer as boptim
from .backend import parallel
from .backend.step import forward_backward
from .config import Config, save_config, to_dict
from .data import (load_dataset, load_expert_prompts, read_mef, render, synthetic_mef_rows, tokenizer_from_config)
from .data.collate import count_loss_tokens, sft_microbatches
from .data.mef import MEFRow
from .checkpointing import Checkpointer
from .metrics import MetricsLogger
from .types import MicroBatch, Record


@dataclass
class Run:
    """Everything the stages share: config, parallel layout, model chunks, tokenizer, expert prompts, logger."""

    cfg: Config
    info: parallel.ParallelInfo
    chunks: List[torch.nn.Module]
    tokenizer: object
    template: Optional[str]
    prompts: List[str]
    logger: MetricsLogger
    ckpt: Checkpointer
    config_dir: Optional[str] = None

    @property
    def run_dir(self) -> str:
        return self.cfg.logging.run_dir

    def say(self, msg: str) -> None:
        if self.info.is_logging_rank:
            print(msg, flush=True)


def setup(cfg: Config, config_dir: Optional[str] = None) -> Run:
    """Initialise process groups, build the model, load tokenizer and expert prompts, open the run directory."""
    p = cfg.parallel
    info = parallel.initialize(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, seed=cfg.seed,
                               backend=p.backend, timeout_minutes=p.timeout_minutes)
    cfg.validate_layout(info.world_size)
    tokenizer = tokenizer_from_config(cfg.data)
    if tokenizer.vocab_size > bmodel.padded_vocab_size(cfg):
        raise ValueError(f"config key `model.vocab_size`: the tokenizer has {tokenizer.vocab_size} tokens but the "
                         f"model's padded vocab is {bmodel.padded_vocab_size(cfg)}")
    chunks = bmodel.build_model(cfg)
    if info.is_logging_rank:
        os.makedirs(cfg.logging.run_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.logging.run_dir, "config.yaml"))
    logger = MetricsLogger(cfg.logging.run_dir, enabled=info.is_logging_rank, tensorboard=cfg.logging.tensorboard,
                           wandb_project=cfg.logging.wandb_project, config=to_dict(cfg))
    prompts = load_expert_prompts(cfg.experts, config_dir)
    say = print if info.is_logging_rank else (lambda *_: None)
    ckpt = Checkpointer(cfg, cfg.logging.run_dir, say=say)
    return Run(cfg, info, chunks, tokenizer, cfg.data.chat_template, prompts, logger, ckpt, config_dir)


def load_records(cfg: Config, split: str) -> List[Record]:
    d = cfg.data
    return load_dataset(d.name, d.path, split, on_bad_record=d.on_bad_record, seed=d.seed,
                        num_train=d.synthetic.num_train, num_test=d.synthetic.num_test,
                        max_operand=d.synthetic.max_operand, min_steps=d.synthetic.min_steps,
                        max_steps=d.synthetic.max_steps)


def mef_rows(run: Run) -> List[MEFRow]:
    """MEF data: the configured trace file, or for the synthetic task the offline "teachers" (one solution style
    per expert), or for a real dataset without traces the dataset rationale as expert 0 only."""
    cfg = run.cfg
    n = cfg.experts.num_experts
    if cfg.mef.traces:
        rows = [r for r in read_mef(cfg.mef.traces, on_bad_record=cfg.data.on_bad_record) if r.expert < n]
    else:
        records = load_records(cfg, cfg.data.train_split)
        if cfg.data.name == "synthetic":
            rows = synthetic_mef_rows(records, n)
        else:
            rows = [MEFRow(r.id, r.question, 0, r.solution, r.answer) for r in records]
    random.Random(cfg.data.seed).shuffle(rows)
    return rows


def reduce_metrics(results: Sequence[Dict[str, float]], keys: Sequence[str]) -> Dict[str, float]:
    """Sum per-microbatch metrics over microbatches and DP ranks (valid on the last pipeline stage)."""
    from megatron.core import parallel_state as ps

    vec = torch.tensor([sum(r.get(k, 0.0) for r in results) for k in keys], dtype=torch.float64)
    if ps.is_pipeline_last_stage() and ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(vec, group=ps.get_data_parallel_group())
    return dict(zip(keys, vec.tolist()))


def sft_loss(logp: torch.Tensor, mb: MicroBatch):
    """Σ_t weight_t · mask_t · (−log p_t): token-mean NLL once the weights hold 1 / N_global."""
    loss = -(logp * mb.weight * mb.loss_mask).sum()
    return loss, {"tokens": mb.loss_mask.sum()}


def train_sft_step(run: Run, examples, optimizer, scheduler, coef: float = 1.0) -> Dict[str, float]:
    """One optimizer step on a global batch of rendered examples (this rank takes its DP slice)."""
    cfg, info = run.cfg, run.info
    seq = cfg.data.seq_length
    total = count_loss_tokens(examples, seq)
    per = math.ceil(len(examples) / info.dp_size)
    mine = examples[info.dp_rank * per:(info.dp_rank + 1) * per]
    mbs = sft_microbatches(mine, cfg.data.micro_batch_size, run.tokenizer.pad_id, seq, total, coef)
    boptim.zero_grads(run.chunks, optimizer)
    results = forward_backward(run.chunks, mbs, sft_loss)
    updated, grad_norm = boptim.optimizer_step(optimizer, scheduler)
    out = reduce_metrics(results, ["loss", "tokens"])
    out.update(grad_norm=grad_norm if grad_norm is not None else float("nan"), skipped=float(not updated),
               lr=scheduler.get_lr(optimizer.param_groups[0]) if hasattr(scheduler, "get_lr") else 0.0)
    return out


def run_mef(run: Run) -> Dict[str, float]:
    """Stage 1: multi-expert SFT. Returns the first and last step's loss."""
    cfg = run.cfg
    rows = mef_rows(run)
    gbs = cfg.data.global_batch_size
    steps = max(1, math.ceil(cfg.mef.epochs * len(rows) / gbs))
    if cfg.mef.max_steps is not None:
        steps = min(steps, cfg.mef.max_steps)
    if run.ckpt.stage_done("mef"):
        run.say("MEF: complete in the latest checkpoint; skipped")
        return {}
    optimizer, scheduler = boptim.build_optimizer(cfg, run.chunks, lr=cfg.mef.lr, total_steps=steps)
    state = run.ckpt.resume("mef", run.chunks, optimizer, scheduler) or {}
    start = state.get("step", -1) + 1
    run.say(f"MEF: {len(rows)} traces from {cfg.experts.num_experts} experts, {steps} steps of {gbs} sequences")
    bar = _progress(run, steps, "MEF")
    if bar is not None:
        bar.update(start)
    first, last = state.get("first_loss"), state.get("last_loss")
    for step in range(start, steps):
        t0 = time.time()
        batch = [rows[(step * gbs + i) % len(rows)] for i in range(gbs)]
        examples = [render(run.template, run.tokenizer, run.prompts[r.expert], r.question, r.response)
                    for r in batch]
        m = train_sft_step(run, examples, optimizer, scheduler)
        m["step_time"] = time.time() - t0
        m["tokens_per_s"] = m["tokens"] / max(m["step_time"], 1e-9)
        first = m["loss"] if first is None else first
        last = m["loss"]
        if step % cfg.logging.log_interval == 0 or step == steps - 1:
            run.logger.log(step, m, "mef")
        if bar is not None:
            bar.set_postfix(loss=f"{m['loss']:.3f}")
            bar.update(1)
        run.ckpt.after_step("mef", step, run.chunks, optimizer, scheduler,
                            lambda: {"first_loss": first, "last_loss": last}, last=step == steps - 1)
    if bar is not None:
        bar.close()
    run.say(f"MEF loss: start {first:.4f} -> end {last:.4f}")
    return {"mef_loss_start": first, "mef_loss_end": last, "mef_steps": steps}


def _progress(run: Run, total: int, desc: str):
    if not (run.cfg.logging.progress_bar and run.info.is_logging_rank):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True)


def finish(run: Run) -> None:
    run.logger.close()
    parallel.destroy()
