"""Stage 2, RIEL (reinforced inter-expert learning), synchronous: per step, generate -> reward -> advantage ->
E+/E− and O+ -> hard-example admission -> one forward-backward over GRPO + KL (+ SFT when the buffer fires)
microbatches -> one optimizer step (-> refit of an engine on its own weights copy). The scheduler
(``rollout/scheduler.py``) does the first half, :class:`~megatron_meml.stages.riel_core.RielCore` the second."""
from __future__ import annotations

import time
from typing import Dict

from ..algo.objective import RielObjective
from ..rollout.scheduler import build_riel_scheduler, verifier_reward
from .common import Run, riel_records
from .riel_core import RielCore


def run_riel(run: Run) -> Dict[str, float]:
    """The synchronous RIEL stage (module docstring); returns the summary fields of ``RielCore.summary``."""
    cfg = run.cfg
    if run.ckpt.stage_done("riel"):
        run.say("RIEL: complete in the latest checkpoint; skipped")
        return {}
    records = riel_records(cfg)
    sched = build_riel_scheduler(cfg, run.chunks, run.tokenizer, run.prompts, verifier_reward(cfg.data.name),
                                 refill_pool=records)  # riel.dynamic_sampling draws fresh cells from the pool
    core = RielCore(run, sched, RielObjective(cfg.riel), records)
    run.say(f"RIEL: {core.steps} steps x {cfg.riel.questions_per_step} questions x {cfg.experts.num_experts} "
            f"experts x G={cfg.riel.group_size}")
    core.open_progress()
    for step in range(core.start, core.steps):
        t0 = time.time()
        out = sched.step(core.questions(step), step, split_terms=core.split_terms(step))
        t_gen = time.time()
        trained = core.train(out, step)
        refit = getattr(sched.engine, "refit", None)  # an engine on its own copy of the weights (rollout.engine=vllm)
        t_refit = refit() if refit is not None and trained.finite else 0.0
        t_end = time.time()
        m = core.metrics(step, out, trained, train_seconds=t_end - t_gen)
        m.update({"time/generate_score": t_gen - t0, "time/step": t_end - t0,
                  "time/refit": t_refit})  # time/refit is inside time/train
        core.end_step(step, m, out)
    core.close_progress()
    return core.summary()
