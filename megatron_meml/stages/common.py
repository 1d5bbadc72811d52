"""What the stages share: the :class:`Run` (config, layout, model chunks, tokenizer, prompts, logger, checkpoints),
the dataset splits and RIEL's question pool, the generation engine on the training weights, the optimizer step of a
RIEL step, the frozen reference policy, the progress bar and the end of a run.

Parallelism and Megatron stay in ``backend/``; the stages only call it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from ..backend.ckpt import checkpoint as bckpt
from ..backend.runtime import parallel
from ..backend.train import model as bmodel
from ..backend.train import optimizer as boptim
from ..backend.train import state as bstate
from ..backend.train.step import forward_logprobs
from ..checkpointing import Checkpointer
from ..config import Config
from ..data import load_dataset
from ..data.templates import default_template, end_of_turn_id
from ..metrics import MetricsLogger
from ..rollout.registry import build_engine
from ..types import MicroBatch, Record


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
    link: Optional[object] = None  # riel.async_rollout: the client of the rollout ranks (stages/riel_async.py)
    riel_evals: Dict[str, dict] = field(default_factory=dict)  # held-out evals during RIEL, for eval.md
    role = "train"

    @property
    def run_dir(self) -> str:
        return self.cfg.logging.run_dir

    def say(self, msg: str) -> None:
        if self.info.is_logging_rank:
            print(msg, flush=True)


def load_records(cfg: Config, split: str) -> List[Record]:
    """The records of ``split``: the generator's keyword arguments go to the synthetic task only (the real
    loaders take none)."""
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


def make_engine(run: Run):
    """The ``rollout.engine`` engine on the training weights (stops on the chat template's end of turn and EOS)."""
    template = run.template or default_template(run.tokenizer)
    stops = sorted({end_of_turn_id(template, run.tokenizer), run.tokenizer.eos_id})
    return build_engine(run.cfg.rollout, run.chunks, run.tokenizer, stop_token_ids=stops, run_cfg=run.cfg)


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


class ReferencePolicy:
    """The frozen reference of the optional KL-to-reference term (``riel.beta_ref > 0``): a second model with the
    weights the RIEL stage started from, used forward-only to fill ``MicroBatch.ref_logp``."""

    def __init__(self, run: Run):
        self.run = run
        self.chunks = bmodel.build_model(run.cfg)
        full = bstate.full_state_dict(run.chunks, run.cfg.model.num_layers, dst=None)
        bstate.load_full_state_dict(self.chunks, full, run.cfg.model.num_layers)

    def fill(self, microbatches: List[MicroBatch]) -> None:
        logps = forward_logprobs(self.chunks, microbatches, temperature=self.run.cfg.rollout.temperature)
        if logps is not None:
            for mb, lp in zip(microbatches, logps):
                mb.ref_logp = lp


def progress(run: Run, total: int, desc: str):
    """A tqdm bar on the logging rank (``logging.progress_bar``), else None."""
    if not (run.cfg.logging.progress_bar and run.info.is_logging_rank):
        return None
    return tqdm(total=total, desc=desc, dynamic_ncols=True)


def last_checkpoint_note(cfg: Config) -> str:
    """"; the newest complete checkpoint is P ..." for an error message (no collectives: safe after a rank died)."""
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
