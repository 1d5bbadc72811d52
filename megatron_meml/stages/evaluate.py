"""Held-out evaluation of the experts: after each stage (``eval_<stage>`` metrics row, ``eval.json`` / ``eval.md``)
and, on a small slice, during RIEL (``eval.riel_interval``; into the RIEL metrics rows)."""
from __future__ import annotations

from typing import Dict, Optional

from ..eval.accuracy import evaluate
from ..eval.ensemble import flat_metrics
from ..rollout.api import SamplingParams
from ..rollout.scheduler import ChatRenderer, verifier_reward
from .common import Run, load_records, make_engine


def evaluate_experts(run: Run, stage: str, num_examples: Optional[int] = None, log: bool = True) -> Dict[str, object]:
    """Greedy accuracy per expert, majority vote, the ``eval.selection`` strategies, best expert and oracle on the
    first ``num_examples`` (default ``eval.num_examples``) held-out questions; pass@k / maj@k from
    ``eval.samples_per_question`` sampled answers after a stage. ``log``: print the line and write an
    ``eval_<stage>`` metrics row (the evaluation during RIEL logs into the RIEL rows instead)."""
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
