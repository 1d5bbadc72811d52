"""meml_kernels on CUDA: every Triton kernel (compiled, not interpreted) against its torch twin on the same
device, at realistic shapes and in bf16. Run on a GPU machine: ``python3 -m pytest -m gpu tests/gpu -q``."""
import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="TRITON_INTERPRET=1 would interpret the kernels instead of compiling them"),
]

DEV = "cuda"


def _close_rel(got, want, rel):
    """max |got - want| <= rel * max |want| (the scale-aware check for bf16 gradients)."""
    err = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item()
    assert err <= rel * scale, f"max error {err:.3e} > {rel} x scale {scale:.3e}"


def _loss_inputs(t, logp_like, gen_seed=0):
    from meml_kernels.token_loss import TokenLossInputs

    g = torch.Generator(device=DEV).manual_seed(gen_seed)
    old = logp_like + 0.3 * torch.randn(t, device=DEV, generator=g)
    ref = logp_like + 0.3 * torch.randn(t, device=DEV, generator=g)
    kind = torch.randint(0, 3, (t,), device=DEV, generator=g).to(torch.int8)
    mask = torch.rand(t, device=DEV, generator=g) > 0.1
    weight = torch.rand(t, device=DEV, generator=g)
    adv = torch.randn(t, device=DEV, generator=g)
    return TokenLossInputs(old, adv, kind, mask, weight, ref, 0.2, 0.28, 0.05, "k3", "k3")


