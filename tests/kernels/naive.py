"""Float64 naive formulas: the obviously-correct versions every kernel and torch twin is checked against."""
from __future__ import annotations

import torch


def logprobs_f64(logits, targets, valid, temperature=1.0, vocab_start=0):
    """logits [T, V] (any dtype, taken to float64 with grad) -> (logp [T], entropy [T], logits64 leaf)."""
    x = logits.detach().double().requires_grad_()
    logq = torch.log_softmax(x / temperature, dim=-1)
    local = (targets.long() - vocab_start).clamp(0, x.shape[1] - 1)
    logp = torch.where(valid, logq.gather(1, local[:, None]).squeeze(1), torch.zeros((), dtype=torch.float64))
    ent = torch.where(valid, -(logq.exp() * logq).sum(-1), torch.zeros((), dtype=torch.float64))
    return logp, ent, x


def token_loss_f64(logp, old, adv, kind, mask, weight, ref=None, eps_low=0.2, eps_high=0.2, beta=0.0,
                   ref_kl="k3", kl_estimator="k1"):
    """Per-token weighted loss in float64 through autograd (logp may require grad); returns (loss [T], clipped)."""
    old, adv, w = old.double(), adv.double(), weight.double() * mask.double()
    ratio = torch.exp(logp - old)
    s1 = ratio * adv
    s2 = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    l_pg = -torch.min(s1, s2)
    if ref is not None and beta != 0:
        delta = logp - ref.double()
        kl = {"k1": delta, "k2": 0.5 * delta ** 2, "k3": torch.exp(-delta) + delta - 1}[ref_kl]
        l_pg = l_pg + beta * kl
    d = logp - old
    l_kl = -d if kl_estimator == "k1" else torch.exp(d) - 1 - d
    l_sft = -logp
    zero = torch.zeros_like(logp)
    l = torch.where(kind == 0, l_pg, torch.where(kind == 1, l_kl, torch.where(kind == 2, l_sft, zero)))
    clipped = (s2 < s1) & (kind == 0) & (w != 0)
    return torch.where(w != 0, w * l, zero), clipped


def group_advantages_loop(rewards, keys, std_normalize=False, eps=1e-6, positive_only=False):
    """Python loop over groups, float64: the spec of ``meml_kernels.group_advantages``."""
    r = [float(x) for x in rewards.tolist()]
    k = [int(x) for x in keys.tolist()]
    out = [0.0] * len(r)
    for g in set(k):
        idx = [i for i, kk in enumerate(k) if kk == g]
        vals = [r[i] for i in idx]
        n = len(vals)
        mean = sum(vals) / n
        constant = all(v == vals[0] for v in vals)
        std = 0.0 if n == 1 else (sum((v - mean) ** 2 for v in vals) / (n - 1)) ** 0.5
        for i in idx:
            a = 0.0 if constant else r[i] - mean
            if std_normalize and not constant:
                a = a / (std + eps)
            if positive_only:
                a = max(a, 0.0)
            out[i] = a
    return torch.tensor(out, dtype=torch.float64)


def random_loss_inputs(t, generator=None, with_ref=True):
    """Random per-token loss inputs [T] covering every kind, masked tokens and ratios inside/outside the clip."""
    g = generator
    logp = -torch.rand(t, generator=g) * 4 - 0.05
    old = logp + 0.4 * torch.randn(t, generator=g)
    ref = logp + 0.4 * torch.randn(t, generator=g) if with_ref else None
    adv = torch.randn(t, generator=g)
    kind = torch.randint(0, 3, (t,), generator=g).to(torch.int8)
    mask = torch.rand(t, generator=g) > 0.2
    weight = torch.rand(t, generator=g) + 0.1
    return logp, old, ref, adv, kind, mask, weight
