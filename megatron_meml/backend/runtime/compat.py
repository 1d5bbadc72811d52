"""Small compatibility layer over megatron-core 0.16 (Python 3.11 CPU dev) and 0.19 (GPU image), plus the optional
accelerators (Transformer Engine, apex). Every version-dependent call site goes through here."""
from __future__ import annotations

import functools
import importlib.util
import inspect
import warnings

from packaging.version import Version

LIBRARY_NOTES = (r".*Apex is not installed.*", r".*Transformer Engine.*not installed.*",
                 r".*is deprecated\. Please use `torch\.distributed\..*", r".*full scope is deprecated.*")


def quiet_library_notes() -> None:
    """Silence the notes megatron-core and torch print on every import or step that say nothing actionable about a
    run: "no Apex / Transformer Engine, falling back to torch" (expected on CPU and in images without them),
    torch's collective-rename deprecations inside megatron, and megatron's cuda-graph-scope default. Called by the
    entry point and the tools (each warning would otherwise print once per process, i.e. once per rank)."""
    for pattern in LIBRARY_NOTES:
        warnings.filterwarnings("ignore", message=pattern)


@functools.lru_cache(None)
def megatron_version() -> Version:
    from megatron.core import package_info

    return Version(package_info.__version__)


@functools.lru_cache(None)
def have_te() -> bool:
    """Transformer Engine imports (it fails on a machine without CUDA libraries)."""
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
        return True
    except Exception:  # ImportError, OSError (cudnn missing), RuntimeError
        return False


def fp8_kwargs(precision) -> dict:
    """TransformerConfig FP8 fields for ``precision.fp8`` (hybrid | e4m3 | null), delayed scaling recipe."""
    if precision.fp8 is None:
        return {}
    return dict(fp8=precision.fp8, fp8_recipe="delayed", fp8_margin=precision.fp8_margin,
                fp8_amax_history_len=precision.fp8_amax_history_len,
                fp8_amax_compute_algo=precision.fp8_amax_compute_algo)


def accepts(fn, name: str) -> bool:
    """True when callable ``fn`` takes a parameter called ``name`` (used to bridge signature drift)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def filter_kwargs(fn, **kwargs) -> dict:
    """Keep only the keyword arguments ``fn`` accepts (fields added/removed between 0.16 and 0.19)."""
    return {k: v for k, v in kwargs.items() if accepts(fn, k)}
