"""meml_kernels.token_loss: Triton kernel == torch twin == float64 autograd formula (loss, dL/dlogp, clip flag)."""
import pytest
import torch

from meml_kernels.token_loss import TokenLossInputs, token_loss, token_loss_forward
from tests.kernels.naive import random_loss_inputs, token_loss_f64


@pytest.mark.parametrize("ref_kl", ["k1", "k2", "k3"])
@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
def test_token_loss_matches_twin_and_float64(ref_kl, kl_estimator):
    gen = torch.Generator().manual_seed(7)
    t = 333                                     # not a multiple of the interpreter block (128)
    logp, old, ref, adv, kind, mask, weight = random_loss_inputs(t, gen)
    kw = dict(ref_logp=ref, eps_low=0.2, eps_high=0.28, beta=0.05, ref_kl=ref_kl, kl_estimator=kl_estimator)
    upstream = torch.randn(t, generator=gen)

    x64 = logp.double().requires_grad_()
    want, want_clip = token_loss_f64(x64, old, adv, kind, mask, weight, ref, 0.2, 0.28, 0.05, ref_kl, kl_estimator)
    (want * upstream.double()).sum().backward()

    for impl in ("torch", "triton"):
        x = logp.clone().requires_grad_()
        out = token_loss(x, old, adv, kind, mask, weight, impl=impl, **kw)
        (out.loss * upstream).sum().backward()
        torch.testing.assert_close(out.loss.double(), want.detach(), atol=2e-6, rtol=2e-6)
        torch.testing.assert_close(x.grad.double(), x64.grad, atol=2e-6, rtol=2e-6)
        assert torch.equal(out.clipped, want_clip), impl
        assert out.clipped.any() and not out.clipped.all()


def test_masked_tokens_are_exactly_zero_even_with_nonfinite_inputs():
    t = 200
    logp, old, ref, adv, kind, mask, weight = random_loss_inputs(t, torch.Generator().manual_seed(3))
    old[~mask] = -1e30                          # exp(logp - old) = inf on masked tokens
    adv[~mask] = float("nan")
    for impl in ("torch", "triton"):
        loss, grad, clipped = token_loss_forward(logp, TokenLossInputs(old, adv, kind, mask, weight, ref,
                                                                        beta=0.1), impl)
        assert torch.all(loss[~mask] == 0) and torch.all(grad[~mask] == 0) and not clipped[~mask].any()
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_each_kind_formula_by_hand():
    logp = torch.tensor([-1.0, -1.0, -1.0, -1.0, -2.0])
    old = torch.tensor([-1.5, -0.5, -1.2, -1.2, -1.0])
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0])
    kind = torch.tensor([0, 0, 1, 2, 7], dtype=torch.int8)
    mask = torch.ones(5, dtype=torch.bool)
    weight = torch.full((5,), 0.5)
    for impl in ("torch", "triton"):
        loss, grad, clipped = token_loss_forward(logp, TokenLossInputs(old, adv, kind, mask, weight,
                                                                        eps_low=0.2, eps_high=0.2), impl)
        r0, r1 = torch.exp(torch.tensor(0.5)), torch.exp(torch.tensor(-0.5))
        # token 0: r = e^0.5 = 1.65 > 1.2 with A = 1 -> clipped, loss -1.2 A, grad 0
        # token 1: r = e^-0.5 = 0.61 < 0.8 with A = -1 -> clipped, loss 0.8, grad 0
        # token 2: KL k1 -> old - logp = -0.2 ; token 3: SFT -> 1.0 ; token 4: unknown kind -> 0
        want = 0.5 * torch.tensor([-1.2, 0.8, -0.2, 1.0, 0.0])
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(grad, 0.5 * torch.tensor([0.0, 0.0, -1.0, -1.0, 0.0]))
        assert clipped.tolist() == [True, True, False, False, False]
        assert r0 > 1.2 and r1 < 0.8


def test_bad_estimator_names_fail_with_the_name():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="ref_kl"):
        TokenLossInputs(z, z, z.to(torch.int8), z, z, ref_kl="k4")
    with pytest.raises(ValueError, match="kl_estimator"):
        TokenLossInputs(z, z, z.to(torch.int8), z, z, kl_estimator="k2")
