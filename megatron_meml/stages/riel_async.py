"""One-step-off asynchronous RIEL (``riel.async_rollout=true``): generation of step s+1 overlaps training of step s.

Ranks. The last ``riel.rollout_ranks`` ranks of the job are *rollout ranks*: their own megatron world with
TP = ``riel.rollout_tensor_parallel_size`` (``async_bridge.py`` explains the split), a copy of the model
without optimizer or gradient buffers, and the generation engine that ``rollout.engine`` selects, driven by the
scheduler's own request/DP-split code. The other ranks train with the configured TP/PP/DP and never generate during
RIEL (MEF and eval run on them; the rollout ranks wait meanwhile).

Per step s (protocol and timeline: ``async_link.py``):
  1. the rollouts R_s, generated with W_{max(s-1, 0)} on the rollout ranks, are in hand;
  2. ``sched.step(..., rollouts=R_s)``: rewards -> advantages -> E+/E- -> hard-example buffer -> rows; the KL rows'
     P+ log-probs are recomputed with the current weights (:class:`KLTeacher`, forward only);
  3. forward-backward with the decoupled objective (``algo/async_objective.py``) and one optimizer step -> W_{s+1},
     while the rollout ranks generate R_{s+1} with W_s;
  4. receive R_{s+1} (waiting only if generation was slower than 2-3), log, checkpoint;
  5. send W_{s+1} (layout-invariant gather on the training ranks, bucketed broadcast from training rank 0, scatter
     into the rollout ranks' own TP shards; in the background) and request R_{s+2}.

Exact resume. A checkpoint after step s holds W_{s+1} and, in the trainer state, R_{s+1} itself (already
received in 4; token ids, log-probs, rewards), which was generated from W_s. Restarting from it trains step s+1 on
exactly those rollouts and asks the rollout ranks for R_{s+2} from W_{s+1}, as the uninterrupted run did; the
hard-example buffer, RNGs and data position are restored as in the synchronous loop. (Regenerating R_{s+1} on
resume instead would need W_s in the checkpoint as well: twice the model.) Checkpoints are written before the next
generation is requested, so a preempted run never leaves the rollout ranks busy.
"""
from __future__ import annotations

import copy
import signal
import time
from dataclasses import replace
from functools import partial
from typing import Dict, Optional

import torch

from ..algo.async_objective import decoupled_riel_loss
from ..backend.infer import inference
from ..backend.runtime import parallel
from ..backend.train import model as bmodel
from ..checkpointing import Preempted
from ..config import Config, ConfigError
from ..data import load_expert_prompts, tokenizer_from_config
from ..rollout.rescore import RolloutRescorer
from ..rollout.scheduler import build_riel_scheduler, verifier_reward
from ..types import TokenKind
from .async_bridge import AsyncRolloutError, Bridge, Heartbeat, Split, split_world
from .async_link import RolloutClient, RolloutServer
from .common import Run, riel_questions, riel_records
from .riel_core import RielCore


def split_for(cfg: Config) -> Optional[Split]:
    """This process's role when the run is asynchronous (its role world is then initialised), else None."""
    if not (cfg.riel.enabled and cfg.riel.async_rollout):
        return None
    p = cfg.parallel
    return split_world(cfg.riel.rollout_ranks, cfg.riel.rollout_timeout_s, backend=p.backend,
                       timeout_minutes=p.timeout_minutes)


def rollout_config(cfg: Config) -> Config:
    """The rollout ranks' config: TP = ``riel.rollout_tensor_parallel_size``, PP = 1, and the training layout's
    padded vocabulary (both sides must hold the same full embedding for the weight hand-off)."""
    rcfg = copy.deepcopy(cfg)
    rtp = cfg.riel.rollout_tensor_parallel_size
    padded = bmodel.padded_vocab_size(cfg)
    if padded % rtp:
        raise ConfigError(f"config key `riel.rollout_tensor_parallel_size`: {rtp} does not divide the padded "
                          f"vocabulary {padded} of the training layout (set model.padded_vocab_size)")
    rcfg.parallel.tensor_model_parallel_size, rcfg.parallel.pipeline_model_parallel_size = rtp, 1
    rcfg.parallel.sequence_parallel = False
    rcfg.model.padded_vocab_size = padded
    rcfg.model.recompute_activations = False
    return rcfg


def connect_trainer(split: Split, chunks, num_layers: int) -> RolloutClient:
    """Training ranks: heartbeat, bridge groups (collective with the rollout ranks), the client."""
    heartbeat = Heartbeat(split.store, split.name)
    return RolloutClient(split, Bridge(split), heartbeat, chunks, num_layers)


