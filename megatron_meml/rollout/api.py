"""The generation-engine API: :class:`SamplingParams`, the :class:`GenerationEngine` protocol and its contract,
``engine.generate(requests, params) -> rollouts``. Engines import only this module; ``registry.py`` maps
``rollout.engine`` names to them.

Any engine (``static``: ``megatron_engine.py``; ``continuous``: ``continuous_engine.py``; ``vllm``:
``vllm_engine.py``; a scripted engine in tests) takes a list of :class:`~megatron_meml.types.Request` and
returns one :class:`~megatron_meml.types.Rollout` per request, in request order, with:

* ``response_ids``: the sampled ids after the prompt, including the stop token when generation ended on one
  (``finish_reason="eos"``); a stop-string finish keeps every sampled id (the stop string is part of the text);
* ``logprobs[j]``: **log-prob of ``response_ids[j]`` under the temperature-scaled distribution over the real
  vocabulary**, ``log_softmax(logits[:vocab_size] / temperature)[id]`` -- the embedding's padded rows (ids >=
  the real vocabulary) take no probability mass -- *not* under the top-k / top-p truncation that the sample was
  drawn from. This is the distribution the training forward (``backend.train.step.forward_logprobs`` /
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
