"""meml_kernels.logprobs: Triton kernels == torch twin == float64 log_softmax (forward and backward), with
temperature, entropy, ignored/masked tokens, sizes off the block grid, bf16 logits and the fused loss epilogue."""
import pytest
import torch

from meml_kernels.logprobs import reference, token_logprobs
from meml_kernels.token_loss import TokenLossInputs
from tests.kernels.naive import logprobs_f64, random_loss_inputs, token_loss_f64

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _inputs(gen, t, v, dtype):
    logits = (torch.randn(t, v, generator=gen) * 3).to(dtype)
    targets = torch.randint(0, v, (t,), generator=gen)
    targets[[1, 5]] = -100                                  # ignored
    mask = torch.ones(t, dtype=torch.bool)
    mask[[2, 9]] = False                                    # masked
    return logits, targets, mask


def _grad_tol(dtype):
    return dict(atol=2e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("t,v,temperature", [(37, 301, 0.7), (16, 128, 1.0)])
def test_logprobs_entropy_and_grads(dtype, t, v, temperature):
    dtype = DTYPES[dtype]
    gen = torch.Generator().manual_seed(t * v)
    logits, targets, mask = _inputs(gen, t, v, dtype)
    g_logp, g_ent = torch.randn(t, generator=gen), torch.randn(t, generator=gen)
    valid = (targets != -100) & mask
    want_lp, want_ent, x64 = logprobs_f64(logits, targets, valid, temperature)
    ((want_lp * g_logp.double()).sum() + (want_ent * g_ent.double()).sum()).backward()

    for impl in ("torch", "triton"):
        x = logits.clone().requires_grad_()
        out = token_logprobs(x, targets, temperature=temperature, mask=mask, return_entropy=True, impl=impl)
        ((out.logp * g_logp).sum() + (out.entropy * g_ent).sum()).backward()
        assert out.logp.dtype == torch.float32 and x.grad.dtype == dtype
        torch.testing.assert_close(out.logp.double(), want_lp.detach(), atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(out.entropy.double(), want_ent.detach(), atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(x.grad.double(), x64.grad.to(dtype).double(), **_grad_tol(dtype))
        assert torch.all(out.logp[~valid] == 0) and torch.all(x.grad[~valid] == 0)


def test_torch_twin_chunks_rows(monkeypatch):
    """The twin walks row chunks (no fp32 [T, V] temporary); a tiny chunk gives the same answer."""
    gen = torch.Generator().manual_seed(0)
    logits, targets, mask = _inputs(gen, 23, 50, torch.float32)
    full = token_logprobs(logits, targets, return_entropy=True, impl="torch")
    monkeypatch.setattr(reference, "CHUNK_BYTES", 4 * 50 * 3)   # 3 rows per chunk
    x = logits.clone().requires_grad_()
    part = token_logprobs(x, targets, return_entropy=True, impl="torch")
    part.logp.sum().backward()
    torch.testing.assert_close(part.logp, full.logp)
    torch.testing.assert_close(part.entropy, full.entropy)
    want_lp, _, x64 = logprobs_f64(logits, targets, targets != -100)
    want_lp.sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_fused_loss_epilogue(dtype):
    """loss=TokenLossInputs: loss and d loss / d logits equal loss(logp) computed in float64 by autograd."""
    dtype = DTYPES[dtype]
    gen = torch.Generator().manual_seed(11)
    t, v, temperature = 29, 97, 0.9
    logits, targets, _ = _inputs(gen, t, v, dtype)
    _, old, ref, adv, kind, mask, weight = random_loss_inputs(t, gen)
    valid = targets != -100
    lp64, _, x64 = logprobs_f64(logits, targets, valid, temperature)
    old = lp64.detach().float() + 0.3 * torch.randn(t, generator=gen)    # ratios near 1, some clipped
    want, want_clip = token_loss_f64(lp64, old, adv, kind, mask & valid, weight, ref, 0.2, 0.3, 0.1, "k3", "k3")
    want.sum().backward()
    spec = TokenLossInputs(old, adv, kind, mask & valid, weight, ref, 0.2, 0.3, 0.1, "k3", "k3")
    for impl in ("torch", "triton"):
        x = logits.clone().requires_grad_()
        out = token_logprobs(x, targets, temperature=temperature, loss=spec, impl=impl)
        out.loss.sum().backward()
        torch.testing.assert_close(out.loss.double(), want.detach(), atol=2e-5, rtol=1e-5)
        assert torch.equal(out.clipped, want_clip)
        torch.testing.assert_close(x.grad.double(), x64.grad.to(dtype).double(), **_grad_tol(dtype))


def test_leading_dims_and_impl_errors():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 7, 33, generator=gen)
    targets = torch.randint(0, 33, (2, 7), generator=gen)
    out = token_logprobs(logits, targets, impl="triton")
    want = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    assert out.logp.shape == (2, 7) and out.entropy is None and out.loss is None
    torch.testing.assert_close(out.logp, want)
    with pytest.raises(ValueError, match="impl"):
        token_logprobs(logits, targets, impl="cuda")
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, targets, temperature=0.0)


def test_vocab_shard_stats_with_targets_outside_the_shard():
    from meml_kernels.logprobs import triton_impl
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(19, 70, generator=gen)
    targets = torch.arange(19) * 7
    valid = torch.ones(19, dtype=torch.bool)
    for start in (0, 70):
        got = triton_impl.row_stats(logits, targets, valid, 1.0, start, True)
        want = reference.row_stats(logits, targets, valid, 1.0, start, True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        inside = (targets >= start) & (targets < start + 70)
        assert torch.all(want.tgt[~inside] == 0) and torch.all(want.tgt[inside] != 0)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_vocab_limit_on_logits(impl):
    """logits [T, 101] with vocab_limit=77: the float64 log-softmax of the first 77 columns; columns 77.. get an
    exactly zero gradient (written into the full-width gradient)."""
    gen = torch.Generator().manual_seed(21)
    t, v, limit = 23, 101, 77
    logits, _, mask = _inputs(gen, t, v, torch.float32)
    targets = torch.randint(0, limit, (t,), generator=gen)
    valid = mask
    want_lp, want_ent, x64 = logprobs_f64(logits[:, :limit], targets, valid, 0.8)
    (want_lp.sum() + 0.5 * want_ent.sum()).backward()
    x = logits.clone().requires_grad_()
    out = token_logprobs(x, targets, temperature=0.8, mask=mask, vocab_limit=limit, return_entropy=True, impl=impl)
    (out.logp.sum() + 0.5 * out.entropy.sum()).backward()
    torch.testing.assert_close(out.logp.double(), want_lp.detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(out.entropy.double(), want_ent.detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(x.grad[:, :limit].double(), x64.grad, atol=2e-6, rtol=1e-5)
    assert torch.all(x.grad[:, limit:] == 0)
