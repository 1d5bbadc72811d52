"""A training job: :func:`setup` (process groups, model, tokenizer, prompts, run directory), :func:`run_all`
(MEF, evaluation, RIEL, evaluation, plot, as the config enables them) and ``common.finish``.

    run = setup(cfg)            # a RolloutRank instead on the rollout ranks of an async run
    summary = run_all(run)      # summary.json, eval.json / eval.md, reward_curves.png in the run directory
    finish(run)
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

from ..backend.ckpt.hf_convert import init_model_weights
from ..backend.runtime import parallel
from ..backend.runtime.runtime_info import startup_lines
from ..backend.train import model as bmodel
from ..checkpointing import Checkpointer
from ..config import Config, ConfigError, save_config, to_dict
from ..data import load_expert_prompts, tokenizer_from_config
from ..data.preflight import check_run_inputs
from ..eval.accuracy import write_eval
from ..eval.plots import plot_reward_curves
from ..metrics import MetricsLogger
from .common import Run
from .evaluate import evaluate_experts
from .mef import run_mef
from .riel import run_riel
from .riel_async import RolloutRank, connect_trainer, run_riel_async, split_for


def setup(cfg: Config, config_dir: Optional[str] = None):
    """Initialise process groups, build the model, load tokenizer and expert prompts, open the run directory.
    With ``riel.async_rollout`` the job is split first; a rollout rank gets a ``riel_async.RolloutRank``."""
    check_run_inputs(cfg)  # a missing dataset / trace / shard file is one line now, not a traceback later
    split = split_for(cfg)  # None unless riel.async_rollout
    if split is not None and split.is_rollout:
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
        print("\n".join(startup_lines(cfg, chunks)), flush=True)
    if cfg.model.init_from or cfg.model.init_from_hf:
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
        run.link = connect_trainer(split, chunks, cfg.model.num_layers)
    return run


def run_all(run) -> Dict[str, object]:
    """MEF, eval, RIEL, eval, plot — each as the config enables them. Evaluations already in the run directory's
    eval.json (a resumed run) are kept, not recomputed. On an async run's rollout rank: serve generation until
    the training ranks stop it."""
    if run.role == "rollout":
        return run.serve()
    cfg = run.cfg
    summary: Dict[str, object] = {}
    path = os.path.join(run.run_dir, "eval.json")
    results = json.load(open(path)) if (cfg.checkpoint.resume and os.path.exists(path)) else {}
    summary_path = os.path.join(run.run_dir, "summary.json")
    before = json.load(open(summary_path)) if (cfg.checkpoint.resume and os.path.exists(summary_path)) else {}
    riel = run_riel_async if run.link is not None else run_riel
    stages = [("mef", run_mef, cfg.mef.enabled), ("riel", riel, cfg.riel.enabled)]

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
