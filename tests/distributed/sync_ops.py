"""A ``TorchDispatchMode`` that records the aten ops which force a device-to-host synchronisation on CUDA -- the
ops a CUDA-graph capture refuses (``cudaErrorStreamCaptureUnsupported``) or silently bakes a host value into.
It runs on the CPU: the op and its arguments are what decide, not the device.

Recorded: ``nonzero``, ``item`` / ``_local_scalar_dense``, ``is_nonzero``, ``equal``, ``masked_select``,
``unique`` (all variants), ``index`` / ``index_put`` with a bool or uint8 index tensor (both call ``nonzero``),
``repeat_interleave`` of a repeats tensor without ``output_size`` (it reads the total length back), and
``tolist``-style host reads that surface as ``_local_scalar_dense``."""
from __future__ import annotations

import traceback
from typing import List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
ALWAYS = {aten.nonzero, aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal, aten.masked_select,
          aten.unique_dim, aten.unique_consecutive, aten._unique, aten._unique2, aten.unique_dim_consecutive}
INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_, aten._unsafe_index_put}


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def forces_sync(func, args, kwargs) -> bool:
    packet = func.overloadpacket
    if packet in ALWAYS:
        return True
    if packet in INDEXING:
        return _bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
    if packet is aten.repeat_interleave:
        repeats = args[1] if len(args) > 1 else (args[0] if len(args) == 1 else kwargs.get("repeats"))
        out_size = kwargs.get("output_size", args[3] if len(args) > 3 else None)
        return isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and out_size is None
    return False


class SyncOpRecorder(TorchDispatchMode):
    """``with SyncOpRecorder() as rec: ...`` -> ``rec.found``: [(op name, the innermost caller outside torch)]."""

    def __init__(self):
        super().__init__()
        self.found: List[Tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if forces_sync(func, args, kwargs):
            where = next((f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in
                          reversed(traceback.extract_stack()[:-1])
                          if not any(x in f.filename for x in ("/torch/", "sync_ops.py", "cpu_runtime.py"))), "?")
            self.found.append((str(func), where))
        return func(*args, **kwargs)
