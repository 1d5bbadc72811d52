"""The RIEL step's rollout scheduler: questions in, one forward-backward's worth of typed microbatches out.

    sched = build_riel_scheduler(cfg, chunks, tokenizer, expert_prompts, reward_fn)     # once
    out = sched.step(records, step)                                                       # per RIEL step
    backend.step.forward_backward(chunks, out.microbatches, loss_fn, temperature=cfg.rollout.temperature)

What :meth:`RielScheduler.step` does, in order:
  1. requests: question × expert × G, prompt = the question under expert e's system prompt, seed =
     ``mix_seed(seed, step, i)`` for the i-th request (seed = ``rollout.seed``, or the run's ``seed`` when null;
     so a request's sample depends on neither batch composition nor the DP layout);
  2. generation under the token budget — under data parallelism each DP rank generates every dp-th request and
     the rollouts are all-gathered, so every rank sees the whole step;
  2b. on a re-scoring step (``rescore`` given and ``rollout.mismatch_interval`` due, or an engine that always needs
     it: ``engine.needs_rescore``), the training forward's log-probs of the sampled tokens replace the engine's as
     old_logp (kept in ``Rollout.engine_logprobs``); the mismatch telemetry and the TIS weights of
     ``algo/rollout_correction.py`` come from the pair;
  3. rewards (verifier on the decoded text), one :class:`ScoredGroup` per (question, expert), advantages
     (``algo.advantages``), optionally weighted per (question, expert) (``riel.complement_weight``,
     ``algo.complementarity``);
  4. inter-expert KL pairs per question (``algo.inter_expert_kl``; ``riel.kl_gate`` may drop a pair), with
     ``riel.dynamic_sampling`` the all-equal cells replaced by fresh ones (``rollout.dynamic_sampling``), then
     hard-example admission of every generated cell and SFT firing (``algo.sft_buffer``) — identical on all
     ranks (same rollouts, same buffer RNG);
  5. training sequences: GRPO = every rollout (prompt + response, loss on the response, old_logp = rollout
     log-probs, advantage of its rollout); KL = each O+ response re-rendered after E−'s prompt (old_logp = its
     rollout log-probs under P+, reused: on-policy they are stopgrad log π(o|q,P+); the gradient flows through the
     P− forward only; under ``riel.async_rollout`` they are one step stale and ``kl_teacher`` recomputes them);
     SFT = the fired buffer examples (prompt + gold solution under P_e);
  6. aggregation weights over all sequences; GRPO rows with advantage 0 are then left out of the forward
     (``riel.skip_zero_advantage``: their loss and gradient are exactly 0 without a reference KL); packing into
     token-balanced microbatches per DP rank (``packing.plan_microbatches``), with the rows of one prompt sharing
     it once (``riel.share_prompts``); the three kinds interleave in one forward-backward pass.

``ref_logp`` is left None: a reference-KL (``riel.beta_ref > 0``) needs a frozen reference model, whose
``forward_logprobs`` the trainer writes into the GRPO microbatches.
"""
from __future__ import annotations

import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from ..algo.advantages import compute_advantages
from ..algo.complementarity import group_mean, kl_gate_open, weight_advantages
from ..algo.inter_expert_kl import KLPair, is_correct, kl_pair
from ..algo.rollout_correction import mismatch_metrics, tis_weights
from ..algo.sft_buffer import HardExample, HardExampleBuffer, admit_hard_examples
from ..backend.infer import inference
from ..backend.train.attention import supports_shared_rows
from ..data.templates import default_template, end_of_turn_id, render
from ..rewards import verify
from ..types import MicroBatch, Record, Request, Rollout, ScoredGroup, TokenKind
from .api import GenerationEngine, SamplingParams
from .dynamic_sampling import refill_cells
from .packing import TrainSequence, assign_weights, plan_microbatches
from .registry import build_engine
from .rescore import RolloutRescorer
from .sampling import mix_seed

RewardFn = Callable[[str, Record], float]
AllGather = Callable[[object], List[object]]


class PromptRenderer(Protocol):
    """Token ids of a question under an expert's system prompt."""

    def prompt(self, record: Record, expert: int) -> List[int]:
        """The generation prompt (ends with the assistant header)."""

    def example(self, record: Record, expert: int) -> Tuple[List[int], List[int]]:
        """(ids, loss_mask) of the gold solution answered under expert ``expert``'s prompt; ``ids`` starts with
        exactly ``prompt(record, expert)``."""


