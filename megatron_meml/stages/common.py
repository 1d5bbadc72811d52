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
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from .algo.objective import sft_loss  # Σ_t weight_t · mask_t · (−log p_t), fusable into the log-prob kernel
from .backend import model as bmodel
from .backend import optimizer as boptim
from .backend import parallel
from .backend.memory import peak_memory_gib
from .backend.parallel import reduce_metrics
from .backend.step import forward_backward
from .backend.term_grads import forward_backward_by_term
from .config import Config, ConfigError, save_config, to_dict
from .data import load_dataset, load_expert_prompts, read_mef, synthetic_mef_rows, tokenizer_from_config
from .data.collate import count_loss_tokens, sft_microbatches
from .data.mef import MEFRow
from .data.mef_batches import RenderedMEFBatches
from .data.preflight import check_run_inputs
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
    link: Optional[object] = None  # riel.async_rollout: the client of the rollout ranks (async_riel.py)
    riel_evals: Dict[str, dict] = field(default_factory=dict)  # held-out evals during RIEL, for eval.md
    role = "train"

    @property
    def run_dir(self) -> str:
        return self.cfg.logging.run_dir

    def say(self, msg: str) -> None:
        if self.info.is_logging_rank:
            print(msg, flush=True)


def setup(cfg: Config, config_dir: Optional[str] = None) -> Run:
    """Initialise process groups, build the model, load tokenizer and expert prompts, open the run directory.
    With ``riel.async_rollout`` the job is split first; a rollout rank gets an ``async_riel.RolloutRank``."""
    check_run_inputs(cfg)  # a missing dataset / trace / shard file is one line now, not a traceback later
    split = None
    if cfg.riel.enabled and cfg.riel.async_rollout:
        from .async_riel import RolloutRank, split_for

        split = split_for(cfg)
        if split.is_rollout:
            return RolloutRank(cfg, split, config_dir)
    p = cfg.parallel
    info = parallel.initialize(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, seed=cfg.seed,
                               backend=p.backend, timeout_minutes=p.timeout_minutes)
    cfg.validate_layout(info.world_size)
    tokenizer = tokenizer_from_config(cfg.data)
    if tokenizer.vocab_size > bmodel.real_vocab_size(cfg):  # ids >= model.vocab_size get no probability mass
        raise ConfigError(f"config key `model.vocab_size`: the tokenizer has {tokenizer.vocab_size} tokens but "
                          f"model.vocab_size is {bmodel.real_vocab_size(cfg)}")
    chunks = bmodel.build_model(cfg)
    if info.is_logging_rank:   # what the run runs on: attention kernels, TE / apex / flash-attn, optimizer class
        from .backend.runtime_info import startup_lines

        print("\n".join(startup_lines(cfg, chunks)), flush=True)
    if cfg.model.init_from or cfg.model.init_from_hf:
        from .backend.hf_convert import init_model_weights

        source = init_model_weights(chunks, cfg)
        if info.is_logging_rank:
            print(f"initial weights from {source}", flush=True)
    if info.is_logging_rank:
        os.makedirs(cfg.logging.run_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.logging.run_dir, "config.yaml"))
    logger = MetricsLogger(cfg.logging.run_dir, enabled=info.is_logging_rank, tensorboard=cfg.logging.tensorboard,
                           wandb_project=cfg.logging.wandb_project, config=to_dict(cfg))
    prompts = load_expert_prompts(cfg.experts)  # @file prompts: relative to the working directory
    say = print if info.is_logging_rank else (lambda *_: None)
    ckpt = Checkpointer(cfg, cfg.logging.run_dir, say=say)
    run = Run(cfg, info, chunks, tokenizer, cfg.data.chat_template, prompts, logger, ckpt, config_dir)
    if split is not None:
        from .async_riel import connect_trainer

        run.link = connect_trainer(split, chunks, cfg.model.num_layers)
    return run


