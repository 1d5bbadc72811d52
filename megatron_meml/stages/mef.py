"""Stage 1, MEF (multi-expert fine-tuning): for each global batch of (question, expert, teacher response) rows,
render the conversation with the expert's system prompt, NLL on the assistant tokens (token-mean over the global
batch), one optimizer step."""
from __future__ import annotations

import math
import random
import time
from typing import Dict, List

from ..algo.objective import sft_loss  # Σ_t weight_t · mask_t · (−log p_t), fusable into the log-prob kernel
from ..backend.runtime.memory import peak_memory_gib
from ..backend.runtime.parallel import reduce_metrics
from ..backend.train import optimizer as boptim
from ..backend.train.step import forward_backward
from ..config import Config, ConfigError
from ..data import read_mef, synthetic_mef_rows
from ..data.collate import count_loss_tokens, sft_microbatches
from ..data.dali_loader import DaliMEFBatches
from ..data.mef import MEFRow
from ..data.mef_batches import RenderedMEFBatches
from ..rewards import verify
from ..types import Record
from .common import Run, load_records, progress


def mef_rows(cfg: Config, say=print) -> List[MEFRow]:
    """MEF data: the configured trace file, or for the synthetic task the offline "teachers" (v2: one error-prone
    teacher per expert, ``data.synthetic.teacher_error``), or for a real dataset without traces the dataset
    rationale as expert 0 only.

    With ``mef.drop_unverified`` a teacher trace (file or synthetic) whose final answer fails the dataset's
    verifier is dropped (counted and reported); the verifier sees the dataset record of the trace's id when the
    train split has it. The rows come shuffled with the run's ``seed`` (data order is the run's, the questions are
    ``data.seed``'s): MEF step s trains rows (s * global_batch_size + i) mod N (``python -m
    megatron_meml.pretokenize`` writes them in this order for ``data.loader=dali``)."""
    n = cfg.experts.num_experts
    teachers = bool(cfg.mef.traces) or cfg.data.name == "synthetic"
    if cfg.mef.traces:
        rows = [r for r in read_mef(cfg.mef.traces, on_bad_record=cfg.data.on_bad_record) if r.expert < n]
    else:
        records = load_records(cfg, cfg.data.train_split)
        if cfg.data.name == "synthetic":
            rows = synthetic_mef_rows(records, n, cfg.data.synthetic.teacher_error, seed=cfg.data.seed)
        else:
            rows = [MEFRow(r.id, r.question, 0, r.solution, r.answer) for r in records]
    if teachers and cfg.mef.drop_unverified:
        by_id = {r.id: r for r in load_records(cfg, cfg.data.train_split)}
        kept = [r for r in rows if verify(cfg.data.name, r.response,
                                          by_id.get(r.id) or Record(r.id, r.question, r.answer, "")) > 0]
        say(f"MEF: dropped {len(rows) - len(kept)} of {len(rows)} traces whose final answer fails the "
            f"{cfg.data.name} verifier (mef.drop_unverified)")
        rows = kept
    random.Random(cfg.seed).shuffle(rows)
    return rows


def train_sft_step(run: Run, examples, optimizer, scheduler, coef: float = 1.0) -> Dict[str, float]:
    """One optimizer step on a global batch of rendered examples (this rank takes its DP slice)."""
    cfg, info = run.cfg, run.info
    seq = cfg.data.seq_length
    total = count_loss_tokens(examples, seq)
    if total == 0:
        longest = max(len(ids) for ids, _ in examples)
        raise ConfigError(f"config key `data.seq_length`: every example of the batch is cut off before its response "
                          f"({seq} tokens kept, prompts + responses up to {longest}); raise data.seq_length or "
                          f"shorten experts.prompts")
    per = math.ceil(len(examples) / info.dp_size)
    mine = examples[info.dp_rank * per:(info.dp_rank + 1) * per]
    mbs = sft_microbatches(mine, cfg.data.micro_batch_size, run.tokenizer.pad_id, seq, total, coef)
    boptim.zero_grads(run.chunks, optimizer)
    results = forward_backward(run.chunks, mbs, sft_loss)
    updated, grad_norm = False, float("nan")
    if boptim.grads_finite(run.chunks):  # a non-finite step is skipped, the weights untouched
        updated, grad_norm = boptim.optimizer_step(optimizer, scheduler)
    out = reduce_metrics(results, ["loss", "tokens"])
    out.update(grad_norm=grad_norm if grad_norm is not None else float("nan"), skipped=float(not updated),
               lr=scheduler.get_lr(optimizer.param_groups[0]) if hasattr(scheduler, "get_lr") else 0.0)
    return out


