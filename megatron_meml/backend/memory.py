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


def peak_memory_bytes() -> float:
    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def peak_memory_gib() -> float:
    return peak_memory_bytes() / GiB