def load_records(cfg: Config, split: str) -> List[Record]:
    """The records of ``split``: the generator's keyword arguments go to the synthetic task only (the real
    loaders take none; passing them was the crash of every paper config before its first step)."""
    d = cfg.data
    kw = {}
    if d.name == "synthetic":
        kw = dict(seed=d.seed, num_train=d.synthetic.num_train, num_test=d.synthetic.num_test,
                  num_riel=d.synthetic.num_riel,
                  version=d.synthetic.version, families=list(d.synthetic.families),
                  max_operand=d.synthetic.max_operand, min_steps=d.synthetic.min_steps,
                  max_steps=d.synthetic.max_steps)
    return load_dataset(d.name, d.path, split, on_bad_record=d.on_bad_record, **kw)


def riel_records(cfg: Config) -> List[Record]:
    """RIEL's question pool: ``riel.train_split`` when set, else ``data.train_split``."""
    return load_records(cfg, cfg.riel.train_split or cfg.data.train_split)


def mef_rows(cfg: Config, say=print) -> List[MEFRow]:
    """MEF data: the configured trace file, or for the synthetic task the offline "teachers" (v2: one error-prone
    teacher per expert, ``data.synthetic.teacher_error``), or for a real dataset without traces the dataset
    rationale as expert 0 only.

    With ``mef.drop_unverified`` a teacher trace (file or synthetic) whose final answer fails the dataset's
    verifier is dropped (counted and reported); the verifier sees the dataset record of the trace's id when the
    train split has it. The rows come shuffled with the run's ``seed`` (data order is the run's, the questions are
    ``data.seed``'s): MEF step s trains rows (s * global_batch_size + i) mod N (tools/pretokenize.py writes them in
    this order for ``data.loader=dali``)."""
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
        from .rewards import verify

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
        from .data.dali_loader import DaliMEFBatches

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
    bar = _progress(run, steps, "MEF")
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


def make_engine(run: Run):
    """The KV-cache generation engine on the training weights (stops on the chat template's end of turn)."""
    from .data.templates import default_template, end_of_turn_id
    from .rollout.engine import build_engine

    template = run.template or default_template(run.tokenizer)
    stops = sorted({end_of_turn_id(template, run.tokenizer), run.tokenizer.eos_id})
    return build_engine(run.cfg.rollout, run.chunks, run.tokenizer, stop_token_ids=stops, run_cfg=run.cfg)


def evaluate_experts(run: Run, stage: str, num_examples: Optional[int] = None, log: bool = True) -> Dict[str, object]:
    """Greedy accuracy per expert, majority vote, the ``eval.selection`` strategies, best expert and oracle on the
    first ``num_examples`` (default ``eval.num_examples``) held-out questions. ``log``: print the line and write
    an ``eval_<stage>`` metrics row (the evaluation during RIEL logs into the RIEL rows instead)."""
    from .eval.accuracy import evaluate
    from .eval.ensemble import flat_metrics
    from .rollout.engine import SamplingParams
    from .rollout.scheduler import ChatRenderer, verifier_reward

    cfg = run.cfg
    records = load_records(cfg, cfg.data.eval_split)
    n = cfg.eval.num_examples if num_examples is None else num_examples
    if n:
        records = records[:n]
    engine = make_engine(run)
    params = SamplingParams(max_new_tokens=cfg.eval.max_new_tokens, top_k=1,
                            stop_strings=tuple(cfg.rollout.stop_strings))
    renderer = ChatRenderer(run.tokenizer, run.prompts, run.template)
    sampled = SamplingParams(max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.eval.sample_temperature,
                             stop_strings=tuple(cfg.rollout.stop_strings))
    samples = cfg.eval.samples_per_question if log else 0  # pass@k / maj@k after a stage, not during RIEL
    res = evaluate(lambda reqs: engine.generate(reqs, params), renderer.prompt, records,
                   cfg.experts.num_experts, verifier_reward(cfg.data.name), strategies=cfg.eval.selection,
                   sample_generate=lambda reqs: engine.generate(reqs, sampled), samples=samples,
                   pass_k=cfg.eval.pass_k)
    if log:
        accs = ", ".join(f"e{e}={a:.3f}" for e, a in enumerate(res["accuracy"]))
        sel = "".join(f"; {k} {v:.3f}" for k, v in res["selection"].items())
        run.say(f"eval {stage}: {accs}; mean {res['mean_accuracy']:.3f}; majority vote {res['majority_vote']:.3f}"
                f"{sel}; oracle {res['oracle']:.3f}")
        run.logger.log(0, {"mean_accuracy": res["mean_accuracy"], "majority_vote": res["majority_vote"],
                           "oracle": res["oracle"], **{f"selection/{k}": v for k, v in res["selection"].items()},
                           **{f"accuracy/expert{e}": a for e, a in enumerate(res["accuracy"])},
                           **flat_metrics(res, prefix="")}, f"eval_{stage}")
    return res