class _NoGeneration:
    """The training ranks' engine in an async run: rollouts come from the rollout ranks."""

    last_stats: Dict[str, float] = {}

    def generate(self, requests, params):
        raise RuntimeError("async RIEL: the training ranks do not generate; rollouts come from the rollout ranks")


class RolloutRank:
    """Everything a rollout rank holds: its megatron world (TP = rollout TP), a gradient-free model, the scheduler's
    request / generation / reward code, and the server loop. ``stages.run.run_all`` calls :meth:`serve`."""

    role = "rollout"

    def __init__(self, cfg: Config, split: Split, config_dir: Optional[str] = None):
        self.cfg, self.split = cfg, split
        # Preemption signals are the training ranks' business: they checkpoint at the next step boundary, which
        # needs the in-flight rollouts from here, and then send the stop command.
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, lambda signum, frame: None)
        rcfg = rollout_config(cfg)
        p = rcfg.parallel
        self.info = parallel.initialize(p.tensor_model_parallel_size, 1, seed=cfg.seed, backend=p.backend,
                                        timeout_minutes=p.timeout_minutes)
        rcfg.validate_layout(self.info.world_size)
        tokenizer = tokenizer_from_config(cfg.data)
        model = bmodel.build_gpt(rcfg)
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        for prm in model.parameters():
            prm.requires_grad_(False)
        self.chunks = [model]
        self.records = riel_records(cfg)
        self.sched = build_riel_scheduler(rcfg, self.chunks, tokenizer, load_expert_prompts(cfg.experts),
                                          verifier_reward(cfg.data.name))
        heartbeat = Heartbeat(split.store, split.name)
        self.link = RolloutServer(split, Bridge(split), heartbeat, self.chunks, cfg.model.num_layers, self.generate)
        self.logger = None

    def generate(self, step: int):
        """R_step: every (question, expert, sample) request of the step, generated and scored (collective over the
        rollout world: each replica takes every dp-th request, then all-gather)."""
        c = self.cfg
        recs = riel_questions(self.records, step, c.riel.questions_per_step, c.seed)
        t0 = time.perf_counter()
        # on a re-scoring step (rollout.mismatch_interval) the behaviour log-probs are this model's training forward
        # and the engine's are kept beside them: the trainer logs the mismatch and applies TIS, as in sync RIEL
        rollouts = self.sched.generate_and_score(self.sched.requests(recs, step), recs, self.sched.rescoring(step))
        return rollouts, {"seconds": time.perf_counter() - t0,
                          "tokens": float(sum(len(r.response_ids) for r in rollouts))}

    def serve(self) -> Dict[str, object]:
        return {"rollout_steps_served": self.link.serve()}


class KLTeacher:
    """``pairs -> pairs`` with each O+ response's P+ log-probs recomputed under the current weights (the stop-grad
    teacher of the inter-expert KL, ``algo/async_objective.py``). Forward only (``rollout/rescore.py``); the
    responses are split over the DP replicas and all-gathered. Only the last pipeline stage computes the loss, so
    earlier stages keep the rollout values (never read there)."""

    def __init__(self, run: Run):
        cfg = run.cfg
        self.run = run
        self.score = RolloutRescorer(run.chunks, run.tokenizer.pad_id, cfg.data.micro_batch_size * cfg.data.seq_length,
                                     cfg.rollout.temperature, kind=TokenKind.KL)

    def __call__(self, pairs):
        items = [(i, j, ro) for i, p in enumerate(pairs) for j, ro in enumerate(p.responses)]
        dp_rank, dp_size = inference.data_parallel_rank_size()
        parts = inference.dp_all_gather_objects(self.score([ro for _, _, ro in items[dp_rank::dp_size]]))
        if not self.run.info.is_last_stage:
            return pairs
        new = [list(p.responses) for p in pairs]
        for r, part in enumerate(parts):
            for k, logprobs in enumerate(part):
                i, j, ro = items[r + k * dp_size]
                new[i][j] = replace(ro, logprobs=logprobs)
        return [replace(p, responses=new[i]) for i, p in enumerate(pairs)]


def _check_rollouts(got: Dict[str, object], step: int, records, num_experts: int, group_size: int) -> None:
    ros = got["rollouts"]
    want = [(r.id, e) for r in records for e in range(num_experts) for _ in range(group_size)]
    have = [(ro.request.qid, ro.request.expert) for ro in ros]
    if have != want:
        raise AsyncRolloutError(f"async RIEL: the rollouts of step {step} do not match its requests "
                                f"({len(have)} rollouts for {len(want)} requests); are both sides on the same "
                                f"config and data?")


