"""Symbolic equivalence through math-verify, with a per-call timeout that also works off the main thread.

math-verify's own timeouts use ``signal.alarm``, which only works in the main thread and would clobber another
pending ``SIGALRM`` timer (pytest-timeout uses one). So:
  * main thread and no pending ``ITIMER_REAL``: math-verify runs here with its own timeouts;
  * otherwise: the comparison runs in one long-lived helper process (spawned on first use, math-verify imported
    once, requests serialised by a lock). The helper applies math-verify's timeouts in its own main thread, and
    the caller waits at most ``timeout_s + 2`` seconds; past that the helper is killed (a huge integer power can
    block inside C code where no signal handler runs) and the next call starts a fresh one.

The verifiers call this only when the fast exact path (Fraction) cannot read the answer as a plain number.
Result: True / False, or None when the comparison timed out.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
from typing import Optional

log = logging.getLogger(__name__)

TIMEOUT_S = 5  # process-wide default of the per-call timeout (seconds, whole)
_GRACE_S = 2.0
_STARTUP_S = 120.0


def _compare(gold: str, pred: str, timeout_s: int) -> Optional[bool]:
    """math-verify parse + verify with its signal timeouts; None on timeout, False on any other failure."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    t = max(1, int(timeout_s))
    try:
        g = parse(f"${gold}$", parsing_timeout=t, raise_on_error=True)
        p = parse(pred if "\\boxed" in pred else f"${pred}$", parsing_timeout=t, raise_on_error=True)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=t, raise_on_error=True))
    except TimeoutException:
        return None
    except Exception:
        log.debug("math-verify failed on %r vs %r", gold, pred, exc_info=True)
        return False


def _worker_main(conn) -> None:
    """Helper-process loop: ``(gold, pred, timeout_s)`` in, ``_compare`` result out; ``None`` in stops it."""
    import math_verify  # noqa: F401  (import once, before saying ready)

    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        conn.send(_compare(*msg))


class _Helper:
    def __init__(self):
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="meml-math-verify")
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(_STARTUP_S) or parent.recv() != "ready":
            self._kill()
            raise RuntimeError("math-verify helper process did not start")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def compare(self, gold: str, pred: str, timeout_s: int) -> Optional[bool]:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._kill()
                self._start()
            try:
                self._conn.send((gold, pred, timeout_s))
                if self._conn.poll(timeout_s + _GRACE_S):
                    return self._conn.recv()
            except (EOFError, OSError):
                pass
            log.warning("math-verify helper timed out or died; restarting it on the next call")
            self._kill()
            return None


_HELPER = _Helper()


def _signals_usable() -> bool:
    return (threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0)


def symbolic_equal(gold: str, pred: str, timeout_s: Optional[int] = None) -> Optional[bool]:
    """Whether ``pred`` (LaTeX or a plain expression) equals ``gold`` per math-verify; None on timeout.
    ``timeout_s`` defaults to the module's ``TIMEOUT_S``."""
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    if _signals_usable():
        return _compare(gold, pred, timeout_s)
    return _HELPER.compare(gold, pred, timeout_s)
