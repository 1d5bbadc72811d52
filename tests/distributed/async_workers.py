"""Workers of the async-RIEL tests (tests/distributed/test_async_riel.py): one set of 3 gloo processes runs every
phase in turn, re-splitting the job each time (the processes' imports are the expensive part on a small machine).

Rewards: the synthetic verifier gives a random tiny model 0 everywhere (no GRPO or KL rows), so the phases that
train replace it with the parity of the response length: a mixed, deterministic reward."""
from __future__ import annotations

import os
import shutil
import time
from typing import Any, Dict, List

import torch

MODEL = ["model.num_layers=2", "model.hidden_size=32", "model.ffn_hidden_size=64", "model.num_attention_heads=4",
         "model.num_query_groups=2", "model.max_position_embeddings=128"]
RUN = MODEL + ["mef.enabled=false", "eval.enabled=false", "logging.progress_bar=false", "logging.tensorboard=false",
               "data.seq_length=96", "data.micro_batch_size=8", "riel.questions_per_step=2", "riel.group_size=4",
               "riel.buffer_k=2", "riel.buffer_capacity=3", "riel.lr=3e-3", "optimizer.lr_warmup_steps=0",
               "rollout.max_new_tokens=10", "rollout.token_budget=4096"]


def _use_parity_reward() -> None:
    """The synthetic verifier of this process scores the parity of the response length (module docstring)."""
    from megatron_meml.rewards import registry

    registry._REGISTRY["synthetic"] = lambda text, record: registry.judge(len(text) % 2 == 1)


def _cfg(run_dir: str, *extra: str):
    from megatron_meml.config import load_config

    return load_config("examples/quickstart/config.yaml", RUN + [f"logging.run_dir={run_dir}", *extra])


def _metrics(run_dir: str) -> Dict[int, Dict[str, float]]:
    import json

    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        row = json.loads(line)
        out[row["step"]] = row
    return out


# --------------------------------------------------------------------------------------------------- phase 0
def sync_phase(tmp: str) -> Dict[str, Any]:
    """Async off (3 training ranks, DP 3): ``run_riel`` equals the plain synchronous composition step for step and
    bit for bit, and never starts the async machinery (no rollout link, no async metrics)."""
    from megatron_meml.stages import common, riel, run as stages_run
    from megatron_meml.algo.objective import RielObjective
    from megatron_meml.backend.train import optimizer as boptim, state
    from megatron_meml.backend.train.step import forward_backward
    from megatron_meml.rollout import scheduler as S

    _use_parity_reward()
    # one forward-backward per step on both sides (riel.grad_norm_interval > 0 splits it by term: the same update
    # to float rounding, tests/distributed/test_riel_equivalence.py)
    cfg = _cfg(os.path.join(tmp, "sync"), "riel.steps=2", "riel.grad_norm_interval=0")
    run = stages_run.setup(cfg)
    riel.run_riel(run)
    full_a = state.full_state_dict(run.chunks, cfg.model.num_layers)
    run.logger.close()  # keep the process groups: a second env:// init in one process reuses stale store keys
    async_used = [run.link is not None] + [k for k in _metrics(os.path.join(tmp, "sync"))[0] if k.startswith("async/")] \
        if int(os.environ["RANK"]) == 0 else [run.link is not None]

    # today's loop, written out, on a fresh model in the same process groups (the init is seeded by name)
    from megatron_meml.backend.train import model as bmodel
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.backend.runtime.parallel import reduce_metrics
    from megatron_meml.data import load_expert_prompts, tokenizer_from_config

    cfg = _cfg(os.path.join(tmp, "plain"), "riel.steps=2", "riel.grad_norm_interval=0")
    parallel.initialize(1, 1, seed=cfg.seed)
    chunks = bmodel.build_model(cfg)
    tok = tokenizer_from_config(cfg.data)
    prompts = load_expert_prompts(cfg.experts)
    opt, sch = boptim.build_optimizer(cfg, chunks, lr=cfg.riel.lr, total_steps=2)
    sched = S.build_riel_scheduler(cfg, chunks, tok, prompts, S.verifier_reward("synthetic"))
    records = common.riel_records(cfg)
    plain = []
    for step in range(2):
        out = sched.step(common.riel_questions(records, step, 2, cfg.seed), step)
        boptim.zero_grads(chunks, opt)
        res = forward_backward(chunks, out.microbatches, RielObjective(cfg.riel),
                               temperature=cfg.rollout.temperature)
        _, gn = boptim.optimizer_step(opt, sch)
        plain.append({"loss": reduce_metrics(res, ["loss"])["loss"], "grad_norm": gn})
    full_b = state.full_state_dict(chunks, cfg.model.num_layers)
    keys = _keys_run(tmp, "sync")  # in the same process groups (see above); the async twin: keys_phase
    parallel.destroy()
    out = {"async_used": async_used, "keys": keys}
    if int(os.environ["RANK"]) == 0:
        m = _metrics(os.path.join(tmp, "sync"))
        out.update(logged=[{"loss": m[s]["loss"], "grad_norm": m[s]["grad_norm"]} for s in range(2)], plain=plain,
                   weights_equal=all(torch.equal(full_a[k], full_b[k]) for k in full_a) and
                   sorted(full_a) == sorted(full_b))
    return out


