"""Peak memory of this process for the metrics (``memory/peak_gib``): what the scaling study and the planner
comparison read.

On CUDA: ``torch.cuda.max_memory_allocated`` of the current device (tensors only: no CUDA context, no allocator
cache), since the start of the process. On the CPU: the peak resident set (VmHWM) of the process, which also holds
the interpreter, the libraries and the allocator's free lists -- an upper bound of the tensor memory.
"""
from __future__ import annotations

import resource

import torch

GiB = float(2 ** 30)


def proc_status_bytes(field: str) -> int:
    """A byte count from ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...); KeyError when the field is absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs`` 5); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_peak_rss_bytes() -> int:
    """This process's peak resident set: VmHWM (which :func:`reset_peak_rss` resets), else ``ru_maxrss`` (since
    the start)."""
    try:
        return proc_status_bytes("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory() -> bool:
    """Start a new peak window: CUDA's peak allocator stats, or the CPU's VmHWM; False where it cannot be reset."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    return reset_peak_rss()


def peak_memory_bytes() -> float:
    """Peak bytes since the start (or the last :func:`reset_peak_memory`): tensors on CUDA, the resident set on
    the CPU."""
    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated())
    return float(cpu_peak_rss_bytes())


def peak_memory_gib() -> float:
    return peak_memory_bytes() / GiB