@pytest.mark.parametrize("t,v", [(4096, 151936), (777, 50001)])
def test_logprobs_bf16_vs_twin(t, v):
    from meml_kernels.logprobs import token_logprobs

    torch.manual_seed(0)
    logits = (torch.randn(t, v, device=DEV) * 2).to(torch.bfloat16)
    targets = torch.randint(0, v, (t,), device=DEV)
    targets[::17] = -100
    g_lp, g_ent = torch.randn(t, device=DEV), torch.randn(t, device=DEV)
    res = {}
    for impl in ("torch", "triton"):
        x = logits.clone().requires_grad_()
        out = token_logprobs(x, targets, temperature=0.9, return_entropy=True, impl=impl)
        ((out.logp * g_lp).sum() + (out.entropy * g_ent).sum()).backward()
        res[impl] = (out.logp, out.entropy, x.grad)
    torch.testing.assert_close(res["triton"][0], res["torch"][0], atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(res["triton"][1], res["torch"][1], atol=2e-4, rtol=1e-5)
    _close_rel(res["triton"][2], res["torch"][2], 1e-2)
    assert torch.all(res["triton"][2][targets == -100] == 0)


def test_logprobs_fused_loss_vs_twin():
    from meml_kernels.logprobs import token_logprobs

    torch.manual_seed(1)
    t, v = 2048, 32768
    logits = (torch.randn(t, v, device=DEV) * 2).to(torch.bfloat16)
    targets = torch.randint(0, v, (t,), device=DEV)
    base = token_logprobs(logits, targets, impl="torch").logp
    spec = _loss_inputs(t, base)
    res = {}
    for impl in ("torch", "triton"):
        x = logits.clone().requires_grad_()
        out = token_logprobs(x, targets, loss=spec, impl=impl)
        out.loss.sum().backward()
        res[impl] = (out.loss, out.clipped, x.grad)
    torch.testing.assert_close(res["triton"][0], res["torch"][0], atol=1e-4, rtol=1e-4)
    assert (res["triton"][1] != res["torch"][1]).sum() <= 2          # ties at the clip edge may flip
    _close_rel(res["triton"][2], res["torch"][2], 1e-2)


@pytest.mark.parametrize("t,h,v,chunk_cols", [(2048, 1536, 32768, None), (2048, 1536, 32768, 4096),
                                              (1000, 1000, 50001, None)])
def test_linear_bf16_vs_twin(monkeypatch, t, h, v, chunk_cols):
    from meml_kernels.linear_logprobs import linear_token_logprobs, triton_impl

    if chunk_cols:   # several backward vocabulary chunks
        monkeypatch.setattr(triton_impl, "BWD_CHUNK_BYTES", t * 2 * chunk_cols)
    torch.manual_seed(2)
    hidden = torch.randn(t, h, device=DEV).to(torch.bfloat16)
    weight = (torch.randn(v, h, device=DEV) * 0.03).to(torch.bfloat16)
    targets = torch.randint(0, v, (t,), device=DEV)
    targets[::13] = -100
    g_lp, g_ent = torch.randn(t, device=DEV), torch.randn(t, device=DEV)
    res = {}
    for impl in ("torch", "triton"):
        x, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = linear_token_logprobs(x, w, targets, temperature=1.1, return_entropy=True, impl=impl)
        ((out.logp * g_lp).sum() + (out.entropy * g_ent).sum()).backward()
        res[impl] = (out.logp, out.entropy, x.grad, w.grad)
    torch.testing.assert_close(res["triton"][0], res["torch"][0], atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(res["triton"][1], res["torch"][1], atol=2e-3, rtol=1e-4)
    _close_rel(res["triton"][2], res["torch"][2], 2e-2)
    _close_rel(res["triton"][3], res["torch"][3], 2e-2)


def test_linear_fp32_exact_and_fused_loss():
    from meml_kernels.linear_logprobs import linear_token_logprobs

    torch.manual_seed(3)
    t, h, v = 515, 264, 5003
    hidden = torch.randn(t, h, device=DEV)
    weight = torch.randn(v, h, device=DEV) * 0.05
    targets = torch.randint(0, v, (t,), device=DEV)
    base = linear_token_logprobs(hidden, weight, targets, impl="torch").logp
    spec = _loss_inputs(t, base, 4)
    res = {}
    for impl in ("torch", "triton"):
        x, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = linear_token_logprobs(x, w, targets, loss=spec, return_entropy=True, impl=impl)
        (out.loss.sum() + out.entropy.sum()).backward()
        res[impl] = (out.loss, out.entropy, x.grad, w.grad)
    for a, b in zip(res["triton"], res["torch"]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("s", [2048, 262144])
def test_group_advantages_vs_twin(s):
    from meml_kernels.group_advantages import group_advantages

    torch.manual_seed(4)
    gid = torch.randperm(s, device=DEV) // 8
    r = (torch.rand(s, device=DEV) > 0.5).float()
    r[gid % 5 == 0] = 0.7                              # constant groups
    r[gid % 7 == 0] = torch.rand(int((gid % 7 == 0).sum()), device=DEV)
    for std in (False, True):
        a = group_advantages(r, gid, s // 8, std_normalize=std, impl="triton")
        b = group_advantages(r, gid, s // 8, std_normalize=std, impl="torch")
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert torch.all(a[(gid % 5 == 0) & (gid % 7 != 0)] == 0)
    ex = group_advantages(torch.tensor([0, 0, 0, 1, 0, 0, 0, 0.], device=DEV),
                          torch.zeros(8, dtype=torch.long, device=DEV), impl="triton")
    assert ex.tolist() == [-0.125, -0.125, -0.125, 0.875, -0.125, -0.125, -0.125, -0.125]


def test_token_loss_vs_twin():
    from meml_kernels.token_loss import token_loss

    torch.manual_seed(5)
    t = 16384 * 8
    logp = -torch.rand(t, device=DEV) * 3
    spec = _loss_inputs(t, logp, 6)
    res = {}
    for impl in ("torch", "triton"):
        x = logp.clone().requires_grad_()
        out = token_loss(x, spec.old_logp, spec.advantages, spec.kind, spec.mask, spec.weight, ref_logp=spec.ref_logp,
                         eps_low=0.2, eps_high=0.28, beta=0.05, ref_kl="k3", kl_estimator="k3", impl=impl)
        out.loss.sum().backward()
        res[impl] = (out.loss, out.clipped, x.grad)
    torch.testing.assert_close(res["triton"][0], res["torch"][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res["triton"][2], res["torch"][2], atol=1e-6, rtol=1e-5)
    assert (res["triton"][1] != res["torch"][1]).sum() <= 2
