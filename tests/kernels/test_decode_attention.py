"""meml_kernels.decode_attention: Triton (interpreter) == torch twin == an fp64 per-row formula, over ragged
lengths (incl. 0 and 1, full capacity), GQA ratios 1/2/4, a head dim that is not a power of two, strided caches."""
import math

import pytest
import torch

from meml_kernels.decode_attention import decode_attention


def fp64_formula(q, k_cache, v_cache, lengths, scale):
    """The definition, one row and head at a time in float64."""
    B, nh, hn = q.shape
    rep = nh // k_cache.shape[1]
    out = torch.zeros(B, nh, hn, dtype=torch.float64)
    for b in range(B):
        n = int(lengths[b])
        for h in range(nh):
            if n == 0:
                continue
            k = k_cache[b, h // rep, :n].double()
            v = v_cache[b, h // rep, :n].double()
            w = torch.softmax(k @ q[b, h].double() * scale, dim=0)
            out[b, h] = w @ v
    return out


@pytest.mark.parametrize("nh,ng,hn", [(4, 4, 16), (4, 2, 32), (8, 2, 24)])
def test_matches_twin_and_fp64(nh, ng, hn):
    g = torch.Generator().manual_seed(nh * 100 + hn)
    N, C, B = 6, 70, 5
    q = torch.randn(B, nh, hn, generator=g)
    k = torch.randn(N, ng, C, hn, generator=g)
    v = torch.randn(N, ng, C, hn, generator=g)
    lengths = torch.tensor([0, 1, 33, 70, 64])
    scale = 1 / math.sqrt(hn)
    want = fp64_formula(q, k, v, lengths, scale)
    for impl in ("torch", "triton", "auto"):  # auto on CPU tensors: the SDPA form
        got = decode_attention(q, k, v, lengths, scale, impl=impl)
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5, msg=impl)
        assert torch.all(got[0] == 0)  # an empty row is 0, not NaN
    # max_len bounds the keys read without changing the result
    bounded = decode_attention(q, k, v, lengths, scale, max_len=70, impl="triton")
    torch.testing.assert_close(bounded.double(), want, atol=2e-5, rtol=1e-5)


def test_strided_cache_view_and_bf16():
    """The engine passes a view of a bigger cache (layer slice); bf16 storage with fp32 accumulation."""
    g = torch.Generator().manual_seed(3)
    big_k = torch.randn(2, 4, 2, 40, 32, generator=g)   # [layers, N, ng, C, hn]
    big_v = torch.randn(2, 4, 2, 40, 32, generator=g)
    k, v = big_k[1], big_v[1]
    q = torch.randn(3, 4, 32, generator=g)
    lengths = torch.tensor([40, 7, 19])
    want = fp64_formula(q, k, v, lengths, 0.2)
    torch.testing.assert_close(decode_attention(q, k, v, lengths, 0.2, impl="triton").double(), want,
                               atol=2e-5, rtol=1e-5)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    want_b = fp64_formula(qb, kb, vb, lengths, 0.2)
    for impl in ("torch", "triton"):
        got = decode_attention(qb, kb, vb, lengths, 0.2, impl=impl)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.double(), want_b, atol=3e-2, rtol=2e-2, msg=impl)


def test_bad_shapes_fail_clearly():
    q = torch.randn(3, 4, 16)
    k = torch.randn(2, 2, 8, 16)
    with pytest.raises(ValueError, match="does not fit"):
        decode_attention(q, k, k, torch.ones(3, dtype=torch.long), 1.0, impl="torch")


def test_cpu_hints_precomputed_mask_and_nonempty():
    """The slot model builds the CPU path's length mask once per decode step and, when every row decodes, skips the
    empty-row fix-up: the hints give the same result as the plain call and the fp64 formula."""
    from meml_kernels.decode_attention.reference import length_mask

    g = torch.Generator().manual_seed(11)
    q = torch.randn(4, 4, 16, generator=g)
    k = torch.randn(6, 2, 30, 16, generator=g)
    v = torch.randn(6, 2, 30, 16, generator=g)
    lengths = torch.tensor([1, 9, 25, 17])
    want = fp64_formula(q, k, v, lengths, 0.25)
    got = decode_attention(q, k, v, lengths, 0.25, max_len=25, mask=length_mask(lengths, 25), nonempty=True)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    assert torch.equal(got, decode_attention(q, k, v, lengths, 0.25, max_len=25))
