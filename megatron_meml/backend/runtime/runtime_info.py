"""What a run actually runs on, in a few lines for the start of the log: the core attention and the kernels it
reaches, which accelerator libraries import (Transformer Engine, apex, flash-attn), and the optimizer class
megatron-core will build. A missing library is not an error here -- it changes which kernels run, and a reader of
the log should not have to guess (e.g. megatron's fused Adam silently becomes ``torch.optim.AdamW`` without TE or
apex)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import List, Optional, Sequence

import torch

from ..train.attention import attention_backend


def library(name: str, dist_name: Optional[str] = None) -> str:
    """``"yes (<version>)"`` when ``name`` imports, ``"no"`` when absent, ``"broken (<error>)"`` when it fails."""
    if importlib.util.find_spec(name) is None:
        return "no"
    try:
        importlib.import_module(name)
    except Exception as e:   # ImportError, OSError (CUDA libraries missing), RuntimeError
        return f"broken ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
    try:
        return f"yes ({importlib.metadata.version(dist_name or name)})"
    except importlib.metadata.PackageNotFoundError:
        return "yes"


def optimizer_class(cfg) -> str:
    """The optimizer ``backend.train.optimizer.build_optimizer`` gets from megatron-core for ``cfg``: the wrapper
    (distributed / mixed-precision / fp32) around the Adam class megatron imported (TE FusedAdam, apex FusedAdam, or
    torch's AdamW when neither imports)."""
    from megatron.core import optimizer as mopt

    inner = f"{mopt.Adam.__module__}.{mopt.Adam.__qualname__}"
    if cfg.parallel.use_distributed_optimizer:
        wrapper = "DistributedOptimizer"
    elif cfg.precision.dtype in ("bf16", "fp16"):
        wrapper = "Float16OptimizerWithFloat16Params"
    else:
        wrapper = "FP32Optimizer"
    return f"{wrapper} over {inner}"


def startup_lines(cfg, chunks: Sequence[torch.nn.Module]) -> List[str]:
    return [f"attention: {attention_backend(chunks)}",
            f"accelerators: transformer_engine {library('transformer_engine', 'transformer-engine')}, "
            f"apex {library('apex')}, flash_attn {library('flash_attn', 'flash-attn')}",
            f"optimizer: {optimizer_class(cfg)}"]
