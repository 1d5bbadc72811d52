"""Verifiable rewards: one verifier family per file, a registry by name.

    from megatron_meml.rewards import verify, verify_detailed
    verify("gsm8k", response_text, record)            -> 1.0 | 0.0
    verify_detailed("mathqa", response_text, record)  -> (score, reason_code)

Registered: gsm8k, mathqa, strategyqa, synthetic. Add a family with ``@register_verifier("name")`` on a function
``(response, record) -> Verdict``; see registry.py for the contract and the reason codes.
"""
from . import gsm8k, mathqa, strategyqa, synthetic  # noqa: F401  (registers the verifiers)
from .registry import (
                       MAX_CHARS,
                       REASONS,
                       Verdict,
                       Verifier,
                       get_verifier,
                       register_verifier,
                       verifier_names,
                       verify,
                       verify_detailed,
)
from .symbolic import symbolic_equal

__all__ = ["MAX_CHARS", "REASONS", "Verdict", "Verifier", "get_verifier", "register_verifier", "verifier_names",
           "verify", "verify_detailed", "symbolic_equal"]
