"""The async (one-step-stale) RIEL objective of algo/async_objective.py on hand-checked tokens."""
import math
from types import SimpleNamespace

import pytest
import torch

from megatron_meml.algo.async_objective import behavior_weights, decoupled_riel_loss
from megatron_meml.algo.objective import riel_loss
from megatron_meml.types import MicroBatch, TokenKind

G, K, S = int(TokenKind.GRPO), int(TokenKind.KL), int(TokenKind.SFT)


def _cfg(cap=2.0, kl_estimator="k1"):
    return SimpleNamespace(eps_low=0.2, eps_high=0.2, beta_ref=0.0, ref_kl_estimator="k3",
                           kl_estimator=kl_estimator, behavior_weight_cap=cap)


def _mb():
    """One row, 6 target slots: 3 GRPO tokens, 1 KL token, 1 SFT token, 1 masked slot."""
    logp = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -0.7, -3.0]])
    # GRPO: behaviour log mu; the pi/mu ratios are e^0.3, e^-0.4 and e^1.5 (the last one above the cap 2)
    old = torch.tensor([[-1.3, -1.6, -2.0, -1.2, 0.0, 0.0]])  # KL slot: the refreshed P+ log-prob (teacher)
    mb = MicroBatch(tokens=torch.zeros(1, 6, dtype=torch.long),
                    loss_mask=torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]]),
                    kind=torch.tensor([[G, G, G, K, S, G]], dtype=torch.int8),
                    weight=torch.tensor([[0.25, 0.25, 0.25, 0.5, 1.0, 0.25]]),
                    advantages=torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.0, 3.0]]), old_logp=old)
    return logp, mb


def test_value_and_gradient_by_hand():
    logp, mb = _mb()
    x = logp.clone().requires_grad_(True)
    loss, metrics = decoupled_riel_loss(x, mb, _cfg(), impl="torch")
    loss.backward()
    w = [math.exp(0.3), math.exp(-0.4), 2.0]  # min(pi/mu, 2)
    a = [0.5, -1.0, 2.0]
    grpo = sum(-0.25 * wi * ai for wi, ai in zip(w, a))  # rho = 1 in value: l = -w A
    kl = 0.5 * (-1.2 - (-1.5))                            # k1: teacher - log pi(P-)
    sft = 1.0 * 0.7                                       # -log pi
    assert loss.item() == pytest.approx(grpo + kl + sft, rel=1e-6)
    want = torch.tensor([[-0.25 * w[0] * a[0], -0.25 * w[1] * a[1], -0.25 * w[2] * a[2], -0.5, -1.0, 0.0]])
    assert torch.allclose(x.grad, want, rtol=1e-6, atol=1e-7)
    assert metrics["count/clipped"].item() == 0  # rho = 1: the clip never binds at the one gradient evaluation
    assert metrics["async/weight"].item() == pytest.approx(sum(w), rel=1e-6)
    assert metrics["async/capped"].item() == 1
    assert metrics["async/log_ratio"].item() == pytest.approx(-0.3 + 0.4 - 1.5, rel=1e-6)


def test_no_cap_keeps_the_full_importance_weight():
    logp, mb = _mb()
    x = logp.clone().requires_grad_(True)
    decoupled_riel_loss(x, mb, _cfg(cap=None), impl="torch")[0].backward()
    assert x.grad[0, 2].item() == pytest.approx(-0.25 * math.exp(1.5) * 2.0, rel=1e-6)


def test_on_policy_reduces_to_the_synchronous_objective():
    """mu = pi_theta (behaviour = current weights): same loss and gradient as the synchronous riel_loss."""
    logp, mb = _mb()
    grpo = mb.kind == G
    mb.old_logp = torch.where(grpo, logp, mb.old_logp)
    x1, x2 = logp.clone().requires_grad_(True), logp.clone().requires_grad_(True)
    l1, _ = decoupled_riel_loss(x1, mb, _cfg(), impl="torch")
    l2, _ = riel_loss(x2, mb, _cfg(), impl="torch")
    l1.backward()
    l2.backward()
    assert l1.item() == pytest.approx(l2.item(), rel=1e-7)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-7, atol=0)


def test_k3_kl_gradient_uses_the_teacher_value():
    """k3: d/dlogp_- of e^d - 1 - d (d = logp_- - teacher) = e^d - 1: the refreshed P+ value enters the gradient."""
    logp, mb = _mb()
    x = logp.clone().requires_grad_(True)
    decoupled_riel_loss(x, mb, _cfg(kl_estimator="k3"), impl="torch")[0].backward()
    d = -1.5 - (-1.2)
    assert x.grad[0, 3].item() == pytest.approx(0.5 * (math.exp(d) - 1.0), rel=1e-6)


def test_behavior_weights_only_on_active_tokens():
    prox = torch.tensor([0.0, 0.0, 0.0])
    mu = torch.tensor([-5.0, 1.0, -0.5])
    w = behavior_weights(prox, mu, torch.tensor([True, True, False]), cap=3.0)
    assert w.tolist() == pytest.approx([3.0, math.exp(-1.0), 1.0])
