"""Continuous batching over a pool of decode slots: the ``rollout.engine: continuous`` engine.

    engine = ContinuousEngine(chunks, tokenizer, token_budget=cfg.rollout.token_budget, stop_token_ids=[eot, eos])
    rollouts = engine.generate(requests, SamplingParams.from_config(cfg.rollout))

Contract (log-prob convention, finish reasons, reproducibility): ``engine.py`` -- the same as the static engine,
and for the same requests and seeds the same tokens and log-probs (tested greedy and sampled at TP=1, TP=2, PP=2).
The model side (our own KV cache, attention, RoPE, CUDA graphs) is ``backend/infer/slot_model.py``; this file is the
scheduler.

The pool: ``N = min(#requests, token_budget // C, max_slots)`` slots of capacity ``C = max(prompt + max_new)``
tokens each (the cache holds ``N·C <= rollout.token_budget`` positions per layer). Every iteration:
  1. **admit**: waiting requests take free slots (lowest index first), longest ``max_new_tokens`` first (the
     longest jobs start early, so the tail of a long-tailed step is not one request decoding alone), a group's
     requests together. Requests with an identical prompt (a RIEL group's G samples) form one *prefill job*: the
     prompt is prefilled once, in the group's first slot (the leader), and its cache rows are copied into the
     other members' slots (``copy_prefix``); a member admitted later (the pool was full) copies from any live slot
     still holding that prompt, or prefills it again when none is left.
  2. **prefill**: one forward over the leaders that still have prompt tokens, at most ``prefill_tokens`` tokens
     in all (a longer prompt continues in the next iteration: chunked prefill, attending to its cached part). A
     leader whose prompt is complete yields the logits of its last token; every member samples its first token
     from them with its own uniform.
  3. **decode**: one token for every decoding slot ``0..hi-1`` (``hi`` = highest busy slot + 1; idle rows inside
     are masked). A request that hits a stop rule frees its slot *at once*; when fewer than half the rows below
     ``hi`` are busy, the highest busy slots move down into free ones (compaction: a copy of their cached rows).
Stop rules: a stop token (``finish_reason="eos"``, kept in the response), ``max_new_tokens`` (``"length"``), a
stop string in the decoded tail (``"stop"``), exactly as the static engine.

Sampling: ``sampling.sample`` on each request's own uniforms ``u[i, k]`` for its k-th token, so a sample is a pure
function of (its logits, its seed) and independent of which requests share its step. The sampled token's log-prob
(the rollout's ``old_logp``) is, by default (``fp32_logprobs``), computed the way training computes log-probs: the
fused hidden x W kernel in fp32 on the final-norm hidden states of the sampled rows
(``SlotModel.sampled_logprobs``), not the log-softmax of the model-dtype logits the sampler reads -- in bf16 those
differ from training's by ~1e-2 (benchmarks/gpu_readiness_cpu_20261207.md), so the GRPO ratio would not start at 1.
In an fp32 model (fp32 hidden states) the logits are that distribution to rounding, so the second
pass over the vocabulary is skipped (at vocabulary 32000 it was ~17% of a decode step on the CPU,
benchmarks/rollout_engines_cpu_20261207.md).
Under PP the last stage samples and broadcasts (tokens, log-probs) to every stage; every rank runs the same schedule
(it depends only on the requests and the broadcast tokens), so all ranks agree without further communication.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from ..backend.infer import inference
from ..backend.infer.slot_model import SlotModel, plain_torch, unsupported_reason
from ..types import Request, Rollout
from .api import SamplingParams
from .sampling import request_uniforms, sample


@dataclass
class _Job:
    """Requests sharing one prompt, waiting for (or in) prefill."""

    prompt: List[int]
    members: List[int]                 # request indices not yet admitted
    leader_slot: int = -1              # slot being prefilled (-1: not started)
    done_tokens: int = 0               # prompt tokens already in the leader's cache
    admitted: List[int] = field(default_factory=list)   # (request) members holding slots, incl. the leader's
    logits: Optional[torch.Tensor] = None                 # [1, V] of the prompt's last token (last stage)
    hidden: Optional[torch.Tensor] = None                 # [1, H] its final-norm hidden state (last stage)


class ContinuousEngine:
    """:class:`~megatron_meml.rollout.api.GenerationEngine` with continuous batching on megatron model chunks.

    Args:
        chunks: this rank's model chunks (used in place; left exactly as found).
        tokenizer: ``decode(ids)``, ``eos_id``, ``vocab_size``.
        token_budget: KV-cache positions of the slot pool (``rollout.token_budget``).
        stop_token_ids: ids that end a response (default ``tokenizer.eos_id``).
        vocab_size: real vocabulary (padded ids are never sampled).
        max_slots: cap on concurrent requests (``rollout.max_slots``; 0 = as many as the budget holds).
        prefill_tokens: prompt tokens per prefill forward (``rollout.prefill_tokens``); longer prompts are chunked.
        cuda_graphs: capture the decode step per batch bucket (CUDA only; ``rollout.cuda_graphs``).
        attention_impl: ``meml_kernels.decode_attention`` impl (``auto``: Triton on CUDA, torch on the CPU).
        comm: pipeline hand-off (``backend.infer.slot_model.StageComm``; default: megatron's parallel state).
        keep_cache: keep the KV pool (and its CUDA graphs) between calls (``rollout.keep_cache``); by default it is
            freed when ``generate`` returns, so training gets the memory back.
        fp32_logprobs: the sampled tokens' log-probs from the hidden states in fp32, as training computes them
            (default); False: from the logits the sampler reads (model dtype; kept to
            measure the gap).
    ``last_stats``: tokens, seconds, steps (forwards), prefill/decode forwards, peak busy slots of the latest call.
    """

    def __init__(self, chunks: Sequence[torch.nn.Module], tokenizer, token_budget: int = 8192,
                 stop_token_ids: Optional[Sequence[int]] = None, vocab_size: Optional[int] = None,
                 max_slots: int = 0, prefill_tokens: int = 2048, cuda_graphs: bool = True,
                 attention_impl: str = "auto", comm=None, keep_cache: bool = False, fp32_logprobs: bool = True):
        reason = unsupported_reason(chunks)
        if reason:
            raise ValueError(f"config key `rollout.engine`: continuous engine {reason}; use `static`")
        if prefill_tokens < 1:
            raise ValueError(f"prefill_tokens must be >= 1, got {prefill_tokens}")
        self.chunks = list(chunks)
        self.tokenizer = tokenizer
        self.token_budget = int(token_budget)
        self.stop_token_ids = sorted(set(stop_token_ids if stop_token_ids is not None else [tokenizer.eos_id]))
        self.vocab_size = int(vocab_size if vocab_size is not None else tokenizer.vocab_size)
        self.max_slots = int(max_slots)
        self.prefill_tokens = int(prefill_tokens)
        self.cuda_graphs = bool(cuda_graphs)
        self.attention_impl = attention_impl
        self.comm = comm
        self.keep_cache = bool(keep_cache)
        self.fp32_logprobs = bool(fp32_logprobs)
        self.last_stats: Dict[str, float] = {}
        self._model = None  # the SlotModel; kept across calls with keep_cache while the pool shape fits

    # ------------------------------------------------------------------------------------------------ setup
    def _pool(self, n_slots: int, capacity: int):
        m = self._model
        if m is None or m.num_slots < n_slots or m.capacity < capacity or m.num_slots * m.capacity > self.token_budget:
            if m is not None:
                m.close()
            self._model = SlotModel(self.chunks, n_slots, capacity, comm=self.comm,
                                    attention_impl=self.attention_impl, cuda_graphs=self.cuda_graphs)
        return self._model

    def release(self) -> None:
        """Free the KV cache and CUDA graphs held between calls."""
        if self._model is not None:
            self._model.close()
            self._model = None

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> List[Rollout]:
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"request {r.qid!r} (expert {r.expert}) has an empty prompt")
        if not requests:
            self.last_stats = {"tokens": 0, "seconds": 0.0, "steps": 0}
            return []
        t0 = time.perf_counter()
        max_new = [r.max_new_tokens or params.max_new_tokens for r in requests]
        need = [len(r.prompt_ids) + n for r, n in zip(requests, max_new)]
        C = max(need)
        if C > self.token_budget:
            i = need.index(C)
            raise ValueError(f"config key `rollout.token_budget`: a request needs {C} tokens (prompt "
                             f"{len(requests[i].prompt_ids)} + max_new {max_new[i]}) > budget {self.token_budget}")
        n_slots = min(len(requests), max(1, self.token_budget // C))
        if self.max_slots:
            n_slots = min(n_slots, self.max_slots)

        with inference.generation_mode(self.chunks):
            model = self._pool(n_slots, C)
            try:
                run = _Run(self, model, requests, max_new, params, n_slots)
                with plain_torch():  # the scheduler's own small ops skip the CPU runtime's per-op hook too
                    out = run.loop()
            finally:
                if not self.keep_cache:
                    self.release()
        self.last_stats = dict(run.stats, seconds=time.perf_counter() - t0,
                               tokens=float(sum(len(r.response_ids) for r in out)))
        return out


class _Run:
    """One ``generate`` call: the slot table, the waiting jobs and the per-request output buffers."""

    def __init__(self, eng: ContinuousEngine, model, requests, max_new, params: SamplingParams, n_slots: int):
        self.eng, self.m, self.reqs, self.params = eng, model, list(requests), params
        dev = self.dev = model.device
        R = len(requests)
        self.N = n_slots
        self.max_new = torch.tensor(max_new, dtype=torch.long, device=dev)
        self.plen = [len(r.prompt_ids) for r in requests]
        n_max = max(max_new)
        self.uni = None if params.greedy else request_uniforms([r.seed for r in requests], n_max).to(dev)
        self.out_tok = torch.zeros(R, n_max, dtype=torch.long, device=dev)
        self.out_lp = torch.zeros(R, n_max, dtype=torch.float32, device=dev)
        self.n_gen = torch.zeros(R, dtype=torch.long, device=dev)
        self.stop_ids = torch.tensor(eng.stop_token_ids, dtype=torch.long, device=dev)
        self.results: List[Optional[Rollout]] = [None] * R
        # slot table (host lists: changed only on admission / finish / compaction)
        self.slot_req = [-1] * n_slots
        self.slot_job: List[Optional[_Job]] = [None] * n_slots   # prefill job of a leader slot
        self.decoding = [False] * n_slots
        self.cur_tok = torch.zeros(n_slots, dtype=torch.long, device=dev)   # next input token of each slot
        self.cur_pos = torch.zeros(n_slots, dtype=torch.long, device=dev)   # its position
        self.prompt_slots: Dict[tuple, set] = {}                            # prompt -> live slots holding it
        self.stop_window = max((len(s.encode("utf-8")) for s in params.stop_strings), default=0) + 4
        order = sorted(range(R), key=lambda i: (-max_new[i], i))            # longest first, stable
        jobs: Dict[tuple, _Job] = {}
        for i in order:
            key = tuple(requests[i].prompt_ids)
            if key not in jobs:
                jobs[key] = _Job(list(requests[i].prompt_ids), [])
            jobs[key].members.append(i)
        self.waiting = deque(jobs.values())
        self.prefilling: List[_Job] = []
        self._pending: Dict[int, int] = {}                                  # request -> slot, awaiting prefill
        self.stats = {"steps": 0, "prefill_steps": 0, "decode_steps": 0, "peak_slots": 0, "prefill_tokens": 0}

    # --------------------------------------------------------------------------------------------- main loop
    def loop(self) -> List[Rollout]:
        while self.waiting or self.prefilling or any(self.decoding):
            self._admit()
            if self.prefilling:
                self._prefill_step()
            if any(self.decoding):
                self._decode_step()
        return self.results  # type: ignore[return-value]

    def _free_slots(self) -> List[int]:
        return [s for s in range(self.N) if self.slot_req[s] < 0]

    def _admit(self) -> None:
        free = self._free_slots()
        while free and self.waiting:
            job = self.waiting[0]
            key = tuple(job.prompt)
            take = job.members[:len(free)]
            job.members = job.members[len(take):]
            slots, free = free[:len(take)], free[len(take):]
            for s, i in zip(slots, take):
                self.slot_req[s] = i
            src = next(iter(self.prompt_slots.get(key, ())), None)
            if job.leader_slot >= 0 or src is None:   # fresh prefill (or this job is mid-prefill: join it)
                if job.leader_slot < 0:
                    job.leader_slot = slots[0]
                    self.slot_job[slots[0]] = job
                    self.prefilling.append(job)
                job.admitted.extend(take)
                for s, i in zip(slots, take):
                    self._pending[i] = s
            else:  # the prompt is cached in a live slot: copy it, first tokens from the job's saved logits
                self.m.copy_prefix(src, slots, len(job.prompt))
                self._start_decoding(list(zip(slots, take)), job.logits)
            if not job.members:
                self.waiting.popleft()
        self.stats["peak_slots"] = max(self.stats["peak_slots"], sum(r >= 0 for r in self.slot_req))

    def _prefill_step(self) -> None:
        budget = self.eng.prefill_tokens
        segs = []  # (job, start, n)
        for job in self.prefilling:
            if budget <= 0:
                break
            n = min(len(job.prompt) - job.done_tokens, budget)
            segs.append((job, job.done_tokens, n))
            budget -= n
        tokens = torch.tensor([t for job, s, n in segs for t in job.prompt[s:s + n]], dtype=torch.long)
        logits = self.m.prefill(tokens, [j.leader_slot for j, _, _ in segs], [s for _, s, _ in segs],
                                [n for _, _, n in segs])
        self.stats["steps"] += 1
        self.stats["prefill_steps"] += 1
        self.stats["prefill_tokens"] += int(tokens.numel())
        for k, (job, s, n) in enumerate(segs):
            job.done_tokens += n
            if job.done_tokens < len(job.prompt):
                continue
            self.prefilling.remove(job)
            members = [(self._pending.pop(i), i) for i in job.admitted]
            self.slot_job[job.leader_slot] = None
            others = [sl for sl, _ in members if sl != job.leader_slot]
            self.m.copy_prefix(job.leader_slot, others, len(job.prompt))
            job.logits = None if logits is None else logits[k:k + 1]
            job.hidden = None if logits is None else self.m.last_hidden[k:k + 1]
            self._start_decoding(members, job.logits, job.hidden)
            job.admitted = []
            # a member admitted later (the pool was full) copies from a live slot, or prefills anew
            job.leader_slot, job.done_tokens = -1, 0

    def _start_decoding(self, members, logits_row, hidden_row=None) -> None:
        """Sample the first response token of each (slot, request) in ``members`` from one prompt's logits."""
        reqs = [i for _, i in members]
        lg = None if logits_row is None else logits_row.expand(len(members), -1)
        hid = None if hidden_row is None else hidden_row.expand(len(members), -1)
        tok, lp = self._sample(lg, reqs, hid)
        key = tuple(self.reqs[reqs[0]].prompt_ids)
        for (s, i) in members:
            self.decoding[s] = True
            self.prompt_slots.setdefault(key, set()).add(s)
        slots = torch.tensor([s for s, _ in members], dtype=torch.long, device=self.dev)
        self.cur_pos[slots] = torch.tensor([self.plen[i] for i in reqs], dtype=torch.long, device=self.dev)
        self._record(slots, torch.tensor(reqs, dtype=torch.long, device=self.dev), tok, lp)

    def _sample(self, logits: Optional[torch.Tensor], reqs: List[int], hidden: Optional[torch.Tensor] = None):
        """(tokens, logp) [len(reqs)] on every rank (sampled on the last stage, broadcast under PP). ``hidden``: the
        rows' final-norm hidden states, for the fp32 log-probs (see the module docstring)."""
        n = len(reqs)
        if logits is not None:
            r = torch.tensor(reqs, dtype=torch.long, device=self.dev)
            u = None if self.uni is None else self.uni[r, self.n_gen[r].clamp_max(self.uni.shape[1] - 1)]
            tok, lp = sample(logits, self.params.temperature, self.params.top_k, self.params.top_p, u,
                             self.eng.vocab_size)
            if self.eng.fp32_logprobs and hidden is not None and hidden.dtype != torch.float32:
                lp = self.m.sampled_logprobs(hidden, tok, self.params.temperature, self.eng.vocab_size).float()
        if self.m.comm.pp_size > 1:
            packed = torch.stack([tok.double(), lp.double()]) if logits is not None else \
                torch.zeros(2, n, dtype=torch.float64, device=self.dev)
            packed = self.m.broadcast_from_last_stage(packed)
            tok, lp = packed[0].long(), packed[1].float()
        return tok, lp

    def _record(self, slots: torch.Tensor, reqs: torch.Tensor, tok: torch.Tensor, lp: torch.Tensor) -> None:
        """Append each request's new token; finish and free the slots that hit a stop rule."""
        k = self.n_gen[reqs]
        self.out_tok[reqs, k] = tok
        self.out_lp[reqs, k] = lp
        self.n_gen[reqs] = k + 1
        self.cur_tok[slots] = tok
        done = torch.isin(tok, self.stop_ids) | (k + 1 >= self.max_new[reqs])
        why_eos = torch.isin(tok, self.stop_ids)
        fin = done.nonzero().squeeze(-1).tolist()
        finished = {int(slots[j]): ("eos" if bool(why_eos[j]) else "length") for j in fin}
        if self.params.stop_strings:
            for j, (s, i) in enumerate(zip(slots.tolist(), reqs.tolist())):
                if s in finished:
                    continue
                n = int(self.n_gen[i])
                tail = self.eng.tokenizer.decode(self.out_tok[i, max(0, n - self.stop_window):n].tolist())
                if any(st in tail for st in self.params.stop_strings):
                    finished[s] = "stop"
        for s, why in finished.items():
            self._finish(s, why)
        if finished:
            self._compact()

    def _finish(self, s: int, why: str) -> None:
        i = self.slot_req[s]
        n = int(self.n_gen[i])
        ids = self.out_tok[i, :n].tolist()
        self.results[i] = Rollout(request=self.reqs[i], response_ids=ids, logprobs=self.out_lp[i, :n].tolist(),
                                  text=self.eng.tokenizer.decode(ids[:-1] if why == "eos" else ids),
                                  finish_reason=why)
        self.slot_req[s] = -1
        self.decoding[s] = False
        key = tuple(self.reqs[i].prompt_ids)
        live = self.prompt_slots.get(key)
        if live is not None:
            live.discard(s)
            if not live:
                del self.prompt_slots[key]

    def _compact(self) -> None:
        """Move the highest decoding slots into the lowest free ones while fewer than half the rows below ``hi``
        are busy (slots in prefill stay put: their job points at them)."""
        while True:
            busy = [s for s in range(self.N) if self.slot_req[s] >= 0]
            if not busy:
                return
            hi = busy[-1] + 1
            if 2 * len(busy) >= hi or hi <= 4:
                return
            src = busy[-1]
            if not self.decoding[src]:
                return
            dst = next(s for s in range(self.N) if self.slot_req[s] < 0)
            i = self.slot_req[src]
            self.m.move_slot(src, dst, int(self.cur_pos[src]))
            self.slot_req[dst], self.slot_req[src] = i, -1
            self.decoding[dst], self.decoding[src] = True, False
            self.cur_tok[dst], self.cur_pos[dst] = self.cur_tok[src], self.cur_pos[src]
            live = self.prompt_slots.get(tuple(self.reqs[i].prompt_ids))
            if live is not None and src in live:
                live.discard(src)
                live.add(dst)

    def _decode_step(self) -> None:
        busy = [s for s in range(self.N) if self.decoding[s]]
        hi = busy[-1] + 1
        active = None if len(busy) == hi else \
            torch.tensor([self.decoding[s] for s in range(hi)], dtype=torch.bool, device=self.dev)
        max_len = int(self.cur_pos[:hi].max()) + 1
        logits = self.m.decode(self.cur_tok[:hi], self.cur_pos[:hi], active, max_len)
        self.stats["steps"] += 1
        self.stats["decode_steps"] += 1
        rows = torch.tensor(busy, dtype=torch.long, device=self.dev)
        reqs = torch.tensor([self.slot_req[s] for s in busy], dtype=torch.long, device=self.dev)
        self.cur_pos[rows] += 1
        hid = None if logits is None else self.m.last_hidden.index_select(0, rows)
        tok, lp = self._sample(None if logits is None else logits.index_select(0, rows), reqs.tolist(), hid)
        self._record(rows, reqs, tok, lp)
