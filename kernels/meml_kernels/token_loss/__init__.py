"""Masked per-token loss (GRPO surrogate + reference KL, inter-expert KL, SFT) with dL/dlogp in the same pass.

    out = token_loss(logp, old_logp, advantages, kind, mask, weight, ref_logp=None,
                     eps_low=0.2, eps_high=0.2, beta=0.0, ref_kl="k3", kl_estimator="k1", impl="auto")
    out.loss.sum().backward()      # total loss = sum_t weight_t mask_t l_t ; gradient reaches logp only
    clip_fraction = out.clipped.sum() / (kind == 0 & mask).sum()

Formulas: ``reference.py``. The same epilogue runs inside the fused log-prob ops (``meml_kernels.logprobs``,
``meml_kernels.linear_logprobs``) via ``loss=TokenLossInputs(...)``, keeping only O(T) state for the backward.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._dispatch import resolve_impl
from . import reference
from .reference import KIND_GRPO, KIND_KL, KIND_SFT, TokenLossInputs

__all__ = ["token_loss", "token_loss_forward", "TokenLossInputs", "TokenLossOutput",
           "KIND_GRPO", "KIND_KL", "KIND_SFT"]


class TokenLossOutput(NamedTuple):
    loss: torch.Tensor      # fp32, shape of logp: weight * mask * l (sum it for the total loss)
    clipped: torch.Tensor   # bool, shape of logp: GRPO token whose clipped branch is active (clip-fraction metric)


def token_loss_forward(logp: torch.Tensor, inputs: TokenLossInputs, impl: str = "auto"):
    """No-autograd kernel call on flattened [T] tensors: (loss [T], dloss_dlogp [T], clipped [T] bool)."""
    x = inputs.flat()
    logp = logp.reshape(-1)
    if resolve_impl(impl, logp, x.old_logp, x.advantages, x.kind, x.mask, x.weight) == "triton":
        from . import triton_impl
        return triton_impl.token_loss_forward(logp, x)
    return reference.token_loss_forward(logp, x)


class _TokenLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, inputs, impl):
        loss, grad, clipped = token_loss_forward(logp.detach(), inputs, impl)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(clipped)
        return loss, clipped

    @staticmethod
    def backward(ctx, grad_loss, _grad_clipped):
        (grad,) = ctx.saved_tensors
        return grad_loss.reshape(-1) * grad, None, None


def token_loss(logp, old_logp, advantages, kind, mask, weight, *, ref_logp=None, eps_low=0.2, eps_high=0.2,
               beta=0.0, ref_kl="k3", kl_estimator="k1", impl="auto") -> TokenLossOutput:
    """Per-token loss with autograd through ``logp`` (any shape; every other tensor has the same shape).

    Returns TokenLossOutput(loss fp32 [shape], clipped bool [shape]). See ``reference.py`` for the formulas.
    """
    inputs = TokenLossInputs(old_logp, advantages, kind, mask, weight, ref_logp, eps_low, eps_high, beta,
                             ref_kl, kl_estimator)
    loss, clipped = _TokenLossFunction.apply(logp.reshape(-1), inputs, impl)
    return TokenLossOutput(loss.view(logp.shape), clipped.view(logp.shape))