# -------------------------------------------------------------------------------------------- hand-off phases
def handoff_phase(tmp: str, train_tp: int, rollout_tp: int, rollout_ranks: int) -> Dict[str, Any]:
    """Training weights (perturbed away from the layout-invariant init) go to rollout ranks with another TP layout;
    both sides' full state dicts and the rollouts both sides generate from them are returned for comparison."""
    from megatron_meml.stages import common, run as stages_run
    from megatron_meml.backend.train import state
    from megatron_meml.rollout.scheduler import build_riel_scheduler, verifier_reward

    cfg = _cfg(os.path.join(tmp, f"handoff{train_tp}{rollout_tp}"), "riel.async_rollout=true",
               f"riel.rollout_ranks={rollout_ranks}", f"riel.rollout_tensor_parallel_size={rollout_tp}",
               f"parallel.tensor_model_parallel_size={train_tp}")
    run = stages_run.setup(cfg)
    L = cfg.model.num_layers
    if run.role == "rollout":
        served = run.serve()["rollout_steps_served"]
        full = state.full_state_dict(run.chunks, L, dst=0)
        common.finish(run)
        return {"role": "rollout", "served": served, "full": full}
    full = state.full_state_dict(run.chunks, L, dst=None)
    g = torch.Generator().manual_seed(11)
    state.load_full_state_dict(run.chunks, {k: v + 0.05 * torch.randn(v.shape, generator=g)
                                            for k, v in sorted(full.items())}, L)
    run.link.request([0], version=7)
    got = run.link.receive(0)
    sched = build_riel_scheduler(cfg, run.chunks, run.tokenizer, run.prompts, verifier_reward("synthetic"))
    recs = common.riel_questions(common.riel_records(cfg), 0, 2, cfg.seed)
    local = sched.generate_and_score(sched.requests(recs, 0), recs)
    sent = state.full_state_dict(run.chunks, L, dst=0)
    common.finish(run)
    return {"role": "train", "full": sent, "version": got["stats"]["version"],
            "remote": [(r.response_ids, r.logprobs) for r in got["rollouts"]],
            "local": [(r.response_ids, r.logprobs) for r in local]}


