"""Run a function on N local processes (gloo), the way torchrun would: RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT are set per process. Each rank's return value comes back through a file."""
from __future__ import annotations

import importlib
import os
import tempfile
import traceback
from typing import Any, Dict, List

import torch
import torch.multiprocessing as mp
from megatron_meml.backend.runtime.parallel import free_port




def _child(rank: int, world: int, port: int, target: str, kwargs: Dict[str, Any], outdir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    mod, fn = target.split(":")
    try:
        result = getattr(importlib.import_module(mod), fn)(**kwargs)
        torch.save({"ok": True, "result": result}, os.path.join(outdir, f"{rank}.pt"))
    except Exception:
        torch.save({"ok": False, "error": traceback.format_exc()}, os.path.join(outdir, f"{rank}.pt"))
        raise
    finally:
        from megatron_meml.backend.runtime import parallel

        parallel.destroy()


def spawn(target: str, world_size: int, timeout: float = 600, **kwargs) -> List[Any]:
    """Call ``module:function(**kwargs)`` on ``world_size`` processes; returns the per-rank results."""
    with tempfile.TemporaryDirectory() as d:
        ctx = mp.start_processes(_child, args=(world_size, free_port(), target, kwargs, d), nprocs=world_size,
                                 join=False, start_method="spawn")
        while not ctx.join(timeout=timeout):
            pass
        out = []
        for r in range(world_size):
            rec = torch.load(os.path.join(d, f"{r}.pt"), weights_only=False)
            if not rec["ok"]:
                raise RuntimeError(f"rank {r} failed:\n{rec['error']}")
            out.append(rec["result"])
        return out
