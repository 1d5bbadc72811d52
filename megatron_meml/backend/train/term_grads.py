"""Per-term gradient norms of a RIEL step (GRPO, inter-expert KL, SFT) at no extra forward or backward.

The RIEL loss is a sum of per-token terms, L = L_GRPO + λ1·L_KL + λ2·L_SFT, and every row of the step belongs to
exactly one term (``TokenKind``). Its gradient is therefore the sum of the gradients of three disjoint sets of rows:

    g = g_GRPO + g_KL + g_SFT,       g_k = ∇ Σ_{rows of kind k} Σ_t w_t·l_t

When the scheduler packs each kind into its own microbatches (``RielScheduler.step(split_terms=True)``),
:func:`forward_backward_by_term` runs one forward-backward per kind: after pass k the DDP grad buffers hold g_k,
fully reduced over data parallelism (megatron's ``finalize_model_grads`` runs at the end of every pass), and its
norm is read with the optimizer's own grad-norm routine (``prepare_grads`` + ``get_grad_norm``: tensor-parallel
duplicates and shared embeddings counted once, the distributed optimizer's shards combined), i.e. exactly the
number ``optimizer.step`` would report for that term alone, before clipping. The reduced g_k are summed into the
buffers, and the optimizer step that follows sees g.

Cost against the usual single pass: no extra forward or backward (each row is processed once); one copy of the
grad buffers; one DP gradient reduction and one pipeline fill/drain per term instead of one; and rows of different
terms no longer share a prompt row (a KL row under P− and E−'s rollouts hold the prompt twice). On the quickstart
this is within run-to-run noise; at scale the extra reductions are what ``riel.grad_norm_interval`` > 1 saves.
Separate *backward* passes per term on one forward (retain_graph) would triple the backward instead.

The summed gradient equals the single-pass gradient up to float summation order (tests/unit/backend: 1e-6).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from ...types import MicroBatch, TokenKind
from .step import LossFn, forward_backward


def _grad_buffers(chunks) -> List[torch.Tensor]:
    out = []
    for c in chunks:
        for buf in list(getattr(c, "buffers", [])) + list(getattr(c, "expert_parallel_buffers", [])):
            out.append(buf.grad_data)
    return out


@torch.no_grad()
def reduced_grad_norm(optimizer) -> float:
    """The global L2 norm of the gradient now in the DDP buffers (after a pass's DP reduction), computed by the
    megatron optimizer exactly as its step would (before clipping)."""
    optimizer.prepare_grads()
    return float(optimizer.get_grad_norm())


def forward_backward_by_term(chunks, optimizer, terms: Sequence[Tuple[TokenKind, List[MicroBatch]]],
                             loss_fn: LossFn, temperature: float = 1.0
                             ) -> Tuple[List[Dict[str, float]], Dict[str, float]]:
    """One forward-backward per term; returns (per-microbatch metrics of all passes, ``{term: grad norm}``) with
    ``term`` in grpo | kl | sft (0.0 for a term without rows) and leaves g = Σ_k g_k in the grad buffers.
    Every rank must pass the same kinds in the same order (``RielScheduler.step`` guarantees it)."""
    norms = {k.name.lower(): 0.0 for k in TokenKind}
    results: List[Dict[str, float]] = []
    total = None
    for kind, mbs in terms:
        for c in chunks:
            c.zero_grad_buffer()
        results += forward_backward(chunks, mbs, loss_fn, temperature=temperature)
        norms[kind.name.lower()] = reduced_grad_norm(optimizer)
        bufs = _grad_buffers(chunks)
        if total is None:
            total = [b.clone() for b in bufs]
        else:
            for t, b in zip(total, bufs):
                t.add_(b)
    if total is not None:
        for b, t in zip(_grad_buffers(chunks), total):
            b.copy_(t)
    return results, norms