# ------------------------------------------------------------------------------------ async run + hand check
def _capture_step(store: Dict[str, Any], run, want_step: int):
    """Wrap the async loop's forward-backward and scheduler so that step ``want_step`` is recomputed by hand."""
    from megatron_meml.stages import riel_core
    from megatron_meml.backend.train import model as bmodel, state
    from megatron_meml.backend.train.step import forward_logprobs
    from megatron_meml.rollout import scheduler as S
    from megatron_meml.rollout.packing import TrainSequence, collate
    from megatron_meml.types import TokenKind

    real_fb, real_step = riel_core.forward_backward, S.RielScheduler.step
    calls = {"fb": 0}
    L, T = run.cfg.model.num_layers, run.cfg.rollout.temperature

    def step_wrapper(self, records, step, rollouts=None, split_terms=False):
        out = real_step(self, records, step, rollouts, split_terms)
        if step == want_step:
            store["out"] = out
        return out

    def fb_wrapper(chunks, mbs, loss_fn, temperature=1.0):
        k = calls["fb"]
        calls["fb"] += 1
        if k == 0:  # before step 0's update: W_0
            store["w0"] = state.full_state_dict(chunks, L, dst=None)
        if k != want_step:
            return real_fb(chunks, mbs, loss_fn, temperature=temperature)
        cur = forward_logprobs(chunks, mbs, temperature=T)               # log pi_{W_s}
        old_model = bmodel.build_model(run.cfg)
        state.load_full_state_dict(old_model, store["w0"], L)
        stale = forward_logprobs(old_model, mbs, temperature=T)          # log pi_{W_{s-1}} = log pi_{W_0}
        results = real_fb(chunks, mbs, loss_fn, temperature=temperature)
        cap = run.cfg.riel.behavior_weight_cap
        hand, behav_err, stale_gap = 0.0, 0.0, 0.0
        for mb, lp, lp0 in zip(mbs, cur, stale):
            m = mb.loss_mask > 0
            grpo, kl, sft = (m & (mb.kind == int(x)) for x in (TokenKind.GRPO, TokenKind.KL, TokenKind.SFT))
            w = torch.exp(lp - mb.old_logp).clamp(max=cap)
            hand += float((mb.weight * w * -mb.advantages)[grpo].sum())              # l = -w A (rho = 1)
            hand += float((mb.weight * (mb.old_logp - lp))[kl].sum())                # k1 with refreshed teacher
            hand += float((mb.weight * -lp)[sft].sum())
            if grpo.any():
                behav_err = max(behav_err, float((mb.old_logp - lp0)[grpo].abs().max()))
                stale_gap = max(stale_gap, float((mb.old_logp - lp)[grpo].abs().max()))
        out = store["out"]
        teach = []
        for p in out.kl_pairs:
            for ro in p.responses:
                teach.append((ro, next(r for g in out.groups for r in g.rollouts
                                       if r.request.seed == ro.request.seed)))
        kl_err, kl_gap = 0.0, 0.0
        if teach:
            seqs = [TrainSequence.from_prompt_response(ro.request.prompt_ids, ro.response_ids, TokenKind.KL)
                    for ro, _ in teach]
            lps = forward_logprobs(chunks, [collate([s], run.tokenizer.pad_id) for s in seqs], temperature=T)
            for (ro, orig), lp in zip(teach, lps):
                P, n = len(ro.request.prompt_ids), len(ro.response_ids)
                ref = lp[0, P - 1:P - 1 + n]
                kl_err = max(kl_err, float((torch.tensor(ro.logprobs) - ref).abs().max()))
                kl_gap = max(kl_gap, float((torch.tensor(orig.logprobs) - ref).abs().max()))
        store["check"] = {"hand": hand, "kernel": sum(r["loss"] for r in results), "behaviour_vs_w0": behav_err,
                          "behaviour_vs_current": stale_gap, "kl_pairs": len(out.kl_pairs),
                          "teacher_vs_current": kl_err, "rollout_p_plus_vs_current": kl_gap,
                          "grpo_tokens": sum(float(((mb.kind == 0) & (mb.loss_mask > 0)).sum()) for mb in mbs)}
        return results

    riel_core.forward_backward = fb_wrapper
    S.RielScheduler.step = step_wrapper
    return lambda: (setattr(riel_core, "forward_backward", real_fb), setattr(S.RielScheduler, "step", real_step))


def async_phase(tmp: str) -> Dict[str, Any]:
    """2 training ranks (DP 2) + 1 rollout rank, 4 async steps with a checkpoint after each; step 1 (the first
    stale one) is recomputed by hand."""
    from megatron_meml.stages import common, run as stages_run

    _use_parity_reward()
    run_dir = os.path.join(tmp, "async")
    cfg = _cfg(run_dir, "riel.async_rollout=true", "riel.rollout_ranks=1", "riel.steps=4",
               "checkpoint.save_interval=1", "checkpoint.keep_last=10", "riel.grad_norm_interval=0")
    run = stages_run.setup(cfg)
    store: Dict[str, Any] = {}
    undo = _capture_step(store, run, 1) if run.role == "train" else (lambda: None)
    try:
        stages_run.run_all(run)
    finally:
        undo()
    common.finish(run)
    out = {"role": run.role, "check": store.get("check")}
    if run.role == "train" and run.info.rank == 0:
        out["metrics"] = _metrics(run_dir)
    return out


def resume_phase(tmp: str) -> Dict[str, Any]:
    """A fresh run directory holding only the async run's checkpoint after step 1 (what a kill -9 during step 2
    leaves behind): the resumed run must log steps 2 and 3 exactly as the uninterrupted one did."""
    from megatron_meml.stages import common, run as stages_run

    _use_parity_reward()
    src, run_dir = os.path.join(tmp, "async", "checkpoints"), os.path.join(tmp, "resumed")
    if int(os.environ["RANK"]) == 0:
        os.makedirs(os.path.join(run_dir, "checkpoints"))
        shutil.copytree(os.path.join(src, "step_01000002"), os.path.join(run_dir, "checkpoints", "step_01000002"))
        with open(os.path.join(run_dir, "checkpoints", "latest"), "w") as f:
            f.write("step_01000002")
    else:
        while not os.path.exists(os.path.join(run_dir, "checkpoints", "latest")):
            time.sleep(0.05)
    cfg = _cfg(run_dir, "riel.async_rollout=true", "riel.rollout_ranks=1", "riel.steps=4",
               "checkpoint.save_interval=1", "checkpoint.keep_last=10", "riel.grad_norm_interval=0")
    run = stages_run.setup(cfg)
    stages_run.run_all(run)
    common.finish(run)
    out = {"role": run.role}
    if run.role == "train" and run.info.rank == 0:
        out["metrics"] = _metrics(run_dir)
    return out


