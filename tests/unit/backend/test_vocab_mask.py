"""Padded vocabulary ids carry no probability mass (``backend.train.model.mask_padded_vocab_``, the output-layer hook):
the masked logits give exactly the real-vocabulary distribution, exactly zero gradient to the padded rows of the
output weight, finite entropies, and a sampler that never picks them and reports the real-vocabulary log-prob."""
import pytest
import torch

from megatron_meml.backend.train.model import mask_padded_vocab_, padded_logit_value
from megatron_meml.rollout.sampling import sample

REAL, PADDED, H = 259, 384, 16


def _logits(tp: int):
    """Full logits from x @ W, masked shard by shard as each TP rank's hook would; and the inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, H, generator=g)
    w = torch.randn(PADDED, H, generator=g).requires_grad_(True)
    shards = []
    for r, wr in enumerate(w.chunk(tp)):
        z = x @ wr.t()
        shards.append(mask_padded_vocab_(z, REAL, PADDED, r * (PADDED // tp)))
    return torch.cat(shards, dim=-1), x, w


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_masked_logits_give_the_real_vocab_distribution_and_zero_padded_grads(tp):
    z, x, w = _logits(tp)
    real = x @ w[:REAL].detach().t()
    assert torch.equal(z[:, REAL:], torch.full_like(z[:, REAL:], padded_logit_value(torch.float32)))
    lp = torch.log_softmax(z, dim=-1)
    assert torch.allclose(lp[:, :REAL], torch.log_softmax(real, dim=-1), atol=1e-6)
    assert torch.exp(lp[:, REAL:]).sum().item() == 0.0
    p = lp.exp()
    entropy = -(p * lp).sum(-1)
    assert torch.isfinite(entropy).all()
    targets = torch.randint(0, REAL, (6,))
    torch.nn.functional.cross_entropy(z, targets).backward()
    assert torch.count_nonzero(w.grad[REAL:]) == 0 and torch.count_nonzero(w.grad[:REAL]) > 0


def test_mask_value_is_finite_in_every_dtype():
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        v = torch.tensor(padded_logit_value(dt), dtype=dt)
        assert torch.isfinite(v) and torch.isfinite(v.float() / 0.01)
        assert torch.exp(v.float() - 50.0).item() == 0.0  # no mass next to any real logit above -50


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (50.0, 0), (1.0, 1)])
def test_sampler_never_picks_padded_ids_and_reports_real_vocab_logp(temperature, top_k):
    z, x, w = _logits(2)
    z = z.detach()
    u = torch.rand(z.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tokens, logp = sample(z, temperature, top_k=top_k, uniforms=u)  # no vocab_size: the mask alone must do it
    assert (tokens < REAL).all()
    ref = torch.log_softmax(z[:, :REAL] / temperature, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.allclose(logp, ref, atol=1e-5)
