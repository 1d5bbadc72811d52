"""The one timing harness of the benchmarks in ``megatron_meml.bench`` (and the GPU checks that compare variants).

How every comparison is timed:

* **interleaved rounds**: each round runs every variant once, one after the other (in reversed order on odd rounds
  when ``alternate=True``), so a slow phase of a shared machine hits all variants of the round alike; warm-up rounds
  run first and are not recorded.
* **paired ratios**: per round, a variant's rate is ``work / seconds`` (``work`` = what its callable returns:
  tokens, steps, or 1 for "one call"); its paired ratio is that rate over the baseline's rate *in the same round*.
* **headline**: the median over rounds of the paired ratio, at torch's default thread count (``set_threads(0)``).
  Best-over-best ratios and pinned one-thread figures may be printed beside it, always labelled.
* **peak memory**: :func:`reset_peak` / :func:`peak_bytes` (``backend/runtime/memory.py``: ``max_memory_allocated`` on
CUDA,
  the process's VmHWM on the CPU) -- no benchmark reads ``/proc`` or ``ru_maxrss`` itself.

API::

    set_threads(n) -> int                        # 0: torch's default (the headline); returns the count in use
    r = interleaved({"a": fn_a, "b": fn_b}, rounds=5, warmup=1, alternate=True, sync=None)
    r.rates("a"), r.seconds["a"], r.work["a"]    # per round
    r.paired("b", "a"), r.headline("b", "a")     # per-round ratios b/a, their median
    r.best_over_best("b", "a"), r.sum_ratio("b", "a"), headline_line(r, "a", ["b"], threads)
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch

from megatron_meml.backend.runtime.memory import peak_memory_bytes, reset_peak_memory

__all__ = ["Rounds", "interleaved", "timed", "set_threads", "headline_line", "median_paired", "peak_bytes",
           "reset_peak"]


def set_threads(n: int) -> int:
    """``n > 0`` pins torch to n threads; 0 keeps torch's default (what a user gets: the headline). Returns the
    thread count in use."""
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def timed(fn: Callable[[], object], sync: Optional[Callable[[], None]] = None):
    """``(fn(), seconds)``; ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the clock starts and stops."""
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    out = fn()
    if sync is not None:
        sync()
    return out, time.perf_counter() - t0


@dataclass
class Rounds:
    """Per-variant, per-round work and seconds of one :func:`interleaved` run (plus the last call's result)."""

    names: List[str]
    work: Dict[str, List[float]] = field(default_factory=dict)
    seconds: Dict[str, List[float]] = field(default_factory=dict)
    last: Dict[str, object] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return len(self.seconds[self.names[0]]) if self.names else 0

    def rates(self, name: str) -> List[float]:
        """work / seconds per round."""
        return [w / s for w, s in zip(self.work[name], self.seconds[name])]

    def paired(self, name: str, base: str) -> List[float]:
        """Per round: rate(name) / rate(base) of the same round (> 1: ``name`` is faster)."""
        return [x / y for x, y in zip(self.rates(name), self.rates(base))]

    def headline(self, name: str, base: str) -> float:
        """The median over rounds of the paired ratio ``name / base``."""
        return statistics.median(self.paired(name, base))

    def best_over_best(self, name: str, base: str) -> float:
        """Best rate of ``name`` over best rate of ``base`` (the least disturbed run of each; label it as such)."""
        return max(self.rates(name)) / max(self.rates(base))

    def sum_ratio(self, name: str, base: str) -> float:
        """(sum of work / sum of seconds) of ``name`` over that of ``base``, pooled over all rounds."""
        def pooled(n):
            return sum(self.work[n]) / sum(self.seconds[n])
        return pooled(name) / pooled(base)


def interleaved(variants: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1, alternate: bool = False,
                sync: Optional[Callable[[], None]] = None, work: Optional[Callable[[str, object], float]] = None,
                before: Optional[Callable[[str], None]] = None) -> Rounds:
    """Run ``warmup`` unrecorded rounds, then ``rounds`` recorded ones; each round calls every variant once.

    A variant's work in a round is ``work(name, result)`` when given, else its callable's result when that is a
    number, else 1. ``before(name)`` runs untimed before each call (zeroing gradients, resetting a cache)."""
    names = list(variants)
    out = Rounds(names, {n: [] for n in names}, {n: [] for n in names})
    for r in range(warmup + rounds):
        order = names[::-1] if alternate and r >= warmup and (r - warmup) % 2 else names   # warm-up: in order
        for n in order:
            if before is not None:
                before(n)
            res, dt = timed(variants[n], sync)
            out.last[n] = res
            if r < warmup:
                continue
            w = work(n, res) if work is not None else (float(res) if isinstance(res, (int, float)) else 1.0)
            out.work[n].append(w)
            out.seconds[n].append(dt)
    return out


def median_paired(pairs: Sequence[tuple]) -> float:
    """Median of per-round ratios from ``(rate_a, rate_b)`` pairs collected outside :func:`interleaved` (a side
    that runs in another process, such as the TRL worker)."""
    return statistics.median(a / b for a, b in pairs)


def headline_line(r: Rounds, base: str, names: Sequence[str], threads: int, what: str = "") -> str:
    """The labelled headline: ``headline (torch threads T, median paired ratio over R interleaved rounds, each / base):
    name x.xxx, ...``."""
    label = what or f"each / {base}"
    return (f"headline (torch threads {threads}, median paired ratio over {r.rounds} interleaved rounds, {label}): "
            + ", ".join(f"{n} {r.headline(n, base):.3f}" for n in names))


def reset_peak() -> bool:
    """Start a peak-memory window (CUDA peak stats, or the CPU's VmHWM); False where the CPU counter can't reset."""
    return reset_peak_memory()


def peak_bytes() -> float:
    """Peak memory since the last :func:`reset_peak` (or the process start)."""
    return peak_memory_bytes()
