"""Sampling (greedy, inverse CDF, truncation, per-request uniforms) and generation-batch planning."""
import pytest
import torch

from megatron_meml.rollout.api import SamplingParams
from megatron_meml.rollout.megatron_engine import plan_batches
from megatron_meml.rollout.sampling import mix_seed, request_uniforms, sample, truncation_mask


def test_greedy_is_argmax_over_real_vocab_and_logp_is_real_vocab_distribution():
    logits = torch.tensor([[0.0, 2.0, 1.0, 9.0], [3.0, 3.0, 1.0, 0.0]])
    tok, lp = sample(logits, temperature=0.5, top_k=1, vocab_size=3)
    assert tok.tolist() == [1, 0]  # id 3 is embedding padding; tie -> lowest id
    ref = torch.log_softmax(logits[:, :3] / 0.5, -1)  # padded ids take no mass (as in the training forward)
    assert torch.allclose(lp, ref[[0, 1], tok])


def test_inverse_cdf_frequencies_match_the_distribution():
    torch.manual_seed(0)
    logits = torch.randn(1, 6)
    n = 20000
    u = torch.rand(n, dtype=torch.float64)
    tok, lp = sample(logits.expand(n, 6), temperature=0.8, uniforms=u)
    freq = torch.bincount(tok, minlength=6).double() / n
    p = torch.softmax(logits[0].double() / 0.8, -1)
    assert (freq - p).abs().max() < 0.015
    assert torch.allclose(lp, torch.log_softmax(logits / 0.8, -1)[0, tok])


def test_truncation_top_k_top_p_and_padding():
    z = torch.log(torch.tensor([[0.05, 0.4, 0.3, 0.2, 0.05]]))
    assert truncation_mask(z, top_k=2).tolist() == [[False, True, True, False, False]]
    assert truncation_mask(z, top_p=0.7).tolist() == [[False, True, True, False, False]]   # 0.4 + 0.3 >= 0.7
    assert truncation_mask(z, top_p=0.71).tolist() == [[False, True, True, True, False]]
    assert truncation_mask(z, top_p=0.01).tolist() == [[False, True, False, False, False]]  # top token always kept
    assert truncation_mask(z, vocab_size=3).tolist() == [[True, True, True, False, False]]
    u = torch.linspace(0, 0.999, 200, dtype=torch.float64)
    tok, _ = sample(z.expand(200, 5), top_k=3, top_p=0.8, uniforms=u, vocab_size=4)
    assert set(tok.tolist()) == {1, 2, 3}  # renormalised top-3: mass before id 3 is 0.78 < 0.8
    tok, _ = sample(z.expand(200, 5), top_k=3, top_p=0.75, uniforms=u, vocab_size=4)
    assert set(tok.tolist()) == {1, 2}


def test_request_uniforms_depend_only_on_the_seed():
    a = request_uniforms([5, 6, 7], 10)
    b = request_uniforms([7], 10)
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])
    assert a.dtype == torch.float64 and (a >= 0).all() and (a < 1).all()
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3) != mix_seed(1, 3, 2)
    assert 0 <= mix_seed(2 ** 70, -1) < 2 ** 63


def test_sampling_params_validation():
    assert SamplingParams(top_k=1).greedy
    for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_k=-1), dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_plan_batches_respects_the_budget_and_sorts_by_length():
    lens = [10, 3, 7, 3, 12]
    batches = plan_batches(lens, [5] * 5, token_budget=40)
    assert sorted(i for b in batches for i in b) == list(range(5))
    for b in batches:
        assert len(b) * (max(lens[i] for i in b) + 5) <= 40
    assert batches == [[1, 3, 2], [0, 4]]  # shortest prompts first (ties in input order), 3 x 12 <= 40
    mixed = plan_batches([2, 3], [9, 1], token_budget=22)  # cache = rows x (max prompt + max new) = 2 x 12 > 22
    assert mixed == [[0], [1]]
    with pytest.raises(ValueError, match="rollout.token_budget"):
        plan_batches([50], [5], token_budget=40)
