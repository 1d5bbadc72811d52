"""meml_kernels.linear_logprobs: fused hidden x W log-probs, Triton == torch twin == float64 naive (logits
materialised), forward and backward (dhidden, dweight), off-grid sizes, entropy, ignored tokens, fused loss."""
import pytest
import torch

from meml_kernels.linear_logprobs import linear_token_logprobs, reference
from meml_kernels.token_loss import TokenLossInputs
from tests.kernels.naive import logprobs_f64, random_loss_inputs, token_loss_f64

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _inputs(gen, t, h, v, dtype):
    hidden = torch.randn(t, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * 0.4).to(dtype)
    targets = torch.randint(0, v, (t,), generator=gen)
    targets[[0, 7]] = -100
    return hidden, weight, targets


def _naive(hidden, weight, targets, valid, temperature):
    """float64 logits, then log_softmax: returns (logp, entropy, h64, w64) with autograd leaves h64/w64."""
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    logits = h64 @ w64.t()
    logq = torch.log_softmax(logits / temperature, -1)
    lp = torch.where(valid, logq.gather(1, targets.clamp(0)[:, None]).squeeze(1), torch.zeros((), dtype=torch.float64))
    ent = torch.where(valid, -(logq.exp() * logq).sum(-1), torch.zeros((), dtype=torch.float64))
    return lp, ent, h64, w64


def _close_grad(got, want, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    else:   # bf16 gradients: dz is rounded to bf16 before the two GEMMs in the Triton path
        scale = want.abs().max().item()
        assert (got.double() - want).abs().max().item() <= 2e-2 * scale


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_linear_logprobs_entropy_and_grads(dtype):
    dtype = DTYPES[dtype]
    gen = torch.Generator().manual_seed(3)
    t, h, v, temperature = 37, 40, 301, 0.8             # none a multiple of the interpreter tiles (16, 16, 32)
    hidden, weight, targets = _inputs(gen, t, h, v, dtype)
    valid = targets != -100
    g_logp, g_ent = torch.randn(t, generator=gen), torch.randn(t, generator=gen)
    lp, ent, h64, w64 = _naive(hidden, weight, targets, valid, temperature)
    ((lp * g_logp.double()).sum() + (ent * g_ent.double()).sum()).backward()
    for impl in ("torch", "triton"):
        x = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        out = linear_token_logprobs(x, w, targets, temperature=temperature, return_entropy=True, impl=impl)
        ((out.logp * g_logp).sum() + (out.entropy * g_ent).sum()).backward()
        torch.testing.assert_close(out.logp.double(), lp.detach(), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out.entropy.double(), ent.detach(), atol=2e-5, rtol=1e-5)
        assert x.grad.dtype == dtype and w.grad.dtype == dtype
        _close_grad(x.grad, h64.grad, dtype)
        _close_grad(w.grad, w64.grad, dtype)
        assert torch.all(out.logp[~valid] == 0) and torch.all(x.grad[~valid] == 0)


def test_torch_twin_tiles_over_t_and_v(monkeypatch):
    """Tiny tiles in the twin (many T and V chunks) give the float64 answer."""
    monkeypatch.setattr(reference, "CHUNK_T", 5)
    monkeypatch.setattr(reference, "CHUNK_V", 17)
    gen = torch.Generator().manual_seed(4)
    hidden, weight, targets = _inputs(gen, 23, 12, 70, torch.float32)
    valid = targets != -100
    lp, ent, h64, w64 = _naive(hidden, weight, targets, valid, 1.0)
    (lp.sum() + ent.sum()).backward()
    x, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = linear_token_logprobs(x, w, targets, return_entropy=True, impl="torch")
    (out.logp.sum() + out.entropy.sum()).backward()
    torch.testing.assert_close(out.logp.double(), lp.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.entropy.double(), ent.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), h64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.grad.double(), w64.grad, atol=1e-5, rtol=1e-5)


def test_fused_linear_loss_epilogue():
    gen = torch.Generator().manual_seed(9)
    t, h, v = 21, 24, 90
    hidden, weight, targets = _inputs(gen, t, h, v, torch.float32)
    _, old, ref, adv, kind, mask, weight_t = random_loss_inputs(t, gen)
    valid = targets != -100
    lp, _, h64, w64 = _naive(hidden, weight, targets, valid, 1.0)
    old = lp.detach().float() + 0.3 * torch.randn(t, generator=gen)
    want, want_clip = token_loss_f64(lp, old, adv, kind, mask & valid, weight_t, ref, 0.2, 0.2, 0.2, "k2", "k1")
    want.sum().backward()
    spec = TokenLossInputs(old, adv, kind, mask & valid, weight_t, ref, 0.2, 0.2, 0.2, "k2", "k1")
    for impl in ("torch", "triton"):
        x, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = linear_token_logprobs(x, w, targets, loss=spec, impl=impl)
        out.loss.sum().backward()
        torch.testing.assert_close(out.loss.double(), want.detach(), atol=2e-5, rtol=1e-5)
        assert torch.equal(out.clipped, want_clip)
        torch.testing.assert_close(x.grad.double(), h64.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w.grad.double(), w64.grad, atol=1e-5, rtol=1e-5)


