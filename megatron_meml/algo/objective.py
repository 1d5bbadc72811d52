"""The RIEL objective of one microbatch: L = L_GRPO + λ1·L_KL + λ2·L_SFT as one sum of per-token terms.

Per target-aligned token t (see ``megatron_meml.types``) with kind k_t, mask m_t and aggregation weight w_t (which
already holds the global normaliser and λ1 / λ2 — ``rollout/packing.assign_weights``):

    GRPO: l_t = −min(r_t·A_t, clip(r_t, 1−ε_low, 1+ε_high)·A_t) + β·KL_ref(t),   r_t = exp(logπθ − logπ_old)
    KL:   l_t = stopgrad(log π(o_t|q,P+)) − log π(o_t|q,P−)        (k1; k3: e^{d} − 1 − d, d = logπ(P−) − logπ(P+))
    SFT:  l_t = −log π(y_t | q, P_e, y_<t)
    loss  = Σ_t w_t · m_t · l_t

The arithmetic (and dL/dlogp in the same pass) is ``meml_kernels.token_loss``; this module adds the metrics: each
term's share of the loss and the GRPO clip fraction.

Two ways to evaluate an objective, same result (``tests/distributed/test_fused_output.py``):
  * ``objective(logp, mb) -> (loss, metrics)``: from per-token log-probs [B, S] (the logits path, and any caller
    that already has log-probs).
  * ``objective.loss_inputs(mb)`` -> ``TokenLossInputs``, handed to the log-prob kernel, which runs the token loss
    as its epilogue (``backend/train/output_layer.py``: straight from hidden states, no logits), then
    ``objective.reduce(per_token_loss, clipped, mb) -> (loss, metrics)``.
``backend.train.step.forward_backward`` takes the second way for any loss function that has ``loss_inputs``
(:class:`TokenObjective`), the first for plain callables.

Scale of the terms (the paper fixes λ1 = λ2 = 1 but not the normalisers; decided here, measured with the per-term
gradient norms of ``backend/train/term_grads.py`` on the quickstart, grad_norm/{grpo,kl,sft} in metrics.jsonl):
  * The GRPO gradient is small by construction: advantages sum to zero in every group, so the per-token pushes
    largely cancel (quickstart: 0.1-0.5). The k1 KL gradient is −∇log π(O+ | P−), supervised learning on E+'s
    answers, with no cancellation; the SFT gradient likewise.
  * Normalised over its own tokens (``riel.kl_normalizer=own``) the KL term had the weight of
    the whole GRPO term although it lives on a few rows: at λ1 = 1 its gradient was ~30x GRPO's (8.4 vs 0.27) and
    after clipping GRPO was ~12% of the update; a λ1 sweep on v1 peaked at λ1 = 0.01.
  * ``riel.kl_normalizer=grpo`` (default) divides KL tokens by the GRPO population: a KL row counts like one more
    rollout of E− whose advantage is λ1 on every token. Measured on the v2 quickstart at λ1 = 1: KL 1.0-2.6 vs GRPO
    0.1-0.5 in the first 20 steps (the experts disagree most), 0.1-0.8 vs 0.1-0.5 after step 40 (the pull fades
    as E− learns O+). λ1 keeps its meaning as a relative weight and needs no recalibration per batch shape.
  * The buffer's SFT term at the paper's normalisation (``riel.sft_normalizer=own``: token-mean over the fired
    examples, λ2 = 1) measured 2.4-10 when it fires (B = 16 every ~3 steps), i.e. those steps are SFT steps.
  * The quickstart runs at λ1 = 0.3 (the library default stays the paper's 1): with the 0.47M-parameter model the
    KL's gradient at λ1 = 1 was ~7x GRPO's in the first 10 steps (1.0-1.4 vs 0.1-0.2) and one seed's reward dipped
    for 15 steps while E− switched methods (mean reward 0.42 at steps 20-30); at 0.3 the dip was shallower (0.49)
    with the pull intact (KL loss 0.12 -> 0.01 by step 18), and gone once MEF trained the experts well. Averaging
    the buffer's SFT like GRPO rollouts (``riel.sft_normalizer=grpo``) did not remove it.
The λ1 / normaliser choices and their effect on accuracy: docs/objective.md, and the ablation
(``python -m megatron_meml.ablate``) in benchmarks/ablation_cpu_20261130.md.
"""
from __future__ import annotations

from typing import Dict, Protocol, Tuple, runtime_checkable

