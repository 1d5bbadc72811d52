"""Choosing between the Triton kernels and their plain-torch twins.

Rule (the same for every op, ``impl`` argument of the public functions):
  * ``impl="torch"``  -> the torch twin (``reference.py``), always available.
  * ``impl="auto"``   -> Triton when every tensor is on CUDA and ``triton`` imports, else torch.
  * ``impl="triton"`` -> Triton on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` is set (the
    interpreter: correctness only, ~400x slower than torch); an error otherwise.
So the package's default CPU path is the torch twin; the interpreter is only used when a caller (a test) asks.
"""
from __future__ import annotations

import functools
import os

import torch

IMPLS = ("auto", "triton", "torch")


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_impl(impl: str, *tensors: torch.Tensor | None) -> str:
    """Return ``"triton"`` or ``"torch"`` for ``impl`` and the tensors of one call (``None`` entries are skipped)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    if on_cuda and triton_available():
        return "triton"
    if impl == "auto":
        return "torch"
    if interpreting() and triton_available() and not any(t.is_cuda for t in present):
        return "triton"
    raise RuntimeError(
        "impl='triton' needs CUDA tensors with triton installed, or CPU tensors with TRITON_INTERPRET=1 set "
        f"before triton is imported (triton importable: {triton_available()}, "
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}, devices: {sorted({str(t.device) for t in present})})"
    )