def riel_questions(records: Sequence[Record], step: int, per_step: int, seed: int) -> List[Record]:
    """The questions of RIEL step ``step``: consecutive slices of a seeded permutation, reshuffled every epoch
    (a pure function of the step, so a resumed run sees the same data)."""
    n = len(records)
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(i, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
        out.append(records[int(perm[pos])])
    return out


def riel_optimizer_step(run: Run, optimizer, scheduler, step: int, bad_in_a_row: int):
    """The optimizer step of a RIEL step whose gradients are in the buffers, or its skip when they are not finite
    (weights untouched, gradients zeroed). Returns (finite, grad_norm, non-finite steps in a row); raises after
    more than ``riel.max_nonfinite_steps`` in a row."""
    finite = boptim.grads_finite(run.chunks)
    bad_in_a_row = 0 if finite else bad_in_a_row + 1
    if finite:
        _, grad_norm = boptim.optimizer_step(optimizer, scheduler)
        return True, grad_norm, bad_in_a_row
    boptim.zero_grads(run.chunks, optimizer)
    run.say(f"RIEL step {step}: non-finite gradients, step skipped ({bad_in_a_row} in a row)")
    limit = run.cfg.riel.max_nonfinite_steps
    if bad_in_a_row > limit:
        raise RuntimeError(f"RIEL: {bad_in_a_row} consecutive non-finite steps (riel.max_nonfinite_steps={limit}); "
                           f"aborting")
    return False, float("nan"), bad_in_a_row


def run_riel(run: Run) -> Dict[str, float]:
    """Stage 2, per step: generate -> reward -> advantage -> E+/E- and O+ -> hard-example admission -> one
    forward-backward over GRPO + KL (+ SFT when the buffer fires) microbatches -> one optimizer step."""
    from .algo.objective import RielObjective
    from .rollout.scheduler import build_riel_scheduler, verifier_reward

    cfg = run.cfg
    if run.link is not None:
        from .async_riel import run_riel_async

        return run_riel_async(run)
    if run.ckpt.stage_done("riel"):
        run.say("RIEL: complete in the latest checkpoint; skipped")
        return {}
    records = riel_records(cfg)
    steps = cfg.riel.steps
    optimizer, scheduler = boptim.build_optimizer(cfg, run.chunks, lr=cfg.riel.lr, total_steps=steps)
    sched = build_riel_scheduler(cfg, run.chunks, run.tokenizer, run.prompts, verifier_reward(cfg.data.name),
                                 refill_pool=records)  # riel.dynamic_sampling draws fresh cells from the pool
    state = run.ckpt.resume("riel", run.chunks, optimizer, scheduler) or {}
    if state.get("buffer") is not None and sched.buffer is not None:
        sched.buffer.load_state_dict(state["buffer"])
    start, bad_in_a_row = state.get("step", -1) + 1, state.get("bad_in_a_row", 0)
    ref = ReferencePolicy(run) if cfg.riel.beta_ref > 0 else None
    loss_fn = RielObjective(cfg.riel)
    keys = [f"{a}/{k}" for a in ("loss", "count") for k in ("grpo", "kl", "sft")] + ["count/clipped", "loss"]
    run.say(f"RIEL: {steps} steps x {cfg.riel.questions_per_step} questions x {cfg.experts.num_experts} experts "
            f"x G={cfg.riel.group_size}")
    bar = _progress(run, steps, "RIEL")
    if bar is not None:
        bar.update(start)
    for step in range(start, steps):
        t0 = time.time()
        every = cfg.riel.grad_norm_interval
        out = sched.step(riel_questions(records, step, cfg.riel.questions_per_step, cfg.seed), step,
                         split_terms=bool(every) and step % every == 0)
        t_gen = time.time()
        if ref is not None:
            ref.fill(out.microbatches)
        boptim.zero_grads(run.chunks, optimizer)
        term_norms = {}
        if out.terms is not None:  # one pass per term: per-term gradient norms, same summed gradient
            results, term_norms = forward_backward_by_term(run.chunks, optimizer, out.terms, loss_fn,
                                                           temperature=cfg.rollout.temperature)
        else:
            results = forward_backward(run.chunks, out.microbatches, loss_fn, temperature=cfg.rollout.temperature)
        finite, grad_norm, bad_in_a_row = riel_optimizer_step(run, optimizer, scheduler, step, bad_in_a_row)
        refit = getattr(sched.engine, "refit", None)  # an engine on its own copy of the weights (rollout.engine=vllm)
        t_refit = refit() if refit is not None and finite else 0.0
        t_end = time.time()
        m = dict(out.stats, **reduce_metrics(results, keys))
        m.update({f"grad_norm/{k}": v for k, v in term_norms.items()})
        m.update({"e_plus_minus_pairs": float(len(out.kl_pairs)), "grad_norm": grad_norm,
                  "skipped": float(not finite), "clip_fraction": m["count/clipped"] / max(m["count/grpo"], 1.0),
                  "time/generate_score": t_gen - t0, "time/train": t_end - t_gen, "time/step": t_end - t0,
                  "time/refit": t_refit,  # inside time/train
                  "train/tokens_per_s": sum(m[f"count/{k}"] for k in ("grpo", "kl", "sft")) / max(t_end - t_gen, 1e-9),
                  "memory/peak_gib": peak_memory_gib()})
        for e in range(cfg.experts.num_experts):
            m[f"e_plus/expert{e}"] = float(sum(p.e_plus == e for p in out.kl_pairs))
            m[f"e_minus/expert{e}"] = float(sum(p.e_minus == e for p in out.kl_pairs))
        k = cfg.eval.riel_interval
        if k and (step % k == 0 or step == steps - 1):  # a small held-out eval: accuracy per expert during RIEL
            from .eval.ensemble import flat_metrics

            held = evaluate_experts(run, "riel", num_examples=cfg.eval.riel_examples, log=False)
            m.update({f"heldout/expert{e}": a for e, a in enumerate(held["accuracy"])})
            m.update(flat_metrics(held))  # mean, vote, selections, oracle, pairwise error overlap
            run.riel_evals[f"during_riel_step{step}"] = held
        if step % cfg.logging.log_interval == 0 or step == steps - 1:
            run.logger.log(step, m, "riel")
        if bar is not None:
            bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kl=int(len(out.kl_pairs)), sft=int(len(out.sft_examples)))
            bar.update(1)
        run.ckpt.after_step("riel", step, run.chunks, optimizer, scheduler,
                            lambda: {"buffer": sched.buffer.state_dict() if sched.buffer is not None else None,
                                     "bad_in_a_row": bad_in_a_row}, last=step == steps - 1)
    if bar is not None:
        bar.close()
    out: Dict[str, float] = {"riel_steps": steps}
    path = os.path.join(run.run_dir, "metrics.jsonl")
    if run.info.is_logging_rank and os.path.exists(path):  # from the log, so a resumed run reports every step
        from .eval.plots import read_metrics

        r = [row["reward/mean"] for row in read_metrics(path, "riel") if "reward/mean" in row]
        if r:
            k = min(10, len(r))
            out.update(reward_first10=sum(r[:k]) / k, reward_last10=sum(r[-k:]) / k)
            run.say(f"RIEL training reward: mean of the first {k} steps {out['reward_first10']:.3f} -> "
                    f"last {k} steps {out['reward_last10']:.3f}")
    return out


