"""The RIEL objective of one microbatch: L = L_GRPO + λ1·L_KL + λ2·L_SFT as one sum of per-token terms.

Per target-aligned token t (see ``megatron_meml.types``) with kind k_t, mask m_t and aggregation weight w_t (which
already holds the global normaliser and λ1 / λ2 — ``rollout/packing.assign_weights``):

    GRPO: l_t = −min(r_t·A_t, clip(r_t, 1−ε_low, 1+ε_high)·A_t) + β·KL_ref(t),   r_t = exp(logπθ − logπ_old)
    KL:   l_t = stopgrad(log π(o_t|q,P+)) − log π(o_t|q,P−)        (k1; k3: e^{d} − 1 − d, d = logπ(P−) − logπ(P+))
    SFT:  l_t = −log π(y_t | q, P_e, y_<t)
    loss  = Σ_t w_t · m_t · l_t

The arithmetic (and dL/dlogp in the same pass) is ``meml_kernels.token_loss``; this wrapper adds the metrics:
each term's share of the loss and the GRPO clip fraction.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from meml_kernels.token_loss import token_loss

from ..types import MicroBatch, TokenKind


def riel_loss(logp: torch.Tensor, mb: MicroBatch, riel_cfg, impl: str = "auto") -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(scalar loss, metrics) of one microbatch. ``logp`` [B, S] fp32 with grad; ``mb`` tensors [B, S]."""
    zeros = torch.zeros_like(logp)
    out = token_loss(logp, mb.old_logp if mb.old_logp is not None else zeros,
                     mb.advantages if mb.advantages is not None else zeros, mb.kind.to(torch.int8),
                     mb.loss_mask, mb.weight, ref_logp=mb.ref_logp if riel_cfg.beta_ref > 0 else None,
                     eps_low=riel_cfg.eps_low, eps_high=riel_cfg.eps_high, beta=riel_cfg.beta_ref,
                     ref_kl=riel_cfg.ref_kl_estimator, kl_estimator=riel_cfg.kl_estimator, impl=impl)
    per_token = out.loss.detach()
    metrics: Dict[str, torch.Tensor] = {}
    active = mb.loss_mask > 0
    for kind in TokenKind:
        sel = (mb.kind == int(kind)) & active
        metrics[f"loss/{kind.name.lower()}"] = per_token[sel].sum()
        metrics[f"count/{kind.name.lower()}"] = sel.sum().float()
    grpo = (mb.kind == int(TokenKind.GRPO)) & active
    metrics["count/clipped"] = (out.clipped & grpo).sum().float()
    return out.loss.sum(), metrics