def run_riel_async(run: Run) -> Dict[str, float]:
    """The RIEL stage with one-step-off generation on the rollout ranks (module docstring); the step core, metrics,
    held-out evaluation, per-term gradient norms, checkpoint and summary are the synchronous stage's
    (``riel_core.py``)."""
    cfg, client = run.cfg, run.link
    if run.ckpt.stage_done("riel"):
        run.say("RIEL: complete in the latest checkpoint; skipped")
        return {}
    records = riel_records(cfg)
    N, G = cfg.experts.num_experts, cfg.riel.group_size
    sched = build_riel_scheduler(cfg, run.chunks, run.tokenizer, run.prompts, verifier_reward(cfg.data.name),
                                 engine=_NoGeneration(), kl_teacher=KLTeacher(run))
    core = RielCore(run, sched, partial(decoupled_riel_loss, riel_cfg=cfg.riel), records,
                    extra_keys=["async/weight", "async/capped", "async/log_ratio"])
    steps, start = core.steps, core.start
    pending = core.state.get("async_pending")
    if pending is not None and pending["step"] != start:
        pending = None
    run.say(f"RIEL (async, one step off): {steps} steps x {cfg.riel.questions_per_step} questions x {N} experts "
            f"x G={G}; {run.info.world_size} training ranks, {cfg.riel.rollout_ranks} rollout ranks (TP "
            f"{cfg.riel.rollout_tensor_parallel_size})" + (f"; step {start}'s rollouts from the checkpoint"
                                                            if pending is not None else ""))
    core.open_progress()
    try:
        sync_s = 0.0
        first = ([] if pending is not None else [start]) + ([start + 1] if start + 1 < steps else [])
        if start < steps and first:
            sync_s = client.request(first, version=start)
            if pending is None:
                pending = client.receive(start)
        mark = time.time()
        for step in range(start, steps):
            t0 = time.time()
            recs = core.questions(step)
            _check_rollouts(pending, step, recs, N, G)
            out = sched.step(recs, step, rollouts=pending["rollouts"], split_terms=core.split_terms(step))
            t_sched = time.time()
            trained = core.train(out, step)
            t_train = time.time()
            nxt = client.receive(step + 1) if step + 1 < steps else None
            now = time.time()
            m = core.metrics(step, out, trained, train_seconds=t_train - t_sched)
            m.update(_async_metrics(m, pending, nxt, step))
            m.update({"time/schedule": t_sched - t0, "time/wait_rollouts": now - t_train,
                      "time/weight_sync": sync_s, "time/step": now - mark})
            mark = now
            pending = nxt
            core.end_step(step, m, out, {"async_pending": _stored(pending)}, wait=f"{now - t_train:.2f}s")
            sync_s = client.request([step + 2], version=step + 1) if step + 2 < steps else 0.0
    except Preempted:  # the checkpoint is written: stop the rollout ranks cleanly
        client.close()
        raise
    except BaseException as e:  # tell the rollout ranks, and let nothing in the cleanup mask this error
        client.fail(f"{type(e).__name__}: {e}")
        client.close(quiet=True)
        raise
    finally:
        core.close_progress()
    client.close()
    return core.summary()


def _stored(pending: Optional[Dict[str, object]]) -> Optional[Dict[str, object]]:
    """What the checkpoint keeps of the in-flight step: its rollouts and their generation stats."""
    return None if pending is None else {"step": pending["step"], "rollouts": pending["rollouts"],
                                         "stats": pending["stats"]}


def _async_metrics(m: Dict[str, float], cur: Dict[str, object], nxt: Optional[Dict[str, object]],
                   step: int) -> Dict[str, float]:
    """Staleness, behaviour weights and overlap. ``async/overlap``: the share of generating R_{s+1} hidden behind
    training step s, ``1 − wait / generation time`` clipped to [0, 1] (1 = training never waited)."""
    gen = cur["stats"]
    n = max(m["count/grpo"], 1.0)
    out = {"rollout/seconds": gen["seconds"], "rollout/tokens_per_s": gen["tokens"] / max(gen["seconds"], 1e-9),
           "async/behavior_version": gen["version"], "async/staleness": step - gen["version"],
           "async/weight_mean": m["async/weight"] / n, "async/capped_fraction": m["async/capped"] / n,
           "async/kl_behavior_current": m["async/log_ratio"] / n}
    if nxt is not None:
        g = nxt["stats"]["seconds"] + nxt["stats"]["weights_s"]
        out["async/overlap"] = min(max(1.0 - nxt["wait_s"] / max(g, 1e-9), 0.0), 1.0)
    return out