def test_shape_and_dtype_errors():
    h = torch.randn(4, 8)
    with pytest.raises(ValueError, match="dtype"):
        linear_token_logprobs(h, torch.randn(10, 8, dtype=torch.bfloat16), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="H"):
        linear_token_logprobs(h, torch.randn(10, 9), torch.zeros(4, dtype=torch.long))


def test_vocab_shard_stats_with_targets_outside_the_shard():
    """A shard [vocab_start, vocab_start + V_local): targets elsewhere contribute no target logit (Triton ==
    twin), including ids that fall in the padded columns of the shard's last tile."""
    from meml_kernels.linear_logprobs import triton_impl
    gen = torch.Generator().manual_seed(8)
    hidden, weight, _ = _inputs(gen, 19, 16, 140, torch.float32)
    targets = torch.arange(19) * 7                          # 0 .. 126: inside and outside the shard
    valid = torch.ones(19, dtype=torch.bool)
    for start in (0, 70):
        shard = weight[start:start + 70]
        partial_tgt = triton_impl.row_stats(hidden, shard, targets, valid, 1.0, start, True).tgt   # [splits, T]
        want = reference.row_stats(hidden, shard, targets, valid, 1.0, start, True)
        torch.testing.assert_close(partial_tgt.sum(0), want.tgt)
        inside = (targets >= start) & (targets < start + 70)
        assert torch.all(want.tgt[~inside] == 0) and torch.all(want.tgt[inside] != 0)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_vocab_limit_leaves_padded_ids_out(dtype):
    """vocab_limit=77 of 101 rows (the limit inside an interpreter tile): log-probs, entropy and gradients equal
    the float64 formula on the first 77 rows alone; the padded rows get exactly zero gradient; and the result is
    the logits path with the padded logits set to a large negative value (how backend/train/model.py masks them)."""
    dtype = DTYPES[dtype]
    gen = torch.Generator().manual_seed(12)
    t, h, v, limit, temperature = 29, 24, 101, 77, 0.9
    hidden, weight, _ = _inputs(gen, t, h, v, dtype)
    targets = torch.randint(0, limit, (t,), generator=gen)
    targets[3] = -100
    valid = targets != -100
    g_logp, g_ent = torch.randn(t, generator=gen), torch.randn(t, generator=gen)
    lp, ent, h64, w64 = _naive(hidden, weight[:limit], targets, valid, temperature)
    ((lp * g_logp.double()).sum() + (ent * g_ent.double()).sum()).backward()
    for impl in ("torch", "triton"):
        x, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = linear_token_logprobs(x, w, targets, temperature=temperature, vocab_limit=limit,
                                    return_entropy=True, impl=impl)
        ((out.logp * g_logp).sum() + (out.entropy * g_ent).sum()).backward()
        torch.testing.assert_close(out.logp.double(), lp.detach(), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out.entropy.double(), ent.detach(), atol=2e-5, rtol=1e-5)
        _close_grad(x.grad, h64.grad, dtype)
        _close_grad(w.grad[:limit], w64.grad, dtype)
        assert torch.all(w.grad[limit:] == 0)
    # the masked-logits twin (float32 so the comparison is tight)
    from meml_kernels.logprobs import token_logprobs
    logits = (hidden.float() @ weight.float().t()).requires_grad_()
    masked = torch.where(torch.arange(v) < limit, logits, torch.full((), -1e4))
    ref = token_logprobs(masked, targets, temperature=temperature, impl="torch").logp
    got = linear_token_logprobs(hidden.float(), weight.float(), targets, temperature=temperature,
                                vocab_limit=limit, impl="torch").logp
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_vocab_limit_shards_merge_like_one_vocabulary():
    """Tensor-parallel shards of a padded vocabulary (V=2x64, limit 70): shard 1 keeps 6 columns, a third shard
    past the limit is empty (neutral stats); merged they give the single-shard answer."""
    from meml_kernels import _vocab_parallel as vp
    from meml_kernels.linear_logprobs import triton_impl
    gen = torch.Generator().manual_seed(13)
    hidden, weight, _ = _inputs(gen, 17, 16, 192, torch.float32)
    targets = torch.randint(0, 70, (17,), generator=gen)
    valid = torch.ones(17, dtype=torch.bool)
    whole = vp.finish_stats(reference.row_stats(hidden, weight[:70], targets, valid, 1.0, 0, True), valid)
    for engine in (reference, triton_impl):
        parts = []
        for start in (0, 64, 128):
            end = vp.local_vocab_end(64, start, 70)
            shard = weight[start:start + end]
            st = vp.empty_stats(17, hidden.device) if end == 0 else \
                engine.row_stats(hidden, shard, targets, valid, 1.0, start, True)
            parts.append(vp.merge_partials(st) if st.m.dim() == 2 else st)
        stacked = vp.RowStats(*(torch.stack([p[i] for p in parts]) for i in range(4)))
        got = vp.finish_stats(vp.merge_partials(stacked), valid)
        for a, b in zip(got, whole):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert vp.local_vocab_end(64, 128, 70) == 0 and vp.local_vocab_end(64, 64, 70) == 6
    with pytest.raises(ValueError, match="vocab_limit"):
        vp.local_vocab_end(64, 0, 0)