def hang_phase(tmp: str) -> Dict[str, Any]:
    """The rollout rank hangs while generating step 1: the training ranks stop within riel.rollout_timeout_s with
    an error naming it; the rollout rank, once it wakes, sees the failure notice and stops too."""
    from megatron_meml.stages import common, riel_async, run as stages_run
    from megatron_meml.stages.async_bridge import AsyncRolloutError

    cfg = _cfg(os.path.join(tmp, "hang"), "riel.async_rollout=true", "riel.rollout_ranks=1", "riel.steps=3",
               "riel.rollout_timeout_s=2")
    if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:  # the rollout rank
        real = riel_async.RolloutRank.generate

        def hanging(self, step):
            t0 = time.time()
            while step == 1 and not self.split.store.check(["failed"]) and time.time() - t0 < 120:
                time.sleep(0.05)  # hung (heartbeat alive) until the training ranks have given up on it
            return real(self, step)

        riel_async.RolloutRank.generate = hanging
    run = stages_run.setup(cfg)
    t0, err = time.time(), None
    try:
        stages_run.run_all(run)
    except AsyncRolloutError as e:
        err = str(e)
    elapsed = time.time() - t0
    common.finish(run)
    _job_barrier("hang")  # training rank 0's process hosts the job store: keep it until the rollout rank is done
    return {"role": run.role, "error": err, "elapsed": elapsed}


def _job_barrier(tag: str) -> None:
    from megatron_meml.stages import async_bridge

    store, world = async_bridge._JOB_STORE, int(os.environ["WORLD_SIZE"])
    store.add(f"test-barrier/{tag}", 1)
    while int(store.add(f"test-barrier/{tag}", 0)) < world:
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------- metric keys phase
KEYS_RUN = ["riel.steps=2", "riel.grad_norm_interval=1", "eval.riel_interval=1", "eval.riel_examples=4"]


def _keys_run(tmp: str, mode: str) -> Dict[str, Any]:
    """One RIEL run of ``KEYS_RUN`` (sync: DP 3; async: DP 2 + 1 rollout rank): the metric keys of every RIEL row
    and the summary fields (rank 0; stages/riel_core.py says which keys belong to one mode only)."""
    import json

    from megatron_meml.stages import common, run as stages_run

    _use_parity_reward()
    run_dir = os.path.join(tmp, f"keys_{mode}")
    extra = ["riel.async_rollout=true", "riel.rollout_ranks=1"] if mode == "async" else []
    run = stages_run.setup(_cfg(run_dir, *KEYS_RUN, *extra))
    stages_run.run_all(run)
    if mode == "async":
        common.finish(run)
    else:
        run.logger.close()  # keep the process groups (sync_phase)
    if int(os.environ["RANK"]) != 0:
        return {}
    return {"keys": {s: sorted(r) for s, r in _metrics(run_dir).items()},
            "summary": sorted(json.load(open(os.path.join(run_dir, "summary.json"))))}


def keys_phase(tmp: str) -> Dict[str, Any]:
    """The async twin of the sync phase's keys run, on the same config."""
    return _keys_run(tmp, "async")


def sync_then_handoff(tmp: str):
    return [sync_phase(tmp), handoff_phase(tmp, train_tp=2, rollout_tp=1, rollout_ranks=1)]


def gpu_phases(tmp: str) -> List[Dict[str, Any]]:
    """Two CUDA processes (1 training + 1 rollout rank; NCCL inside each world and for the weights)."""
    return [handoff_phase(tmp, train_tp=1, rollout_tp=1, rollout_ranks=1), async_phase(tmp), resume_phase(tmp),
            hang_phase(tmp)]


def all_phases(tmp: str) -> List[Dict[str, Any]]:
    """Every phase on the same 3 processes ."""
    out = [sync_phase(tmp)]
    out.append(handoff_phase(tmp, train_tp=2, rollout_tp=1, rollout_ranks=1))
    out.append(handoff_phase(tmp, train_tp=1, rollout_tp=2, rollout_ranks=2))
    out.append(async_phase(tmp))
    out.append(resume_phase(tmp))
    out.append(hang_phase(tmp))
    out.append(keys_phase(tmp))
    return out