import torch
from meml_kernels.token_loss import TokenLossInputs, token_loss

from ..types import MicroBatch, TokenKind

Metrics = Dict[str, torch.Tensor]


@runtime_checkable
class TokenObjective(Protocol):
    """A loss that is a weighted sum of per-token ``meml_kernels.token_loss`` terms (fusable into the kernel)."""

    def loss_inputs(self, mb: MicroBatch) -> TokenLossInputs: ...

    def reduce(self, per_token: torch.Tensor, clipped: torch.Tensor, mb: MicroBatch) -> Tuple[torch.Tensor, Metrics]: ...

    def __call__(self, logp: torch.Tensor, mb: MicroBatch) -> Tuple[torch.Tensor, Metrics]: ...


class _TokenObjectiveBase:
    impl: str = "auto"

    def __call__(self, logp: torch.Tensor, mb: MicroBatch) -> Tuple[torch.Tensor, Metrics]:
        """(scalar loss, metrics) from ``logp`` [B, S] fp32 with grad."""
        x = self.loss_inputs(mb)
        out = token_loss(logp, x.old_logp, x.advantages, x.kind, x.mask, x.weight, ref_logp=x.ref_logp,
                         eps_low=x.eps_low, eps_high=x.eps_high, beta=x.beta, ref_kl=x.ref_kl,
                         kl_estimator=x.kl_estimator, impl=self.impl)
        return self.reduce(out.loss, out.clipped, mb)


class RielObjective(_TokenObjectiveBase):
    """GRPO + inter-expert KL + SFT of RIEL (module docstring); metrics loss/<kind>, count/<kind>, count/clipped."""

    def __init__(self, riel_cfg, impl: str = "auto"):
        self.cfg, self.impl = riel_cfg, impl

    def loss_inputs(self, mb: MicroBatch) -> TokenLossInputs:
        c = self.cfg
        zeros = torch.zeros(mb.tokens.shape, dtype=torch.float32, device=mb.tokens.device)
        return TokenLossInputs(mb.old_logp if mb.old_logp is not None else zeros,
                               mb.advantages if mb.advantages is not None else zeros, mb.kind.to(torch.int8),
                               mb.loss_mask, mb.weight, mb.ref_logp if c.beta_ref > 0 else None,
                               c.eps_low, c.eps_high, c.beta_ref, c.ref_kl_estimator, c.kl_estimator)

    def reduce(self, per_token: torch.Tensor, clipped: torch.Tensor, mb: MicroBatch) -> Tuple[torch.Tensor, Metrics]:
        per = per_token.detach()
        metrics: Metrics = {}
        active = mb.loss_mask > 0
        for kind in TokenKind:
            sel = (mb.kind == int(kind)) & active
            metrics[f"loss/{kind.name.lower()}"] = per[sel].sum()
            metrics[f"count/{kind.name.lower()}"] = sel.sum().float()
        grpo = (mb.kind == int(TokenKind.GRPO)) & active
        metrics["count/clipped"] = (clipped & grpo).sum().float()
        return per_token.sum(), metrics


class SFTObjective(_TokenObjectiveBase):
    """Σ_t weight_t · mask_t · (−log p_t): token-mean NLL once the weights hold 1 / N_global (MEF, and the SFT
    microbatches of tests and tools). Metric ``tokens``: the microbatch's loss tokens."""

    def __init__(self, impl: str = "auto"):
        self.impl = impl

    def loss_inputs(self, mb: MicroBatch) -> TokenLossInputs:
        zeros = torch.zeros(mb.tokens.shape, dtype=torch.float32, device=mb.tokens.device)
        kind = torch.full(mb.tokens.shape, int(TokenKind.SFT), dtype=torch.int8, device=mb.tokens.device)
        return TokenLossInputs(zeros, zeros, kind, mb.loss_mask, mb.weight)

    def reduce(self, per_token: torch.Tensor, clipped: torch.Tensor, mb: MicroBatch) -> Tuple[torch.Tensor, Metrics]:
        return per_token.sum(), {"tokens": mb.loss_mask.sum()}


def riel_loss(logp: torch.Tensor, mb: MicroBatch, riel_cfg, impl: str = "auto") -> Tuple[torch.Tensor, Metrics]:
    """(scalar loss, metrics) of one microbatch. ``logp`` [B, S] fp32 with grad; ``mb`` tensors [B, S]."""
    return RielObjective(riel_cfg, impl)(logp, mb)


sft_loss = SFTObjective()