class ReferencePolicy:
    """The frozen reference of the optional KL-to-reference term (``riel.beta_ref > 0``): a second model with the
    weights the RIEL stage started from, used forward-only to fill ``MicroBatch.ref_logp``."""

    def __init__(self, run: Run):
        from .backend import state as bstate

        self.run = run
        self.chunks = bmodel.build_model(run.cfg)
        full = bstate.full_state_dict(run.chunks, run.cfg.model.num_layers, dst=None)
        bstate.load_full_state_dict(self.chunks, full, run.cfg.model.num_layers)

    def fill(self, microbatches: List[MicroBatch]) -> None:
        from .backend.step import forward_logprobs

        logps = forward_logprobs(self.chunks, microbatches, temperature=self.run.cfg.rollout.temperature)
        if logps is not None:
            for mb, lp in zip(microbatches, logps):
                mb.ref_logp = lp


def _progress(run: Run, total: int, desc: str):
    if not (run.cfg.logging.progress_bar and run.info.is_logging_rank):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True)


def run_all(run: Run) -> Dict[str, object]:
    """MEF, eval, RIEL, eval, plot — each as the config enables it. Evaluations already in the run directory's
    eval.json (a resumed run) are kept, not recomputed."""
    import json

    from .eval.accuracy import write_eval
    from .eval.plots import plot_reward_curves

    if run.role == "rollout":  # async RIEL: a rollout rank serves generation until the training ranks stop it
        return run.serve()
    cfg = run.cfg
    summary: Dict[str, object] = {}
    path = os.path.join(run.run_dir, "eval.json")
    results = json.load(open(path)) if (cfg.checkpoint.resume and os.path.exists(path)) else {}
    summary_path = os.path.join(run.run_dir, "summary.json")
    before = json.load(open(summary_path)) if (cfg.checkpoint.resume and os.path.exists(summary_path)) else {}
    stages = [("mef", run_mef, cfg.mef.enabled), ("riel", run_riel, cfg.riel.enabled)]

    def write_summary() -> None:  # after every stage, so a later crash does not lose a finished stage's numbers
        keep = ("accuracy", "mean_accuracy", "majority_vote", "best_expert", "oracle", "selection")
        summary["eval"] = {k: {f: v[f] for f in keep if f in v} for k, v in results.items()}
        if run.info.is_logging_rank:
            with open(summary_path + ".part", "w") as f:
                json.dump(summary, f, indent=2)
            os.replace(summary_path + ".part", summary_path)

    for name, fn, enabled in stages:
        if not enabled:
            continue
        done = fn(run)
        if not done:  # skipped as complete in the checkpoint: keep what the run that did it recorded
            done = {k: v for k, v in before.items() if k.startswith(f"{name}_")}
        summary.update(done)
        for k, v in (run.riel_evals.items() if name == "riel" else ()):  # the evaluations during RIEL, in eval.md
            results.setdefault(k, v)
        if cfg.eval.enabled and f"after_{name}" not in results:
            results[f"after_{name}"] = evaluate_experts(run, f"after_{name}")
            if run.info.is_logging_rank:
                write_eval(results, run.run_dir)
        write_summary()
    if run.info.is_logging_rank:
        plot_reward_curves(run.run_dir)
    write_summary()
    return summary


def last_checkpoint_note(cfg: Config) -> str:
    """"; the newest complete checkpoint is P ..." for an error message (no collectives: safe after a rank died)."""
    from .backend import checkpoint as bckpt

    path = bckpt.latest(cfg.checkpoint.dir or os.path.join(cfg.logging.run_dir, "checkpoints"))
    if path is None:
        return "; no checkpoint was written yet"
    return f"; the newest complete checkpoint is {path} (rerun the same command to resume from it)"


def finish(run: Optional[Run], clean: bool = True) -> None:
    """Close the logger; tear the process groups down unless ``clean`` is False (another rank is gone: a
    collective teardown could wait for it)."""
    if run is not None:
        if getattr(run, "link", None) is not None:  # async RIEL: stop the rollout ranks
            run.link.close(quiet=not clean)
        if run.logger is not None:  # an async rollout rank has none
            run.logger.close()
    if clean:
        parallel.destroy()
