"""Run in fresh processes (tests/distributed/launcher.spawn): build a small model + optimizer on the CPU, take one
optimizer step, and report the bytes of the tensor storages it created, by role."""
from __future__ import annotations

import gc
from typing import Dict, List


def _storages(tensors) -> Dict[int, int]:
    """{storage data_ptr: nbytes} of the given tensors (views of one buffer counted once)."""
    out = {}
    for t in tensors:
        s = t.untyped_storage()
        if s.nbytes():
            out[s.data_ptr()] = s.nbytes()
    return out


def _live() -> Dict[int, int]:
    import torch

    gc.collect()
    return _storages(o for o in gc.get_objects() if isinstance(o, torch.Tensor))


def measure_many(cases: List[List[str]]) -> List[Dict[str, float]]:
    """:func:`measure_state_bytes` for each override list in turn, in this process."""
    return [measure_state_bytes(c) for c in cases]


def measure_state_bytes(overrides: List[str]) -> Dict[str, float]:
    """Bytes after one optimizer step: model params, DDP grad buffers, optimizer states (fp32 main params + Adam
    moments), and every live tensor storage the garbage collector finds that did not exist before the model was
    built (the whole static training state; leftovers of an earlier case in this process are excluded)."""
    import torch

    from megatron_meml.backend.train import model as M, optimizer as O
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.backend.train.step import forward_backward
    from megatron_meml.config import load_config
    from megatron_meml.types import MicroBatch

    cfg = load_config(None, overrides)
    before = _live()
    p = cfg.parallel
    info = parallel.initialize(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, seed=cfg.seed)
    chunks = M.build_model(cfg)
    optimizer, scheduler = O.build_optimizer(cfg, chunks, total_steps=2)
    b, s = cfg.data.micro_batch_size, cfg.data.seq_length
    g = torch.Generator().manual_seed(info.dp_rank)
    tokens = torch.randint(0, cfg.model.vocab_size, (b, s), generator=g)
    ones = torch.ones(b, s)
    mb = MicroBatch(tokens=tokens, loss_mask=ones, kind=torch.zeros(b, s, dtype=torch.int8), weight=ones / ones.sum())

    def loss_fn(logp, mb):
        return -(logp * mb.weight * mb.loss_mask).sum(), {}

    O.zero_grads(chunks, optimizer)
    forward_backward(chunks, [mb], loss_fn)
    updated, _ = O.optimizer_step(optimizer, scheduler)
    del mb, tokens, ones
    gc.collect()

    params = [q for c in chunks for q in c.parameters()]
    grads = [buf.grad_data for c in chunks for buf in c.buffers]
    opt_tensors = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        for st in inner.state.values():
            opt_tensors += [v for v in st.values() if isinstance(v, torch.Tensor)]
        opt_tensors += [q for grp in inner.param_groups for q in grp["params"]]  # fp32 main params (or views)
    param_st, grad_st, opt_st = _storages(params), _storages(grads), _storages(opt_tensors)
    opt_only = {k: v for k, v in opt_st.items() if k not in param_st and k not in grad_st}
    live = {k: v for k, v in _live().items() if k not in before}
    return {"updated": bool(updated), "params": M.count_parameters(M.unwrap(chunks[0])),
            "param_bytes": sum(param_st.values()), "grad_bytes": sum(grad_st.values()),
            "optimizer_bytes": sum(opt_only.values()), "live_bytes": sum(live.values()),
            "dp": info.dp_size}


ACT_SHAPE = ["model.hidden_size=96", "model.kv_channels=32", "model.num_attention_heads=4", "model.num_query_groups=2",
             "model.ffn_hidden_size=200", "model.vocab_size=1000", "model.max_position_embeddings=256"]


def _sft_microbatch(cfg, b: int, s: int):
    import torch

    from megatron_meml.types import MicroBatch, TokenKind

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (b, s), generator=g)
    mask = torch.ones(b, s)
    return MicroBatch(tokens=tokens, loss_mask=mask, weight=mask / mask.sum(),
                      kind=torch.full((b, s), int(TokenKind.SFT), dtype=torch.int8))


def saved_and_flops(overrides: List[str], b: int, s: int) -> Dict[str, float]:
    """One forward-backward of an SFT microbatch [b, s]: bytes of the distinct non-parameter tensor storages autograd
    saves during the forward (until the loss is computed; recomputation in the backward is not the forward's), and
    the matmul FLOPs of the whole forward + backward (torch's FlopCounterMode: mm / addmm / bmm; the CPU flash SDPA
    kernel is not counted, megatron's unfused attention is)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from megatron_meml.algo.objective import SFTObjective
    from megatron_meml.backend.train import model as M
    from megatron_meml.backend.train.step import forward_backward
    from megatron_meml.config import load_config

    cfg = load_config(None, ACT_SHAPE + list(overrides))
    chunks = M.build_model(cfg)
    params = {p.untyped_storage().data_ptr() for p in chunks[0].parameters()}
    saved: Dict[int, int] = {}
    done: List[bool] = []

    def pack(t):
        st = t.untyped_storage()
        if not done and st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    class Marked(SFTObjective):  # marks the end of the forward (the loss is its last op)
        def reduce(self, *args):
            done.append(True)
            return super().reduce(*args)

    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward_backward(chunks, [_sft_microbatch(cfg, b, s)], Marked(impl="torch"))
    return {"saved": float(sum(saved.values())), "flops": float(counter.get_total_flops())}


def measure_activations(cases: Dict[str, List[str]], b: int, s: int) -> Dict[str, Dict[str, float]]:
    """:func:`saved_and_flops` for each named override list, in this process."""
    from megatron_meml.backend.runtime import parallel

    parallel.initialize(1, 1, seed=1)
    return {k: saved_and_flops(v, b, s) for k, v in cases.items()}
