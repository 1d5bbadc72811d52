"""megatron-core optimizer (Adam; the distributed optimizer shards its state over DP) and the LR schedule
(linear warmup, then constant / linear / cosine decay)."""
from __future__ import annotations

from typing import List, Optional

import torch

from ...config.schema import Config
from ..runtime import compat
from .model import params_dtype


def build_optimizer(cfg: Config, chunks: List[torch.nn.Module], lr: Optional[float] = None,
                    total_steps: int = 1):
    """(optimizer, scheduler) for the model chunks. ``lr`` overrides ``optimizer.lr`` (stages have their own LR);
    ``total_steps`` is the decay horizon."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = cfg.optimizer
    peak = lr if lr is not None else o.lr
    dtype = params_dtype(cfg)
    ocfg = OptimizerConfig(
        optimizer="adam", lr=peak, min_lr=min(o.min_lr, peak), weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        **compat.filter_kwargs(OptimizerConfig, fp8_recipe="delayed" if cfg.precision.fp8 else None))
    optimizer = get_megatron_optimizer(ocfg, chunks)
    _leaf_fp32_shards(optimizer)
    warm = min(o.lr_warmup_steps, max(total_steps - 1, 0))
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warm else peak, max_lr=peak, min_lr=min(o.min_lr, peak),
        lr_warmup_steps=warm, lr_decay_steps=max(total_steps, warm + 1),
        lr_decay_style=o.lr_decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
        wd_incr_steps=max(total_steps, 1), wd_incr_style="constant")
    return optimizer, scheduler


def _leaf_fp32_shards(optimizer) -> None:
    """Make the distributed optimizer's fp32 shard params leaf tensors. megatron steps fp32 model params through
    ``model_param.view(-1)[start:end]`` views, which carry the model param's autograd history (non-leaf), so its
    own ``zero_grad`` reads ``.grad`` of a non-leaf tensor and torch warns on every run. A ``detach()``-ed view
    shares the same storage (updates still land in the model param) without that history; the tensor-parallel
    attributes megatron copied onto the view come along. Only before the first step (the optimizer state is
    keyed by these objects); a no-op for other optimizers and for the precision-aware one."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        groups = getattr(opt, "shard_fp32_groups", None)
        cfg = getattr(opt, "config", None)
        if not groups or getattr(cfg, "use_precision_aware_optimizer_no_fp8_or_ds_fp8",
                                 getattr(cfg, "use_precision_aware_optimizer", False)):
            continue
        swap = {}
        for group in groups:
            for i, shard in enumerate(group):
                if shard is None or shard.is_leaf:
                    continue
                leaf = shard.detach()
                for attr in ("tensor_model_parallel", "partition_dim", "partition_stride", "shared"):
                    if hasattr(shard, attr):
                        setattr(leaf, attr, getattr(shard, attr))
                swap[id(shard)] = leaf
                group[i] = leaf
        for pg in opt.optimizer.param_groups:
            pg["params"] = [swap.get(id(p), p) for p in pg["params"]]


def zero_grads(chunks: List[torch.nn.Module], optimizer) -> None:
    for c in chunks:
        c.zero_grad_buffer()
    optimizer.zero_grad()


def optimizer_step(optimizer, scheduler):
    """One update. Returns (updated: bool, grad_norm: float | None). A non-finite grad norm skips the update."""
    updated, grad_norm, _ = optimizer.step()
    if updated:
        scheduler.step(increment=1)
    return bool(updated), (None if grad_norm is None else float(grad_norm))


def grads_finite(chunks: List[torch.nn.Module]) -> bool:
    """True when every DDP grad buffer is finite on *every* rank (one all-reduce); checked before the optimizer
    step so a NaN/inf step can be skipped without touching the weights."""
    import torch.distributed as dist

    ok = all(bool(torch.isfinite(buf.grad_data).all()) for c in chunks for buf in c.buffers)
    flag = torch.tensor([0 if ok else 1], dtype=torch.int32,
                        device="cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu")
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return not bool(flag.item())
