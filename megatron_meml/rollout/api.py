"""The generation-engine contract: ``engine.generate(requests, params) -> rollouts``.

Any engine (the megatron KV-cache engine in ``megatron_engine.py``, a scripted engine in tests, a future server
engine) takes a list of :class:`~megatron_meml.types.Request` and returns one :class:`~megatron_meml.types.Rollout`
per request, in request order, with:

* ``response_ids``: the sampled ids after the prompt, including the stop token when generation ended on one
  (``finish_reason="eos"``); a stop-string finish keeps every sampled id (the stop string is part of the text);
* ``logprobs[j]``: **log-prob of ``response_ids[j]`` under the temperature-scaled distribution over the real
  vocabulary**, ``log_softmax(logits[:vocab_size] / temperature)[id]`` -- the embedding's padded rows (ids >=
  the real vocabulary) take no probability mass -- *not* under the top-k / top-p truncation that the sample was
  drawn from. This is the distribution the training forward (``backend.step.forward_logprobs`` /
  ``forward_backward`` with the same temperature, ``vocab_limit = model.vocab_size``) computes, so the GRPO ratio
  ``exp(logp_train - logp_rollout)`` starts at exactly 1 (up to fp32 rounding, ≤ 1e-4 tested) on-policy. With
  truncation on (top_p < 1 or top_k > 0), the sampling distribution differs from the one the ratio uses; this is
  the standard choice (verl, OpenRLHF, slime) and is exact with the defaults (top_p = 1, top_k = 0);
* ``text``: the decoded response without a terminal stop token (what the verifier reads);
* ``finish_reason``: ``"eos"`` (a stop token was sampled), ``"stop"`` (a stop string appeared in the decoded
  response), ``"length"`` (``max_new_tokens`` reached).

Reproducibility: a request's sample depends only on its prompt, its ``seed`` and the weights — not on which other
requests share its batch (see ``sampling.py``). Greedy decoding is ``top_k=1`` (ties → lowest id).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Protocol, Sequence, Tuple, runtime_checkable

from ..types import Request, Rollout


@dataclass
class SamplingParams:
    """How to sample. ``top_k=1`` is greedy; ``top_k=0`` and ``top_p=1`` switch truncation off."""

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: Tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive (use top_k=1 for greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        self.stop_strings = tuple(s for s in self.stop_strings if s)

    @property
    def greedy(self) -> bool:
        return self.top_k == 1

    @classmethod
    def from_config(cls, rollout_cfg) -> "SamplingParams":
        """From ``cfg.rollout`` (a :class:`~megatron_meml.config.schema.RolloutConfig`)."""
        return cls(max_new_tokens=rollout_cfg.max_new_tokens, temperature=rollout_cfg.temperature,
                   top_p=rollout_cfg.top_p, top_k=rollout_cfg.top_k, stop_strings=tuple(rollout_cfg.stop_strings))


@runtime_checkable
class GenerationEngine(Protocol):
    """Anything that turns requests into rollouts under the contract of this module."""

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> List[Rollout]: ...


def build_engine(rollout_cfg, chunks, tokenizer, stop_token_ids=None, vocab_size=None, engine=None,
                 **overrides) -> GenerationEngine:
    """The engine ``rollout_cfg.engine`` names (``cfg.rollout``) on ``chunks`` (this rank's model chunks; the
    pipeline groups default to megatron's: pass ``comm=backend.slot_model.StageComm(...)`` in ``overrides`` for
    others). ``continuous`` falls back to ``static`` with a warning when the model uses a feature the slot model
    does not reproduce. ``engine`` overrides the configured name; other keyword arguments go to the engine.
    ``vllm`` needs the run's config as ``run_cfg=`` (``rollout/vllm_engine.py``: one engine per process, refit with
    the current weights on every call after the first)."""
    import warnings

    from .megatron_engine import MegatronEngine

    name = engine or rollout_cfg.engine
    run_cfg = overrides.pop("run_cfg", None)
    if name == "vllm":
        from .vllm_engine import vllm_engine

        if run_cfg is None:
            raise ValueError("rollout.engine=vllm: build_engine needs the run's config (run_cfg=cfg)")
        return vllm_engine(run_cfg, chunks, tokenizer, stop_token_ids)
    if name == "continuous":
        from ..backend.slot_model import unsupported_reason
        from .continuous_engine import ContinuousEngine

        reason = unsupported_reason(chunks)
        if reason is None:
            kw = dict(max_slots=rollout_cfg.max_slots, prefill_tokens=rollout_cfg.prefill_tokens,
                      cuda_graphs=rollout_cfg.cuda_graphs, keep_cache=rollout_cfg.keep_cache)
            kw.update(overrides)
            return ContinuousEngine(chunks, tokenizer, rollout_cfg.token_budget, stop_token_ids=stop_token_ids,
                                    vocab_size=vocab_size, **kw)
        warnings.warn(f"rollout.engine=continuous: {reason}; using the static engine")
    elif name != "static":
        raise ValueError(f"config key `rollout.engine`: must be `continuous`, `static` or `vllm`, got {name!r}")
    return MegatronEngine(chunks, tokenizer, rollout_cfg.token_budget, stop_token_ids=stop_token_ids,
                          vocab_size=vocab_size, **{k: v for k, v in overrides.items() if k in ("use_cache", "layout")})
