"""When to save and what to resume: every ``checkpoint.save_interval`` steps, at the end of each stage, and on
SIGTERM / SIGUSR1 (the preemption signals of SLURM and most schedulers) — then the run exits cleanly.

Signal handling is cooperative: the handler only sets a flag; at the next step boundary all ranks agree on it (one
all-reduce of a flag) so every rank saves the same step. The checkpoint's trainer state records the stage
(``mef`` | ``riel``), the last completed step, and whatever the stage needs to continue exactly (data position,
hard-example buffer, metrics history).
"""
from __future__ import annotations

import os
import signal
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from .backend.ckpt import checkpoint as ckpt
from .backend.ckpt.checkpoint_source import HF_CONFIG, hf_config_source

STAGES = ("mef", "riel")


class Preempted(SystemExit):
    """Raised after the checkpoint of a signalled run is written; the entry point exits with code 0."""


class Checkpointer:
    def __init__(self, cfg, run_dir: str, say=print):
        c = cfg.checkpoint
        self.root = c.dir or os.path.join(run_dir, "checkpoints")
        self.interval, self.keep_last, self.resume_enabled = c.save_interval, c.keep_last, c.resume
        self.verify_checksums = c.verify_checksums
        self.say = say
        self.model_meta = ckpt.model_meta(cfg)

        src = hf_config_source(cfg)
        self.extra_files = {HF_CONFIG: src} if src else {}
        self._signalled: Optional[int] = None
        self._resolved: Optional[Dict[str, Any]] = None  # the checkpoint resume uses, once verified
        self._resolved_done = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self._signalled = signum

    # -- resume --------------------------------------------------------------------------------------------
    def _agree(self, reason: Optional[str]) -> Optional[str]:
        """Every rank's verdict on one checkpoint -> the first failure any rank saw (None when all passed)."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return reason
        every: List[Optional[str]] = [None] * dist.get_world_size()
        dist.all_gather_object(every, reason)
        return next((r for r in every if r is not None), None)

    def latest_meta(self) -> Optional[Dict[str, Any]]:
        """meta.json (+ ``path``) of the newest checkpoint that passes verification on every rank (collective the
        first time; the choice is kept until the next save). A truncated file, a missing shard or a garbled
        ``latest`` makes it fall back to the next older complete checkpoint with a one-line warning."""
        if not self.resume_enabled:
            return None
        if not self._resolved_done:
            rank = dist.get_rank() if dist.is_initialized() else 0
            own = [f"rank_{rank:05d}.pt"] if self.verify_checksums else []
            path = ckpt.resolve(self.root, checksum_files=lambda meta: own, agree=self._agree, warn=self.say)
            if rank == 0:  # set rejected (newer) ones aside, never deleted, so pruning cannot count them as kept
                for bad in ckpt.candidates(self.root):
                    if path is None or os.path.basename(bad) > os.path.basename(path):
                        os.replace(bad, bad + ".unusable")
                        self.say(f"warning: moved the unusable checkpoint {bad} to {bad}.unusable")
            self._resolved = None
            if path is not None:
                meta = ckpt.read_meta(path)
                meta["path"] = path
                self._resolved = meta
            self._resolved_done = True
        return self._resolved

    def stage_done(self, stage: str) -> bool:
        """True when the newest checkpoint is of a later stage, or of ``stage`` marked complete."""
        meta = self.latest_meta()
        if meta is None:
            return False
        later = STAGES.index(meta["stage"]) > STAGES.index(stage)
        return later or (meta["stage"] == stage and meta.get("stage_complete", False))

    def load_finished_stage(self, stage: str, chunks) -> bool:
        """When the newest checkpoint is ``stage`` marked complete, load its weights (so a restart that skips the
        stage still evaluates and continues from them). Returns True when it did."""
        meta = self.latest_meta()
        if meta is None or meta["stage"] != stage or not meta.get("stage_complete"):
            return False
        ckpt.load_model_only(meta["path"], chunks)
        return True

    def resume(self, stage: str, chunks, optimizer, scheduler) -> Optional[Dict[str, Any]]:
        """Load the newest checkpoint of ``stage`` (or the completed previous stage's weights when this stage has
        none yet). Returns the trainer state of ``stage`` or None to start it fresh."""
        meta = self.latest_meta()
        if meta is None:
            return None
        if meta["stage"] == stage:
            state = ckpt.load(meta["path"], chunks, optimizer, scheduler)
            done = meta.get("stage_step", state.get("step", -1)) + 1
            self.say(f"resumed {stage} from {meta['path']}: {stage.upper()} steps 0-{done - 1} done, continuing at "
                     f"step {done}")
            return state
        if STAGES.index(meta["stage"]) < STAGES.index(stage) and meta.get("stage_complete"):
            # start of a new stage: weights from the finished stage, fresh optimizer / scheduler of this stage
            ckpt.load_model_only(meta["path"], chunks)
            optimizer.reload_model_params()  # main (fp32) params of the fresh optimizer follow the loaded weights
            self.say(f"{stage}: starting from the weights of {meta['path']}")
        return None

    # -- save ----------------------------------------------------------------------------------------------
    def _agreed_signal(self) -> bool:
        flag = torch.tensor([1 if self._signalled else 0], dtype=torch.int32)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def after_step(self, stage: str, step: int, chunks, optimizer, scheduler, state_fn, last: bool = False) -> None:
        """Call after optimizer step ``step`` (0-based) of ``stage``. ``state_fn()`` returns the trainer state."""
        signalled = self._agreed_signal()
        periodic = self.interval > 0 and (step + 1) % self.interval == 0
        if not (signalled or periodic or last):
            return
        state = dict(state_fn(), stage=stage, step=step)
        path = ckpt.save(self.root, _global_step(stage, step), chunks, optimizer, scheduler, state,
                         keep_last=self.keep_last, extra_files=self.extra_files,
                         extra_meta={"stage": stage, "stage_step": step, "stage_complete": bool(last),
                                     **self.model_meta})
        self._resolved = dict(ckpt.read_meta(path), path=path)  # just written and complete: resume from it
        self._resolved_done = True
        if signalled:
            self.say(f"signal received: checkpoint {path} written at {stage} step {step}; exiting")
            raise Preempted(0)


def _global_step(stage: str, step: int) -> int:
    """Checkpoint folder index: stages never collide (RIEL steps are offset by 10^6)."""
    return STAGES.index(stage) * 1_000_000 + step + 1
