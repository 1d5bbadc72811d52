"""meml_kernels.group_advantages: Triton (one launch) == torch twin == float64 Python loop, exact on constant
groups and single-sample groups."""
import pytest
import torch

from meml_kernels.group_advantages import group_advantages
from tests.kernels.naive import group_advantages_loop

IMPLS = ("torch", "triton")


@pytest.mark.parametrize("impl", IMPLS)
def test_paper_example(impl):
    r = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.float32)
    adv = group_advantages(r, torch.zeros(8, dtype=torch.long), impl=impl)
    assert adv.tolist() == [-0.125, -0.125, -0.125, 0.875, -0.125, -0.125, -0.125, -0.125]


def _batch(gen, s=203, n_groups=40):
    """Random 0/1 and fractional rewards with a constant group, single-sample groups and shuffled order."""
    keys = torch.randint(0, n_groups, (s,), generator=gen)
    keys[:3] = torch.tensor([n_groups, n_groups + 1, n_groups + 2])   # three single-sample groups
    r = (torch.rand(s, generator=gen) > 0.5).float()
    r[keys == 5] = 0.3                                                   # zero-variance group, non-integer value
    r[keys == 6] = 1.0
    r[keys == 7] = torch.rand(int((keys == 7).sum()), generator=gen)    # continuous rewards
    return r, keys, n_groups + 3


@pytest.mark.parametrize("std_normalize", [False, True])
@pytest.mark.parametrize("positive_only", [False, True])
def test_matches_loop_and_twin(std_normalize, positive_only):
    r, keys, g = _batch(torch.Generator().manual_seed(1))
    want = group_advantages_loop(r, keys, std_normalize, 1e-6, positive_only)
    for impl in IMPLS:
        got = group_advantages(r, keys, g, std_normalize=std_normalize, positive_only=positive_only, impl=impl)
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)
        constant = (keys == 5) | (keys == 6) | (keys >= g - 3)
        assert torch.all(got[constant] == 0.0), impl            # exact, not approximately


@pytest.mark.parametrize("impl", IMPLS)
def test_pooled_uses_question_ids(impl):
    gen = torch.Generator().manual_seed(2)
    n_q, n_e, g = 5, 3, 4
    q = torch.arange(n_q).repeat_interleave(n_e * g)
    e = torch.arange(n_e).repeat_interleave(g).repeat(n_q)
    perm = torch.randperm(q.numel(), generator=gen)
    q, e = q[perm], e[perm]
    r = (torch.rand(q.numel(), generator=gen) > 0.6).float()
    gid = q * n_e + e
    per_group = group_advantages(r, gid, n_q * n_e, impl=impl)
    pooled = group_advantages(r, gid, n_q, question_ids=q, pooled=True, impl=impl)
    torch.testing.assert_close(per_group.double(), group_advantages_loop(r, gid), atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled.double(), group_advantages_loop(r, q), atol=1e-6, rtol=0)
    assert not torch.equal(per_group, pooled)
    with pytest.raises(ValueError, match="question_ids"):
        group_advantages(r, gid, pooled=True, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_default_group_bound_and_out_of_range_ids(impl):
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0])
    keys = torch.tensor([4, 4, 0, 0, 9])                   # 9 >= S: outside the default bound num_groups = S
    adv = group_advantages(r, keys, impl=impl)
    assert adv[:4].tolist() == [0.5, -0.5, 0.5, -0.5] and torch.isnan(adv[4])


@pytest.mark.parametrize("programs", [1, 3, 7])
def test_larger_batch_several_blocks_and_programs(programs):
    """Several sample blocks per phase, and the group ids split over several programs (as on GPU at large S)."""
    from meml_kernels.group_advantages import triton_impl

    gen = torch.Generator().manual_seed(3)
    s = 700                                                 # > 10 interpreter blocks of 64 per phase
    keys = torch.randint(0, 90, (s,), generator=gen)
    keys[5] = 95                                            # outside num_groups: NaN, written exactly once
    r = torch.randint(0, 2, (s,), generator=gen).float()
    want = group_advantages_loop(r, keys, True, 1e-6, False)
    want[5] = float("nan")
    got = triton_impl.group_advantages(r, keys, 90, std_normalize=True, programs=programs)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5, equal_nan=True)
