"""Masked per-token RL/SFT loss and its derivative, plain torch (the spec and the CPU path).

Per token t (all inputs [T]; log-probs fp32 of the sampled token o_t), before the aggregation weight:

* kind 0, GRPO (PPO-clip surrogate + optional reference KL):
      r   = exp(logp - old_logp)
      l   = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) + beta * KLref(logp, ref_logp)
      KLref: k1 = logp - ref;  k2 = 1/2 (logp - ref)^2;  k3 = exp(ref - logp) - (ref - logp) - 1
      clipped_t = clip(r) * A < r * A  (the clipped branch is the active minimum; its gradient is 0).
      The beta term is added only when ``ref_logp`` is given and beta != 0.
* kind 1, inter-expert KL: ``old_logp`` holds the stop-gradient teacher log pi(o_t | P+), ``logp`` the student
  log pi(o_t | P-). k1: l = old_logp - logp.  k3: with d = logp - old_logp, l = exp(d) - 1 - d
  (the k3 sample estimate of KL(pi(.|P+) || pi(.|P-)) under samples from P+). Gradient flows through logp only.
* kind 2, SFT: l = -logp.
* any other kind value: l = 0.

Returned per-token loss is  w_t * l_t  with  w_t = weight_t * mask_t  (``weight`` already carries the global
normaliser and the lambda coefficients), so the total loss is its sum. Tokens with w_t = 0 give exactly 0 loss
and 0 gradient, whatever their (possibly non-finite) inputs. dL/dlogp is computed analytically in the same pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

REF_KL_CODES = {"k1": 1, "k2": 2, "k3": 3}
KL_ESTIMATOR_CODES = {"k1": 1, "k3": 3}
KIND_GRPO, KIND_KL, KIND_SFT = 0, 1, 2


@dataclass
class TokenLossInputs:
    """Everything the per-token loss needs besides ``logp`` (all tensors [T], same device as logp).

    old_logp: fp32, log-prob under the rollout policy (GRPO) or the teacher branch P+ (KL); ignored for SFT.
    advantages: fp32 A_t (GRPO tokens).
    kind: int8, 0 = GRPO, 1 = inter-expert KL, 2 = SFT.
    mask: bool / int / float, 0 drops the token.
    weight: fp32 aggregation weight (global normaliser and lambda coefficients folded in).
    ref_logp: optional fp32 log-prob under the frozen reference (GRPO KL term).
    """

    old_logp: torch.Tensor
    advantages: torch.Tensor
    kind: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor
    ref_logp: torch.Tensor | None = None
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    ref_kl: str = "k3"
    kl_estimator: str = "k1"

    def __post_init__(self):
        if self.ref_kl not in REF_KL_CODES:
            raise ValueError(f"ref_kl must be one of {sorted(REF_KL_CODES)}, got {self.ref_kl!r}")
        if self.kl_estimator not in KL_ESTIMATOR_CODES:
            raise ValueError(f"kl_estimator must be one of {sorted(KL_ESTIMATOR_CODES)}, got {self.kl_estimator!r}")

    @property
    def use_ref(self) -> bool:
        return self.ref_logp is not None and self.beta != 0.0

    def flat(self) -> "TokenLossInputs":
        """The same inputs with every tensor flattened to [T]."""
        ref = None if self.ref_logp is None else self.ref_logp.reshape(-1)
        return TokenLossInputs(self.old_logp.reshape(-1), self.advantages.reshape(-1), self.kind.reshape(-1),
                               self.mask.reshape(-1), self.weight.reshape(-1), ref, self.eps_low, self.eps_high,
                               self.beta, self.ref_kl, self.kl_estimator)


def token_loss_forward(logp: torch.Tensor, x: TokenLossInputs):
    """Per-token loss, dL/dlogp and the clip indicator (no autograd).

    logp: fp32 [T].  Returns (loss [T] fp32 = w*l, dloss_dlogp [T] fp32 = w*dl/dlogp, clipped [T] bool).
    """
    logp = logp.float()
    w = x.weight.float() * x.mask.float()
    active = w != 0
    kind = x.kind
    adv = x.advantages.float()
    d_old = logp - x.old_logp.float()

    # GRPO surrogate.
    ratio = torch.exp(d_old)
    ratio_clipped = ratio.clamp(1.0 - x.eps_low, 1.0 + x.eps_high)
    s1, s2 = ratio * adv, ratio_clipped * adv
    clipped = s2 < s1
    l_pg = -torch.minimum(s1, s2)
    g_pg = torch.where(clipped, torch.zeros_like(s1), -s1)
    if x.use_ref:
        delta = logp - x.ref_logp.float()
        if x.ref_kl == "k1":
            kl, g_kl_ref = delta, torch.ones_like(delta)
        elif x.ref_kl == "k2":
            kl, g_kl_ref = 0.5 * delta * delta, delta
        else:
            e = torch.exp(-delta)
            kl, g_kl_ref = e + delta - 1.0, 1.0 - e
        l_pg = l_pg + x.beta * kl
        g_pg = g_pg + x.beta * g_kl_ref

    # Inter-expert KL.
    if x.kl_estimator == "k1":
        l_kl, g_kl = -d_old, torch.full_like(d_old, -1.0)
    else:
        e = torch.exp(d_old)
        l_kl, g_kl = e - 1.0 - d_old, e - 1.0

    zero = torch.zeros_like(logp)
    is_pg, is_kl, is_sft = kind == KIND_GRPO, kind == KIND_KL, kind == KIND_SFT
    l = torch.where(is_pg, l_pg, torch.where(is_kl, l_kl, torch.where(is_sft, -logp, zero)))
    g = torch.where(is_pg, g_pg, torch.where(is_kl, g_kl, torch.where(is_sft, -torch.ones_like(logp), zero)))
    loss = torch.where(active, w * l, zero)
    grad = torch.where(active, w * g, zero)
    return loss, grad, clipped & is_pg & active