class ChatRenderer:
    """:class:`PromptRenderer` through the chat templates of ``data/templates.py`` (system turn = P_e)."""

    def __init__(self, tokenizer, expert_prompts: Sequence[str], template: Optional[str] = None):
        self.tokenizer = tokenizer
        self.expert_prompts = list(expert_prompts)
        self.template = template or default_template(tokenizer)

    def prompt(self, record: Record, expert: int) -> List[int]:
        return render(self.template, self.tokenizer, self.expert_prompts[expert], record.question)[0]

    def example(self, record: Record, expert: int) -> Tuple[List[int], List[int]]:
        return render(self.template, self.tokenizer, self.expert_prompts[expert], record.question, record.solution)


def verifier_reward(name: str) -> RewardFn:
    """The reward function of verifier ``name`` (``rewards.verify``: 0/1, never raises on model output)."""
    return lambda text, record: verify(name, text, record)


@dataclass
class RielStepOutput:
    """What one RIEL step hands to the trainer."""

    microbatches: List[MicroBatch]   # this DP rank's microbatches for backend.step.forward_backward
    groups: List[ScoredGroup]        # every (question, expert) group of the step, with rewards and advantages
    kl_pairs: List[KLPair]           # questions with an inter-expert KL term
    sft_examples: List[HardExample]  # the buffer examples that fired this step (empty most steps)
    stats: Dict[str, float] = field(default_factory=dict)
    # with step(..., split_terms=True): this DP rank's microbatches per term, in TokenKind order, for the terms that
    # have rows anywhere in the step (every rank gets the same kinds); ``microbatches`` is then their concatenation
    terms: Optional[List[Tuple[TokenKind, List[MicroBatch]]]] = None


