"""The RIEL step core shared by the synchronous stage (``riel.py``) and the one-step-off asynchronous one
(``riel_async.py``): they differ only in where a step's rollouts come from and in the loss (on-policy GRPO vs the
decoupled objective of ``algo/async_objective.py``). Everything else is here, once:

  * state: optimizer + LR schedule (``riel.lr`` over ``riel.steps``), resume of model, optimizer, hard-example
    buffer and non-finite counter from the latest checkpoint, the frozen reference (``riel.beta_ref > 0``);
  * :meth:`RielCore.train`: reference log-probs -> forward-backward over the step's microbatches (one pass per
    term every ``riel.grad_norm_interval`` steps: per-term gradient norms) -> the optimizer step or its skip;
  * :meth:`RielCore.metrics`: the step's metrics row (scheduler stats, losses and counts, gradient norms, E+/E−
    counts per expert, memory) and, every ``eval.riel_interval`` steps and at the last, the held-out evaluation
    with the ensemble metrics;
  * :meth:`RielCore.end_step`: log, progress bar, checkpoint (buffer, counters, plus the stage's extra state);
  * :meth:`RielCore.summary`: ``riel_steps`` and the training reward of the first / last 10 steps (from
    ``metrics.jsonl``, so a resumed run reports every step).

Metric keys only one mode has (``SYNC_ONLY_KEYS``, ``ASYNC_ONLY_PREFIXES``) are listed here; a test runs both modes
on one config and compares the rest (tests/distributed/test_async_riel.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ..backend.runtime.memory import peak_memory_gib
from ..backend.runtime.parallel import reduce_metrics
from ..backend.train import optimizer as boptim
from ..backend.train.step import forward_backward
from ..backend.train.term_grads import forward_backward_by_term
from ..eval.ensemble import flat_metrics
from ..eval.plots import read_metrics
from ..types import Record
from .common import ReferencePolicy, Run, progress, riel_optimizer_step, riel_questions
from .evaluate import evaluate_experts

LOSS_KEYS = [f"{a}/{k}" for a in ("loss", "count") for k in ("grpo", "kl", "sft")] + ["count/clipped", "loss"]
# Keys of one mode only. Sync: generation and scoring happen inside the step; the vLLM engine is refit after it.
# Async: the step trains on rollouts generated one step earlier on the rollout ranks (stages/async_link.py).
SYNC_ONLY_KEYS = frozenset({"time/generate_score", "time/refit"})
ASYNC_ONLY_PREFIXES = ("async/", "time/schedule", "time/wait_rollouts", "time/weight_sync")


@dataclass
class Trained:
    """What :meth:`RielCore.train` did: per-microbatch results, per-term gradient norms, the optimizer step."""

    results: List[Dict[str, float]]
    term_norms: Dict[str, float]
    finite: bool
    grad_norm: float


class RielCore:
    """The shared half of a RIEL stage (module docstring). ``loss_fn`` is the per-microbatch objective;
    ``extra_keys``: further per-microbatch sums to reduce into the metrics row."""

    def __init__(self, run: Run, sched, loss_fn, records: Sequence[Record], extra_keys: Sequence[str] = ()):
        cfg = run.cfg
        self.run, self.cfg, self.sched, self.loss_fn, self.records = run, cfg, sched, loss_fn, records
        self.steps = cfg.riel.steps
        self.optimizer, self.scheduler = boptim.build_optimizer(cfg, run.chunks, lr=cfg.riel.lr,
                                                                total_steps=self.steps)
        self.state = run.ckpt.resume("riel", run.chunks, self.optimizer, self.scheduler) or {}
        if self.state.get("buffer") is not None and sched.buffer is not None:
            sched.buffer.load_state_dict(self.state["buffer"])
        self.start = self.state.get("step", -1) + 1
        self.bad_in_a_row = self.state.get("bad_in_a_row", 0)
        self.ref = ReferencePolicy(run) if cfg.riel.beta_ref > 0 else None
        self.keys = LOSS_KEYS + list(extra_keys)
        self.bar = None

    def open_progress(self) -> None:
        self.bar = progress(self.run, self.steps, "RIEL")
        if self.bar is not None:
            self.bar.update(self.start)

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def questions(self, step: int) -> List[Record]:
        return riel_questions(self.records, step, self.cfg.riel.questions_per_step, self.cfg.seed)

    def split_terms(self, step: int) -> bool:
        """Whether step ``step`` measures per-term gradient norms (``riel.grad_norm_interval``)."""
        every = self.cfg.riel.grad_norm_interval
        return bool(every) and step % every == 0

    def train(self, out, step: int) -> Trained:
        """Forward-backward over the step's microbatches (``out``: ``RielScheduler.step``'s output) and the
        optimizer step, or its skip when the gradients are not finite."""
        run = self.run
        if self.ref is not None:
            self.ref.fill(out.microbatches)
        boptim.zero_grads(run.chunks, self.optimizer)
        term_norms: Dict[str, float] = {}
        temperature = self.cfg.rollout.temperature
        if out.terms is not None:  # one pass per term: per-term gradient norms, same summed gradient
            results, term_norms = forward_backward_by_term(run.chunks, self.optimizer, out.terms, self.loss_fn,
                                                           temperature=temperature)
        else:
            results = forward_backward(run.chunks, out.microbatches, self.loss_fn, temperature=temperature)
        finite, grad_norm, self.bad_in_a_row = riel_optimizer_step(run, self.optimizer, self.scheduler, step,
                                                                   self.bad_in_a_row)
        return Trained(results, term_norms, finite, grad_norm)

    def metrics(self, step: int, out, trained: Trained, train_seconds: float) -> Dict[str, float]:
        """The step's metrics row (module docstring); the held-out evaluation runs here when it is due."""
        cfg = self.cfg
        m = dict(out.stats, **reduce_metrics(trained.results, self.keys))
        m.update({f"grad_norm/{k}": v for k, v in trained.term_norms.items()})
        m.update({"e_plus_minus_pairs": float(len(out.kl_pairs)), "grad_norm": trained.grad_norm,
                  "skipped": float(not trained.finite),
                  "clip_fraction": m["count/clipped"] / max(m["count/grpo"], 1.0),
                  "time/train": train_seconds,
                  "train/tokens_per_s": sum(m[f"count/{k}"] for k in ("grpo", "kl", "sft")) / max(train_seconds, 1e-9),
                  "memory/peak_gib": peak_memory_gib()})
        for e in range(cfg.experts.num_experts):
            m[f"e_plus/expert{e}"] = float(sum(p.e_plus == e for p in out.kl_pairs))
            m[f"e_minus/expert{e}"] = float(sum(p.e_minus == e for p in out.kl_pairs))
        k = cfg.eval.riel_interval
        if k and (step % k == 0 or step == self.steps - 1):  # a small held-out eval: accuracy per expert
            held = evaluate_experts(self.run, "riel", num_examples=cfg.eval.riel_examples, log=False)
            m.update({f"heldout/expert{e}": a for e, a in enumerate(held["accuracy"])})
            m.update(flat_metrics(held))  # mean, vote, selections, oracle, pairwise error overlap
            self.run.riel_evals[f"during_riel_step{step}"] = held
        return m

    def end_step(self, step: int, m: Dict[str, float], out, extra_state: Optional[Dict[str, object]] = None,
                 **postfix) -> None:
        """Log the row, move the bar, checkpoint (buffer, non-finite counter and ``extra_state``)."""
        run, last = self.run, step == self.steps - 1
        if step % self.cfg.logging.log_interval == 0 or last:
            run.logger.log(step, m, "riel")
        if self.bar is not None:
            self.bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kl=int(len(out.kl_pairs)),
                                 sft=int(len(out.sft_examples)), **postfix)
            self.bar.update(1)
        buffer = self.sched.buffer
        run.ckpt.after_step("riel", step, run.chunks, self.optimizer, self.scheduler,
                            lambda: {"buffer": buffer.state_dict() if buffer is not None else None,
                                     "bad_in_a_row": self.bad_in_a_row, **(extra_state or {})}, last=last)

    def summary(self) -> Dict[str, float]:
        """``riel_steps`` and the mean training reward of the first and last 10 steps (from the metrics log)."""
        run = self.run
        out: Dict[str, float] = {"riel_steps": self.steps}
        path = os.path.join(run.run_dir, "metrics.jsonl")
        if run.info.is_logging_rank and os.path.exists(path):
            r = [row["reward/mean"] for row in read_metrics(path, "riel") if "reward/mean" in row]
            if r:
                k = min(10, len(r))
                out.update(reward_first10=sum(r[:k]) / k, reward_last10=sum(r[-k:]) / k)
                run.say(f"RIEL training reward: mean of the first {k} steps {out['reward_first10']:.3f} -> "
                        f"last {k} steps {out['reward_last10']:.3f}")
        return out
