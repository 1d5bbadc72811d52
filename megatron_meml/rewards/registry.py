"""The verifier contract, the registry by name, and the guarded entry points ``verify`` / ``verify_detailed``.

A verifier is any callable ``(response_text, record) -> Verdict(score, reason)`` registered under a name with
``@register_verifier("name")``. Scores are 0.0 or 1.0. ``reason`` is one of the codes below, so reward logs can
count why answers fail.

The guard around every verifier: a response that is not a string, is empty/whitespace, or is longer than
``max_chars`` (default 20,000 characters: a run-away generation, refused rather than searched) scores 0 without
reaching the verifier; any exception inside a verifier scores 0 with ``internal_error`` (logged at debug level).
So ``verify`` never raises on model output; only an unknown verifier name raises (a configuration error).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, NamedTuple, Protocol, Tuple

from ..types import Record

log = logging.getLogger(__name__)

MAX_CHARS = 20_000

CORRECT = "correct"            # final answer matches the gold answer
WRONG = "wrong_answer"         # a final answer was found and does not match
NO_ANSWER = "no_answer"        # no final answer could be read from the response
AMBIGUOUS = "ambiguous"        # the answer matches several options / both polarities
TIMEOUT = "timeout"            # the symbolic comparison ran out of time
EMPTY = "empty"                # empty or whitespace-only response
TOO_LONG = "too_long"          # longer than max_chars
NOT_TEXT = "not_text"          # response is not a str
INTERNAL_ERROR = "internal_error"
REASONS = (CORRECT, WRONG, NO_ANSWER, AMBIGUOUS, TIMEOUT, EMPTY, TOO_LONG, NOT_TEXT, INTERNAL_ERROR)


class Verdict(NamedTuple):
    score: float
    reason: str


class Verifier(Protocol):
    def __call__(self, response: str, record: Record) -> Verdict: ...


_REGISTRY: Dict[str, Verifier] = {}


def register_verifier(name: str) -> Callable[[Verifier], Verifier]:
    """Decorator: register ``fn`` as the verifier called ``name`` (a second registration of a name is an error)."""
    def deco(fn: Verifier) -> Verifier:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"verifier {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return deco


def verifier_names() -> List[str]:
    return sorted(_REGISTRY)


def get_verifier(name: str) -> Verifier:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown verifier {name!r}; registered: {', '.join(verifier_names())}") from None


def judge(correct: bool) -> Verdict:
    return Verdict(1.0, CORRECT) if correct else Verdict(0.0, WRONG)


def verify_detailed(name: str, response_text, record: Record, max_chars: int = MAX_CHARS) -> Tuple[float, str]:
    """``(score, reason_code)`` of ``response_text`` against ``record`` under verifier ``name``; never raises on
    the response (see module docstring)."""
    fn = get_verifier(name)
    if not isinstance(response_text, str):
        return 0.0, NOT_TEXT
    if not response_text.strip():
        return 0.0, EMPTY
    if len(response_text) > max_chars:
        return 0.0, TOO_LONG
    try:
        verdict = fn(response_text, record)
        return float(verdict.score), verdict.reason
    except Exception:  # a verifier bug must not kill a training step; the score is 0 and the reason says why
        log.debug("verifier %s raised on record %s", name, getattr(record, "id", "?"), exc_info=True)
        return 0.0, INTERNAL_ERROR


def verify(name: str, response_text, record: Record, max_chars: int = MAX_CHARS) -> float:
    """The 0/1 reward of ``response_text`` for ``record`` under verifier ``name``."""
    return verify_detailed(name, response_text, record, max_chars)[0]