class RielScheduler:
    """Builds a RIEL step's microbatches from a batch of questions (see module docstring).

    Args:
        engine: a :class:`GenerationEngine` (every rank of a model-parallel group gets the same requests).
        renderer: prompts and gold examples per (question, expert).
        reward_fn: ``(response_text, record) -> float`` (0/1).
        riel, rollout: ``cfg.riel`` / ``cfg.rollout``.
        num_experts: N.
        max_tokens_per_microbatch: padded tokens (rows × longest) per microbatch.
        pad_id: id used to right-pad microbatches (never a target: the loss mask is 0 there).
        buffer: the hard-example buffer (None or ``riel.hard_example_buffer=False`` disables SFT).
        dp_rank, dp_size, all_gather: data-parallel split of generation; ``all_gather(obj)`` returns every DP
            rank's ``obj`` in rank order (``backend.infer.inference.dp_all_gather_objects``).
        share_prompts: pack the rows of one prompt into prompt-sharing rows (``packing.shared_rows``); only for a
            model whose attention honours explicit masks (``backend.train.attention.supports_shared_rows``).
        kl_teacher: optional ``pairs -> pairs`` applied to the step's KL pairs before the KL rows are built; async
            RIEL uses it to replace the stale P+ log-probs of O+ by the current policy's
            (``stages/riel_async.KLTeacher``).
        rescore: optional ``rollouts -> training log-probs`` (``rollout/rescore.RolloutRescorer``; step 2b).
        seed: base seed of the requests (default ``rollout.seed``, 0 when that is null).
        refill_pool: the questions ``riel.dynamic_sampling`` draws fresh cells from (``rollout/dynamic_sampling``;
            the trainer sets the RIEL pool).
    """

    def __init__(self, engine: GenerationEngine, renderer: PromptRenderer, reward_fn: RewardFn, riel, rollout,
                 num_experts: int, max_tokens_per_microbatch: int, pad_id: int,
                 buffer: Optional[HardExampleBuffer] = None, dp_rank: int = 0, dp_size: int = 1,
                 all_gather: Optional[AllGather] = None, share_prompts: bool = False,
                 kl_teacher: Optional[Callable[[List[KLPair]], List[KLPair]]] = None, seed: Optional[int] = None,
                 refill_pool: Sequence[Record] = (),
                 rescore: Optional[Callable[[List[Rollout]], Optional[List[List[float]]]]] = None,
                 model_dtype: torch.dtype = torch.float32):
        if dp_size > 1 and all_gather is None:
            raise ValueError("data parallel generation needs an all_gather function")
        self.engine, self.renderer, self.reward_fn = engine, renderer, reward_fn
        self.riel, self.rollout = riel, rollout
        self.num_experts = int(num_experts)
        self.max_tokens = int(max_tokens_per_microbatch)
        self.pad_id = int(pad_id)
        self.buffer = buffer
        self.dp_rank, self.dp_size = int(dp_rank), int(dp_size)
        self.all_gather = all_gather or (lambda obj: [obj])
        self.params = SamplingParams.from_config(rollout)
        self.share_prompts = bool(share_prompts)
        self.kl_teacher = kl_teacher
        self.seed = int(seed if seed is not None else (rollout.seed or 0))
        self.refill_pool = list(refill_pool)
        self.rescore = rescore
        self.model_dtype = model_dtype
        self.rescore_seconds = 0.0  # time/rescore of the current step (generate_and_score adds to it)

    # 1. ---------------------------------------------------------------------------------------------------------
    def requests(self, records: Sequence[Record], step: int) -> List[Request]:
        """question × expert × G requests, in that nesting order."""
        out = []
        G = self.riel.group_size
        for q, rec in enumerate(records):
            for e in range(self.num_experts):
                prompt = self.renderer.prompt(rec, e)
                for _ in range(G):
                    out.append(Request(prompt_ids=list(prompt), qid=rec.id, expert=e,
                                       seed=mix_seed(self.seed, step, len(out))))
        return out

    # 2. ---------------------------------------------------------------------------------------------------------
    def rescoring(self, step: int) -> bool:
        """Whether step ``step`` re-scores its rollouts with the training forward (step 2b)."""
        if self.rescore is None:
            return False
        k = getattr(self.rollout, "mismatch_interval", 0)
        if k < 0:  # auto (rollout.mismatch_interval): every step unless the model computes in fp32
            k = 10 if self.model_dtype == torch.float32 else 1
        return bool(getattr(self.engine, "needs_rescore", False)) or bool(k and step % k == 0)

    def generate_and_score(self, requests: Sequence[Request], records: Sequence[Record],
                           rescore: bool = False) -> List[Rollout]:
        """Rollouts with rewards for all ``requests`` (this DP rank generates and scores every dp-th one)."""
        by_id = {r.id: r for r in records}
        mine = list(requests[self.dp_rank::self.dp_size])
        local = self.engine.generate(mine, self.params) if mine else []
        t0 = time.perf_counter()
        train = self.rescore(local) if rescore else None
        self.rescore_seconds += time.perf_counter() - t0 if rescore else 0.0
        for i, ro in enumerate(local):
            ro.reward = float(self.reward_fn(ro.text, by_id[ro.request.qid]))
            if train is not None:
                ro.engine_logprobs, ro.logprobs = ro.logprobs, train[i]
        parts = self.all_gather(local)
        out: List[Rollout] = [None] * len(requests)  # type: ignore[list-item]
        for rank, part in enumerate(parts):
            for j, ro in enumerate(part):
                out[rank + j * self.dp_size] = ro
        return out

    # 3.-6. ------------------------------------------------------------------------------------------------------
    def step(self, records: Sequence[Record], step: int, rollouts: Optional[List[Rollout]] = None,
             split_terms: bool = False) -> RielStepOutput:
        """One RIEL step's rollouts, groups, KL pairs, fired SFT examples and this DP rank's microbatches.
        Every rank of every parallel group calls it with the same ``records`` and ``step``. ``rollouts`` given
        (async RIEL: generated elsewhere, in ``requests`` order with rewards) replaces steps 1-2. ``split_terms``:
        pack GRPO, KL and SFT rows into separate microbatches (``RielStepOutput.terms``) so the trainer can measure
        each term's gradient (``backend/train/term_grads.py``); the weights, hence the summed loss, are the same."""
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a RIEL step needs distinct record ids, got {ids}")
        t0 = time.perf_counter()
        generated_here = rollouts is None
        self.rescore_seconds = 0.0
        if rollouts is None:
            rollouts = self.generate_and_score(self.requests(records, step), records, self.rescoring(step))
        t_gen = time.perf_counter() - t0
        G, N = self.riel.group_size, self.num_experts
        groups = [ScoredGroup(qid=records[q].id, expert=e, rollouts=rollouts[(q * N + e) * G:(q * N + e + 1) * G])
                  for q in range(len(records)) for e in range(N)]
        compute_advantages(groups, self.riel)
        for q in range(len(records)):  # riel.complement_weight (algo/complementarity.py); 0 = the paper
            weight_advantages(groups[q * N:(q + 1) * N], self.riel.complement_weight)
        pairs: List[KLPair] = []
        gated = 0
        if self.riel.inter_expert_kl and N > 1:
            for q in range(len(records)):
                p = kl_pair(groups[q * N:(q + 1) * N], self.riel.max_kl_responses,
                            tie_seed=mix_seed(self.seed, step, q, 0x7135))
                if p is not None and not kl_gate_open([group_mean(g) for g in groups[q * N:(q + 1) * N]], p.e_plus,
                                                      p.e_minus, self.riel.kl_gate, self.riel.kl_gate_threshold):
                    p, gated = None, gated + 1
                if p is not None:
                    pairs.append(p)
        if self.kl_teacher is not None and pairs:
            pairs = self.kl_teacher(pairs)
        train_groups, offered, by_id, ds_stats = groups, list(groups), {r.id: r for r in records}, {}
        if self.riel.dynamic_sampling and generated_here:  # rollout/dynamic_sampling.py

            t1 = time.perf_counter()
            rescore_refill = self.rescoring(step)  # refilled cells get the same old_logp source as the rest
            ref = refill_cells(groups, records, self.refill_pool, self.renderer.prompt,
                               lambda reqs, recs: self.generate_and_score(reqs, recs, rescore_refill),
                               self.riel, step, self.seed)
            train_groups, ds_stats = ref.kept, dict(ref.stats, **{"dynamic/seconds": time.perf_counter() - t1})
            offered += ref.generated
            by_id.update(ref.records)
            t_gen += ds_stats["dynamic/seconds"]
        fired: List[HardExample] = []
        if self.buffer is not None and self.riel.hard_example_buffer:  # every generated cell, dropped ones too
            fired = admit_hard_examples(self.buffer, offered, by_id, self.riel.buffer_k)

        seqs = self.sequences(records, train_groups, pairs, fired)
        assign_weights(seqs, self.riel.aggregation, [1.0, self.riel.lambda_kl, self.riel.lambda_sft],
                       constant=self.riel.constant_normalizer or self.rollout.max_new_tokens,
                       normalizers=["own", self.riel.kl_normalizer, self.riel.sft_normalizer])
        train = seqs
        if self.riel.skip_zero_advantage and self.riel.beta_ref == 0:  # l_t = -min(r·0, clip(r)·0) = 0, no gradient
            train = [s for s in seqs if not (s.kind == TokenKind.GRPO and s.advantage == 0.0)]
        pack = lambda rows: plan_microbatches(rows, self.max_tokens, self.dp_size, self.pad_id,  # noqa: E731
                                              share_prompts=self.share_prompts,
                                              max_row_tokens=self.riel.shared_row_tokens)
        terms = None
        if split_terms and train:
            terms = [(k, pack(rows)[self.dp_rank]) for k in TokenKind
                     for rows in [[s for s in train if s.kind == k]] if rows]
            mine = [mb for _, mbs in terms for mb in mbs]
        else:
            mine = pack(train)[self.dp_rank]
        stats = self._stats(groups, pairs, fired, seqs, mine, t_gen)
        stats.update(ds_stats)
        stats["kl/gated_out"] = float(gated)
        stats["rollout/tokens"] = float(sum(len(r.response_ids) for g in offered for r in g.rollouts))
        stats["rows/skipped_zero_advantage"] = float(len(seqs) - len(train))
        stats["tokens/forward"] = float(sum(mb.tokens.numel() for mb in mine))
        return RielStepOutput(mine, groups, pairs, fired, stats, terms)

    def sequences(self, records: Sequence[Record], groups: Sequence[ScoredGroup], pairs: Sequence[KLPair],
                  fired: Sequence[HardExample]) -> List[TrainSequence]:
        """The step's training rows: GRPO (every rollout), KL (O+ under P−), SFT (fired buffer examples)."""
        seqs: List[TrainSequence] = []
        cap = getattr(self.riel, "tis_cap", 0.0)
        for g in groups:
            for i, (ro, a) in enumerate(zip(g.rollouts, g.advantages)):
                w = None if ro.engine_logprobs is None else tis_weights(ro.logprobs, ro.engine_logprobs, cap)
                seqs.append(TrainSequence.from_prompt_response(ro.request.prompt_ids, ro.response_ids,
                                                               TokenKind.GRPO, ro.logprobs, a,
                                                               tag=f"grpo/{g.qid}/e{g.expert}/g{i}",
                                                               response_scale=w))
        by_id = {r.id: r for r in records}
        for p in pairs:
            prompt = self.renderer.prompt(by_id[p.qid], p.e_minus)
            for i, ro in enumerate(p.responses):
                seqs.append(TrainSequence.from_prompt_response(prompt, ro.response_ids, TokenKind.KL, ro.logprobs,
                                                               tag=f"kl/{p.qid}/e{p.e_plus}->e{p.e_minus}/o{i}"))
        for i, ex in enumerate(fired):
            ids, mask = self.renderer.example(ex.record, ex.expert)
            seqs.append(TrainSequence(list(ids), list(mask), TokenKind.SFT, tag=f"sft/{ex.record.id}/e{ex.expert}"))
        return seqs

    def _stats(self, groups, pairs, fired, seqs, plan: Sequence[MicroBatch], t_gen) -> Dict[str, float]:
        per_expert: Dict[int, List[float]] = defaultdict(list)
        for g in groups:
            per_expert[g.expert].extend(g.rewards)
        stats: Dict[str, float] = {f"reward/expert{e}": sum(v) / len(v) for e, v in sorted(per_expert.items())}
        rewards = [r for v in per_expert.values() for r in v]
        stats["reward/mean"] = sum(rewards) / max(len(rewards), 1)
        stats["reward/accuracy"] = sum(is_correct(r) for r in rewards) / max(len(rewards), 1)
        for kind in TokenKind:
            stats[f"tokens/{kind.name.lower()}"] = float(sum(s.num_loss_tokens for s in seqs if s.kind == kind))
        stats["kl/questions"] = float(len(pairs))
        stats["sft/fired"] = float(len(fired))
        stats["buffer/size"] = float(len(self.buffer)) if self.buffer is not None else 0.0
        stats["microbatches"] = float(len(plan))
        gen = getattr(self.engine, "last_stats", {}) or {}
        stats["rollout/seconds"] = t_gen  # generation, scoring and the re-scoring forward (time/rescore)
        stats["time/rescore"] = getattr(self, "rescore_seconds", 0.0)
        if gen.get("seconds"):
            stats["rollout/tokens_per_s"] = gen["tokens"] / gen["seconds"]
        stats.update(mismatch_metrics([(g.expert, r.engine_logprobs, r.logprobs) for g in groups for r in g.rollouts
                                       if r.engine_logprobs is not None], getattr(self.riel, "tis_cap", 0.0)))
        stats["response/mean_len"] = (sum(len(r.response_ids) for g in groups for r in g.rollouts)
                                      / max(sum(len(g.rollouts) for g in groups), 1))
        return stats


