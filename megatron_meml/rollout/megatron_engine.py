"""Generation on the Megatron training weights (no copy, no weight sync) with megatron-core's static KV cache.

    engine = MegatronEngine(chunks, tokenizer, token_budget=cfg.rollout.token_budget)
    rollouts = engine.generate(requests, SamplingParams.from_config(cfg.rollout))

Contract (log-prob convention, reproducibility, finish reasons): ``engine.py``. Sampling: ``sampling.py``.
Megatron specifics (cache, masks, pipeline hand-off, TP gather): ``backend/infer/inference.py``.

Batching: requests are sorted by prompt length and cut greedily into generation batches whose KV cache,
``rows × max(prompt_len + max_new)`` token slots, fits ``token_budget`` (:func:`plan_batches`).

Prompts of different lengths in one batch -- two cache layouts (row i's prompt starts at slot ``start_i``):
  * ``aligned`` (default where the attention honours an explicit mask: megatron's local spec): prompts are
    left-padded so they all end at slot P = max len (``start_i = P - L_i``); one prefill of ``[B, P]`` with a
    causal + padding mask, then every row decodes in lock-step with its padding slots masked. RoPE is relative, so
    the shift changes nothing but fp32 rounding (the tests compare with the unshifted no-cache twin).
  * ``contiguous`` (Transformer Engine attention, or ``layout="contiguous"``): every row starts at slot 0, no mask.
    The shortest prompt is prefilled for all rows, then the batch advances one slot per step; a row still inside
    its prompt takes its next prompt token, a row past it its sampled token (megatron's own static controller).
    Costs ``max L - min L`` extra steps; sorting by length keeps them few.

Decode loop, per step (tensor ops over the batch, no Python loop over requests unless stop strings are set):
one-token forward through the cache -> sample on the last stage -> broadcast ids and log-probs to every stage ->
write them into the preallocated ``[B, S]`` token / log-prob buffers -> update finish flags. When a quarter of the
rows have finished, they are dropped from the batch and the cache (``PipelineForward.select_rows``). Identical
prompts in a batch (the G samples of a group) are prefilled once and their cache rows copied.

``use_cache=False`` is the obviously-correct twin: the same loop, re-running every row's real tokens (gathered
right-padded from slot 0, exactly the training forward) every step.

The model is switched to eval mode under no_grad for the call and handed back exactly as found (training flag
restored, pipeline input cleared, cache freed); the tests check parameters, flags and module state.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import torch

from ..backend.infer import inference
from ..types import Request, Rollout
from .api import SamplingParams
from .sampling import request_uniforms, sample

LENGTH, EOS, STOP = 0, 1, 2
REASONS = {LENGTH: "length", EOS: "eos", STOP: "stop"}


def plan_batches(prompt_lens: Sequence[int], max_new: Sequence[int], token_budget: int) -> List[List[int]]:
    """Request indices grouped into generation batches, shortest prompts first: a batch of n rows allocates a
    cache of ``n × (max prompt_len + max max_new)`` token slots, which stays within ``token_budget``. A request that
    does not fit alone is an error naming ``rollout.token_budget``."""
    order = sorted(range(len(prompt_lens)), key=lambda i: (prompt_lens[i], i))
    batches: List[List[int]] = []
    cur: List[int] = []
    max_l = max_n = 0
    for i in order:
        if prompt_lens[i] + max_new[i] > token_budget:
            raise ValueError(f"config key `rollout.token_budget`: a request needs {prompt_lens[i] + max_new[i]} "
                             f"tokens (prompt {prompt_lens[i]} + max_new {max_new[i]}) > budget {token_budget}")
        l, n = max(max_l, prompt_lens[i]), max(max_n, max_new[i])
        if cur and (len(cur) + 1) * (l + n) > token_budget:
            batches.append(cur)
            cur, l, n = [], prompt_lens[i], max_new[i]
        cur.append(i)
        max_l, max_n = l, n
    if cur:
        batches.append(cur)
    return batches


class MegatronEngine:
    """:class:`~megatron_meml.rollout.api.GenerationEngine` on megatron-core model chunks.

    Args:
        chunks: this rank's model chunks (``backend.train.model.build_model``), used in place.
        tokenizer: ``decode(ids) -> str`` (stop strings, rollout text) and ``eos_id`` / ``vocab_size``.
        token_budget: cache slots per generation batch (``rollout.token_budget``).
        stop_token_ids: ids that end a response (default: ``tokenizer.eos_id``; pass the template's end-of-turn).
        vocab_size: real vocabulary; ids at or above it (embedding padding) are never sampled.
        use_cache: False runs the no-cache twin (full re-forward per token).
        layout: ``"auto"`` (aligned where supported, else contiguous), ``"aligned"`` or ``"contiguous"``.

    Every rank of the model-parallel group calls :meth:`generate` with the same requests and gets the same
    rollouts. ``last_stats`` holds the counters of the latest call (tokens, seconds, batches, steps).
    """

    def __init__(self, chunks: Sequence[torch.nn.Module], tokenizer, token_budget: int = 8192,
                 stop_token_ids: Optional[Sequence[int]] = None, vocab_size: Optional[int] = None,
                 use_cache: bool = True, layout: str = "auto"):
        if layout not in ("auto", "aligned", "contiguous"):
            raise ValueError(f"layout must be auto | aligned | contiguous, got {layout!r}")
        self.chunks = list(chunks)
        self.layout = layout
        self.tokenizer = tokenizer
        self.token_budget = int(token_budget)
        self.stop_token_ids = sorted(set(stop_token_ids if stop_token_ids is not None else [tokenizer.eos_id]))
        self.vocab_size = int(vocab_size if vocab_size is not None else tokenizer.vocab_size)
        self.use_cache = use_cache
        self.last_stats: Dict[str, float] = {}

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> List[Rollout]:
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"request {r.qid!r} (expert {r.expert}) has an empty prompt")
        max_new = [r.max_new_tokens or params.max_new_tokens for r in requests]
        out: List[Optional[Rollout]] = [None] * len(requests)
        t0 = time.perf_counter()
        stats = {"tokens": 0, "batches": 0, "steps": 0}
        with inference.generation_mode(self.chunks):
            for batch in plan_batches([len(r.prompt_ids) for r in requests], max_new, self.token_budget):
                rollouts, steps = self._generate_batch([requests[i] for i in batch], [max_new[i] for i in batch],
                                                       params)
                for i, ro in zip(batch, rollouts):
                    out[i] = ro
                stats["batches"] += 1
                stats["steps"] += steps
                stats["tokens"] += sum(len(ro.response_ids) for ro in rollouts)
        self.last_stats = dict(stats, seconds=time.perf_counter() - t0)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------------------------
    def _generate_batch(self, reqs: List[Request], max_new: List[int], params: SamplingParams):
        """One generation batch; returns (rollouts in ``reqs`` order, number of forward steps)."""
        L = torch.tensor([len(r.prompt_ids) for r in reqs])
        N = torch.tensor(max_new)
        S = int(L.max() + N.max())
        runner = inference.PipelineForward(self.chunks, len(reqs), S, use_cache=self.use_cache)
        try:
            aligned = self.layout == "aligned" or (self.layout == "auto" and runner.supports_attention_mask)
            if aligned and not runner.supports_attention_mask and self.use_cache:
                raise ValueError("layout='aligned' needs an attention that honours explicit masks (local spec)")
            start = L.max() - L if aligned else torch.zeros_like(L)
            return self._decode(runner, reqs, start, L, N, S, params)
        finally:
            runner.close()

    def _decode(self, runner, reqs, start, L, N, S, params: SamplingParams):
        """The decode loop. Row r holds its prompt at slots ``[start_r, start_r + L_r)`` and its k-th response
        token at slot ``start_r + L_r + k``; all per-row tensors are compacted together when rows finish."""
        dev = runner.device
        B = len(reqs)
        tokens = torch.zeros(B, S, dtype=torch.long)  # unused slots only ever feed padding / finished rows
        for i, r in enumerate(reqs):
            tokens[i, int(start[i]):int(start[i] + L[i])] = torch.tensor(r.prompt_ids, dtype=torch.long)
        tokens = tokens.to(dev)
        start, N = start.to(dev), N.to(dev)
        first = start + L.to(dev)  # first response slot of each row
        key_mask = None
        if bool((start > 0).any()) and self.use_cache:
            key_mask = torch.arange(S, device=dev)[None, :] < start[:, None]
        logp = torch.zeros(B, S, dtype=torch.float32, device=dev)
        n_max = int(N.max())
        uni = None if params.greedy else request_uniforms([r.seed for r in reqs], n_max).to(dev)
        n_gen = torch.zeros(B, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        reason = torch.full((B,), LENGTH, dtype=torch.int8, device=dev)
        rows = torch.arange(B, device=dev)  # original index (in reqs) of each current row
        stop_ids = torch.tensor(self.stop_token_ids, dtype=torch.long, device=dev)
        results: List[Optional[Rollout]] = [None] * B
        stop_window = max((len(s.encode("utf-8")) for s in params.stop_strings), default=0) + 4

        pos = int(first.min()) - 1  # last slot fed to the model
        logits = self._prefill(runner, tokens, key_mask, start, pos)
        steps = 1
        while True:
            col = pos + 1  # the slot the current logits predict
            gen = (first <= col) & ~done  # rows for which slot `col` is a response token
            if logits is not None:  # last pipeline stage
                u = None if uni is None else uni[torch.arange(len(rows), device=dev), n_gen.clamp_max(n_max - 1)]
                tok, lp = sample(logits, params.temperature, params.top_k, params.top_p, u, self.vocab_size)
            if runner.pp > 1:  # ids and log-probs from the last stage to every stage (one broadcast)
                packed = torch.stack([tok.double(), lp.double()]) if logits is not None else \
                    torch.zeros(2, tokens.shape[0], dtype=torch.float64, device=dev)
                packed = runner.broadcast_from_last_stage(packed)
                tok, lp = packed[0].long(), packed[1].float()
            tokens[:, col] = torch.where(gen, tok, tokens[:, col])
            logp[:, col] = torch.where(gen, lp, torch.zeros_like(lp))
            n_gen += gen.long()
            hit_eos = gen & torch.isin(tok, stop_ids)
            reason[hit_eos] = EOS
            done |= hit_eos | (gen & (n_gen >= N))
            if params.stop_strings:
                self._check_stop_strings(tokens, first, gen & ~done, col, stop_window, params.stop_strings, done,
                                         reason)
            if bool(done.all()):
                break
            pos += 1
            n_active = int((~done).sum())
            if 4 * n_active <= 3 * len(rows):
                self._collect(results, reqs, rows, tokens, logp, first, n_gen, reason, done)
                keep = (~done).nonzero().squeeze(-1)
                runner.select_rows(keep)
                tokens, logp, start, first, N, n_gen, done, reason, rows = (
                    t.index_select(0, keep) for t in (tokens, logp, start, first, N, n_gen, done, reason, rows))
                if uni is not None:
                    uni = uni.index_select(0, keep)
                if key_mask is not None:
                    key_mask = key_mask.index_select(0, keep)
            logits = self._forward(runner, tokens, key_mask, start, pos, prefill=False)
            steps += 1
        self._collect(results, reqs, rows, tokens, logp, first, n_gen, reason, torch.ones_like(done))
        return results, steps

    def _prefill(self, runner, tokens, key_mask, start, pos: int):
        """The first forward (slots ``0..pos``). Rows whose prefill input is identical -- a RIEL step's G samples
        of one (question, expert) share their prompt -- are prefilled once and their cache rows copied
        (``select_rows`` with repeated indices)."""
        if not self.use_cache:
            return self._forward(runner, tokens, key_mask, start, pos, prefill=True)
        B = tokens.shape[0]
        _, inverse = torch.unique(torch.cat([tokens[:, :pos + 1], start[:, None]], dim=1), dim=0,
                                  return_inverse=True)
        U = int(inverse.max()) + 1
        if U == B:
            return self._forward(runner, tokens, key_mask, start, pos, prefill=True)
        rep = torch.full((U,), B, dtype=torch.long, device=tokens.device).scatter_reduce(
            0, inverse, torch.arange(B, device=tokens.device), "amin")  # first row of each distinct prefill
        logits = runner.forward(tokens[rep, :pos + 1], None if key_mask is None else key_mask[rep])
        runner.select_rows(inverse)
        return None if logits is None else logits[inverse]

    def _forward(self, runner, tokens, key_mask, start, pos: int, prefill: bool):
        """Logits predicting slot ``pos + 1`` of every row (last stage; None elsewhere)."""
        if self.use_cache:
            return runner.forward(tokens[:, :pos + 1] if prefill else tokens[:, pos:pos + 1], key_mask)
        # the twin: each row's real tokens from slot start_r to pos, right-padded from position 0 (training layout)
        idx = (start[:, None] + torch.arange(pos + 1, device=tokens.device)[None, :]).clamp_max(pos)
        return runner.forward(tokens.gather(1, idx), last_index=pos - start)

    def _check_stop_strings(self, tokens, first, candidates, col, window, stop_strings, done, reason) -> None:
        """Mark rows whose response now contains a stop string. Any new occurrence ends in the newest token, so
        decoding the last ``window`` response tokens (longest stop string in bytes + 4) finds it (every token
        decodes to at least one byte, except special tokens, which cannot be part of a stop string)."""
        for r in candidates.nonzero().squeeze(-1).tolist():
            lo = max(int(first[r]), col + 1 - window)
            tail = self.tokenizer.decode(tokens[r, lo:col + 1].tolist())
            if any(s in tail for s in stop_strings):
                done[r] = True
                reason[r] = STOP

    def _collect(self, results, reqs, rows, tokens, logp, first, n_gen, reason, which) -> None:
        """Write the rollouts of the current rows selected by ``which`` into ``results`` (by original index)."""
        sel = which.nonzero().squeeze(-1).tolist()
        if not sel:
            return
        rows_l, first_l, n_l, reason_l = rows.tolist(), first.tolist(), n_gen.tolist(), reason.tolist()
        for r in sel:
            b = rows_l[r]
            if results[b] is not None:
                continue
            lo, hi = first_l[r], first_l[r] + n_l[r]
            ids = tokens[r, lo:hi].tolist()
            why = REASONS[reason_l[r]]
            text_ids = ids[:-1] if why == "eos" else ids
            results[b] = Rollout(request=reqs[b], response_ids=ids, logprobs=logp[r, lo:hi].tolist(),
                                 text=self.tokenizer.decode(text_ids), finish_reason=why)
