"""Masked attention with grouped KV heads through ``backend.train.attention.sdpa``: the GPU formulation (KV groups
expanded so the memory-efficient CUDA kernel takes the mask, instead of SDPA's math fallback) computes the same
values and gradients as the earlier ``enable_gqa`` + mask call -- checked here on the CPU by forcing the expansion
(``EXPAND_KV = ["always"]``): prompt-sharing segment attention (training) and a dense padding mask."""
import pytest
import torch

from megatron_meml.backend.train import attention as A


@pytest.fixture
def policy():
    prev = A.EXPAND_KV[0]
    yield A.EXPAND_KV
    A.EXPAND_KV[0] = prev


def _segments():
    """2 rows of 64 slots: a shared prompt (segment 0), continuations 1..k, padding (-1)."""
    seg = torch.full((2, 64), -1, dtype=torch.long)
    for b, (p, conts) in enumerate([(20, [10, 15, 12]), (8, [30, 20])]):
        seg[b, :p] = 0
        at = p
        for i, n in enumerate(conts):
            seg[b, at:at + n] = i + 1
            at += n
    return seg


def _run(policy_name, q, k, v, fn):
    A.EXPAND_KV[0] = policy_name
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def test_segment_attention_expanded_kv_matches_enable_gqa(policy):
    torch.manual_seed(0)
    S, B, np_, ng, hn = 64, 2, 6, 2, 16
    q, k, v = torch.randn(S, B, np_, hn), torch.randn(S, B, ng, hn), torch.randn(S, B, ng, hn)
    seg = _segments()
    mask = A.segment_attention_mask(seg)
    plan = A._segment_layout(mask)
    assert plan is not None and plan["n"] == 5

    def fn(q, k, v):
        return A.segment_attention(q, k, v, plan, hn ** -0.5)

    old = _run("never", q, k, v, fn)
    new = _run("always", q, k, v, fn)
    for a, b in zip(old, new):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # and both are the dense masked attention on the real slots (the definition)
    A.EXPAND_KV[0] = "never"
    qd, kd, vd = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    kd, vd = kd.repeat_interleave(np_ // ng, 1), vd.repeat_interleave(np_ // ng, 1)
    dense = torch.softmax((qd @ kd.transpose(-1, -2)) * hn ** -0.5 + mask.float() * -1e9, -1) @ vd
    dense = dense.permute(2, 0, 1, 3).reshape(S, B, np_ * hn)
    real = (seg >= 0).t()
    torch.testing.assert_close(new[0][real], dense[real], atol=1e-5, rtol=1e-5)


def test_dense_mask_expanded_kv_matches_enable_gqa(policy):
    torch.manual_seed(1)
    b, np_, ng, s, hn = 3, 8, 2, 40, 32
    q, k, v = torch.randn(b, np_, s, hn), torch.randn(b, ng, s, hn), torch.randn(b, ng, s, hn)
    lens = torch.tensor([40, 17, 1])
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    allowed = causal[None] & (torch.arange(s)[None, None, :] < lens[:, None, None])   # [b, s, s]
    allowed |= ~allowed.any(-1, keepdim=True)                                       # no empty rows

    def fn(q, k, v):
        return A.sdpa(q, k, v, attn_mask=allowed[:, None], scale=hn ** -0.5)

    old, new = _run("never", q, k, v, fn), _run("always", q, k, v, fn)
    for a, c in zip(old, new):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)


def test_expansion_policy():
    q, k = torch.zeros(1, 8, 4, 16), torch.zeros(1, 2, 4, 16)
    assert not A.expands_kv(q, k, masked=False)              # no mask: flash with enable_gqa
    assert not A.expands_kv(q, q, masked=True)               # no grouping: nothing to expand
    assert A.expands_kv(q, k, masked=True) == q.is_cuda      # the default policy: only on CUDA


def test_startup_lines_name_attention_accelerators_and_optimizer():
    from tests.distributed.launcher import spawn

    lines = spawn("tests.unit.backend.workers:startup_report", 1)[0]
    assert lines[0].startswith("attention: megatron_meml.backend.train.attention.SDPAttention [SDPA on the CPU"), lines
    assert lines[1].startswith("accelerators: transformer_engine ") and " apex " in lines[1], lines
    assert "flash_attn " in lines[1], lines
    # the CPU lock has neither Transformer Engine nor apex: megatron's Adam is torch's AdamW, sharded (the default
    # parallel.use_distributed_optimizer=true)
    assert "transformer_engine no" in lines[1] and "apex no" in lines[1], lines
    assert lines[2] == "optimizer: DistributedOptimizer over torch.optim.adamw.AdamW", lines


def test_library_probe():
    from megatron_meml.backend.runtime.runtime_info import library

    assert library("json") == "yes" or library("json").startswith("yes")
    assert library("surely_not_an_installed_module_xyz") == "no"