def build_riel_scheduler(cfg, chunks, tokenizer, expert_prompts: Sequence[str], reward_fn: RewardFn,
                         buffer: Optional[HardExampleBuffer] = None, engine: Optional[GenerationEngine] = None,
                         kl_teacher: Optional[Callable[[List[KLPair]], List[KLPair]]] = None,
                         refill_pool: Sequence[Record] = ()) -> RielScheduler:
    """The training setup: the ``rollout.engine`` engine on ``chunks`` (stop on the template's end-of-turn and EOS),
    chat prompts, the hard-example buffer (seeded from ``cfg.seed`` unless given), microbatches of at most
    ``data.micro_batch_size × data.seq_length`` padded tokens, DP split from megatron's groups. ``engine`` replaces
    the configured engine (async RIEL's training ranks pass one that refuses to generate)."""
    template = cfg.data.chat_template or default_template(tokenizer)
    stop_ids = sorted({end_of_turn_id(template, tokenizer), tokenizer.eos_id})
    if engine is None:
        engine = build_engine(cfg.rollout, chunks, tokenizer, stop_token_ids=stop_ids, run_cfg=cfg)
    if buffer is None and cfg.riel.hard_example_buffer:
        buffer = HardExampleBuffer.from_config(cfg.riel, seed=cfg.seed)
    dp_rank, dp_size = inference.data_parallel_rank_size()
    share = cfg.riel.share_prompts
    if share and not supports_shared_rows(chunks):
        warnings.warn("riel.share_prompts: this model's attention ignores explicit masks (Transformer Engine); "
                      "training rows are packed one sequence per row")
        share = False

    rescore = RolloutRescorer(chunks, tokenizer.pad_id, cfg.data.micro_batch_size * cfg.data.seq_length,
                              cfg.rollout.temperature)
    return RielScheduler(engine, ChatRenderer(tokenizer, expert_prompts, template), reward_fn, cfg.riel, cfg.rollout,
                         num_experts=len(expert_prompts),
                         max_tokens_per_microbatch=cfg.data.micro_batch_size * cfg.data.seq_length,
                         pad_id=tokenizer.pad_id, buffer=buffer, dp_rank=dp_rank, dp_size=dp_size,
                         all_gather=inference.dp_all_gather_objects, share_prompts=share, kl_teacher=kl_teacher,
                         seed=cfg.rollout.seed if cfg.rollout.seed is not None else cfg.seed,
                         refill_pool=refill_pool, rescore=rescore,
                         model_dtype=next(chunks[0].parameters()).dtype)
