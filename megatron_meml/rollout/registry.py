"""``rollout.engine`` name -> engine: the one place that knows every engine (they import only ``api.py``).

    engine = build_engine(cfg.rollout, chunks, tokenizer, stop_token_ids=stops, run_cfg=cfg)

``static`` (:class:`~megatron_meml.rollout.megatron_engine.MegatronEngine`, padded batches),
``continuous`` (:class:`~megatron_meml.rollout.continuous_engine.ContinuousEngine`, decode slots; falls back to
``static`` with a warning when the model uses a feature the slot model does not reproduce) and ``vllm``
(:class:`~megatron_meml.rollout.vllm_engine.VLLMEngine`, its own copy of the weights, refit after every optimizer
step). See ``docs/rollout_engines.md``.
"""
from __future__ import annotations

import warnings

from ..backend.infer.slot_model import unsupported_reason
from .api import GenerationEngine
from .continuous_engine import ContinuousEngine
from .megatron_engine import MegatronEngine
from .vllm_engine import vllm_engine

ENGINES = ("continuous", "static", "vllm")


def build_engine(rollout_cfg, chunks, tokenizer, stop_token_ids=None, vocab_size=None, engine=None,
                 **overrides) -> GenerationEngine:
    """The engine ``rollout_cfg.engine`` names (``cfg.rollout``) on ``chunks`` (this rank's model chunks; the
    pipeline groups default to megatron's: pass ``comm=backend.slot_model.StageComm(...)`` in ``overrides`` for
    others). ``engine`` overrides the configured name; other keyword arguments go to the engine. ``vllm`` needs the
    run's config as ``run_cfg=`` (one engine per process, refit with the current weights on every call after the
    first)."""
    name = engine or rollout_cfg.engine
    run_cfg = overrides.pop("run_cfg", None)
    if name == "vllm":
        if run_cfg is None:
            raise ValueError("rollout.engine=vllm: build_engine needs the run's config (run_cfg=cfg)")
        return vllm_engine(run_cfg, chunks, tokenizer, stop_token_ids)
    if name == "continuous":
        reason = unsupported_reason(chunks)
        if reason is None:
            kw = dict(max_slots=rollout_cfg.max_slots, prefill_tokens=rollout_cfg.prefill_tokens,
                      cuda_graphs=rollout_cfg.cuda_graphs, keep_cache=rollout_cfg.keep_cache)
            kw.update(overrides)
            return ContinuousEngine(chunks, tokenizer, rollout_cfg.token_budget, stop_token_ids=stop_token_ids,
                                    vocab_size=vocab_size, **kw)
        warnings.warn(f"rollout.engine=continuous: {reason}; using the static engine")
    elif name != "static":
        raise ValueError(f"config key `rollout.engine`: must be one of {', '.join(ENGINES)}, got {name!r}")
    return MegatronEngine(chunks, tokenizer, rollout_cfg.token_budget, stop_token_ids=stop_token_ids,
                          vocab_size=vocab_size, **{k: v for k, v in overrides.items() if k in ("use_cache", "layout")})