def run_mef(run: Run) -> Dict[str, float]:
    """Stage 1: multi-expert SFT. Returns the first and last step's loss."""
    cfg = run.cfg
    gbs = cfg.data.global_batch_size
    if cfg.data.loader == "dali":  # pre-tokenized rows through a DALI pipeline (data/dali_loader.py)

        batches = DaliMEFBatches(cfg, run.tokenizer, run.prompts)
    else:
        batches = RenderedMEFBatches(mef_rows(cfg, run.say), run.tokenizer, run.template, run.prompts, gbs)
    steps = max(1, math.ceil(cfg.mef.epochs * batches.rows / gbs))
    if cfg.mef.max_steps is not None:
        steps = min(steps, cfg.mef.max_steps)
    if run.ckpt.stage_done("mef"):
        run.ckpt.load_finished_stage("mef", run.chunks)  # eval after MEF must see the MEF weights
        run.say("MEF: complete in the latest checkpoint; skipped")
        return {}
    optimizer, scheduler = boptim.build_optimizer(cfg, run.chunks, lr=cfg.mef.lr, total_steps=steps)
    state = run.ckpt.resume("mef", run.chunks, optimizer, scheduler) or {}
    start = state.get("step", -1) + 1
    run.say(f"MEF: {batches.describe(cfg.experts.num_experts)}; {steps} steps of {gbs} sequences")
    batches.start(start)
    bar = progress(run, steps, "MEF")
    if bar is not None:
        bar.update(start)
    first, last = state.get("first_loss"), state.get("last_loss")
    bad_in_a_row = 0
    for step in range(start, steps):
        t0 = time.time()
        m = train_sft_step(run, batches.batch(step), optimizer, scheduler)
        bad_in_a_row = bad_in_a_row + 1 if m["skipped"] else 0
        if bad_in_a_row:
            run.say(f"MEF step {step}: non-finite gradients, step skipped ({bad_in_a_row} in a row)")
            if bad_in_a_row > cfg.riel.max_nonfinite_steps:
                raise RuntimeError(f"MEF: {bad_in_a_row} consecutive non-finite steps "
                                   f"(riel.max_nonfinite_steps={cfg.riel.max_nonfinite_steps}); aborting")
        m["step_time"] = time.time() - t0
        m["tokens_per_s"] = m["tokens"] / max(m["step_time"], 1e-9)
        m["memory/peak_gib"] = peak_memory_gib()
        first = m["loss"] if first is None else first
        last = m["loss"]
        if step % cfg.logging.log_interval == 0 or step == steps - 1:
            run.logger.log(step, m, "mef")
        if bar is not None:
            bar.set_postfix(loss=f"{m['loss']:.3f}")
            bar.update(1)
        run.ckpt.after_step("mef", step, run.chunks, optimizer, scheduler,
                            lambda: {"first_loss": first, "last_loss": last}, last=step == steps - 1)
    batches.close()
    if bar is not None:
        bar.close()
    run.say(f"MEF loss: start {first:.4f} -> end {last:.4f}")
    return {"mef_loss_start": first, "mef_loss_end": last, "mef_steps": steps}
