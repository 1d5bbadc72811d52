"""Token sampling from last-position logits with per-request reproducible noise (plain torch).

Per-request noise: request i owns a ``torch.Generator`` seeded with its ``seed``; before decoding, it draws the
uniforms ``u[i, k]`` (k = 0 .. max_new-1, fp64) its k-th generated token will use. A sample is then a pure function
of (that request's logits, its own uniform), so it does not depend on batch composition or on how many other
requests already finished. The generators live on the CPU (same stream on every device); there is no per-step
Python loop over requests.

Sampling by inverse CDF (one uniform per token instead of a vocabulary of Gumbel noise):

    z      = logits / T                                      [B, V] (fp32 logits, padded vocabulary)
    keep   = (id < vocab_size) ∧ top-k ∧ top-p               (truncation; ties at the k-th value are kept)
    p      = softmax(z masked to keep)                        computed in fp64
    token  = min{ j : cdf_j > u · cdf_{V-1} },  cdf = cumsum(p) in vocabulary order
    logp   = log_softmax(z[:vocab_size])[token]               untruncated, over the real vocabulary: see engine.py

top-p (nucleus): keep the most probable tokens, in descending order, while the mass *before* a token is < top_p
(so the top token is always kept); it is applied after top-k, on the renormalised top-k distribution (HF order).
Greedy (``top_k == 1``): argmax of z over the real vocabulary, no noise, ties → lowest id.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (splitmix64 chain; independent of Python's hash randomisation). Used to
    derive a request's seed from (run seed, step, question, expert, sample)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x >> 1


def request_uniforms(seeds: Sequence[int], n: int) -> torch.Tensor:
    """[len(seeds), n] fp64 uniforms in [0, 1): row i from a generator seeded with ``seeds[i]`` (CPU)."""
    out = torch.empty(len(seeds), n, dtype=torch.float64)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s))
        out[i] = torch.rand(n, generator=g, dtype=torch.float64)
    return out


def truncation_mask(z: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                    vocab_size: Optional[int] = None) -> torch.Tensor:
    """[B, V] bool: the ids a sample may take (real vocabulary, top-k, then top-p), see the module docstring."""
    keep = torch.ones_like(z, dtype=torch.bool)
    if vocab_size is not None and vocab_size < z.shape[-1]:
        keep[:, vocab_size:] = False
    if top_k > 0 and top_k < z.shape[-1]:
        masked = z.masked_fill(~keep, float("-inf"))
        kth = torch.topk(masked, top_k, dim=-1).values[:, -1:]
        keep &= masked >= kth
    if top_p < 1.0:
        p = torch.softmax(z.double().masked_fill(~keep, float("-inf")), dim=-1)
        sp, order = torch.sort(p, dim=-1, descending=True, stable=True)
        before = torch.cumsum(sp, dim=-1) - sp
        keep_sorted = before < top_p
        keep_sorted[:, 0] = True
        keep &= torch.zeros_like(keep).scatter(-1, order, keep_sorted)
    return keep


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           uniforms: Optional[torch.Tensor] = None,
           vocab_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] (fp32), uniforms [B] fp64 in [0, 1) (ignored when ``top_k == 1``) -> (tokens [B] int64,
    logp [B] fp32 = log_softmax(logits / T)[token] over the real vocabulary: ids < ``vocab_size``, all of V when
    None)."""
    # Padded ids (>= vocab_size) can never be drawn, so everything runs on the real columns only: the same tokens
    # as over the padded row (its extra columns add 0 to the CDF), half the work at a 259-of-512 vocabulary.
    real = logits.float() if vocab_size is None or vocab_size >= logits.shape[-1] else logits[:, :vocab_size].float()
    z = real / temperature
    if top_k == 1:
        tokens = z.argmax(dim=-1)
    else:
        if uniforms is None:
            raise ValueError("sampling with top_k != 1 needs one uniform per row")
        zk = z.double()
        if top_k > 0 or top_p < 1.0:
            zk = zk.masked_fill(~truncation_mask(z, top_k, top_p), float("-inf"))
        p = torch.exp(zk - zk.max(dim=-1, keepdim=True).values)
        cdf = torch.cumsum(p, dim=-1)
        x = uniforms.to(cdf.device, torch.float64) * cdf[:, -1]
        tokens = torch.searchsorted(cdf, x.unsqueeze(-1), right=True).squeeze(-1).clamp_max(z.shape[-1] - 1)
    logp = torch.log_softmax(z, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, logp
