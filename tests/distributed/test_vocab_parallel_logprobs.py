"""Vocab-parallel log-probs on 2 gloo ranks.

1. meml_kernels (torch twin and Triton-in-the-interpreter): logits sharded over V on a TP group of 2 give the
   unsharded log-probs, entropy, fused loss and gradients (dlogits shard, and for the fused linear op dweight shard
   and the all-reduced dhidden).
2. The backend's ``token_logprobs`` equals ``-megatron.core.tensor_parallel.vocab_parallel_cross_entropy`` at
   TP=2 and TP=1 (megatron ``parallel_state`` on gloo), forward within 1e-5 and the logits gradient too.
Processes are spawned here (torch.multiprocessing, gloo, 127.0.0.1, a free port); nothing else is needed.
"""
from __future__ import annotations

import os
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from megatron_meml.backend.runtime.parallel import free_port

WORLD = 2
T, V_LOCAL, H = 24, 70, 16




def _data():
    """Identical on every rank: full logits/hidden/weight, targets with ignored tokens, loss inputs."""
    from meml_kernels.token_loss import TokenLossInputs

    g = torch.Generator().manual_seed(123)
    v = V_LOCAL * WORLD
    logits = torch.randn(T, v, generator=g) * 2
    hidden = torch.randn(T, H, generator=g)
    weight = torch.randn(v, H, generator=g) * 0.5
    targets = torch.randint(0, v, (T,), generator=g)
    targets[3] = -100
    kind = torch.randint(0, 3, (T,), generator=g).to(torch.int8)
    spec = TokenLossInputs(old_logp=-torch.rand(T, generator=g) * 5, advantages=torch.randn(T, generator=g),
                           kind=kind, mask=torch.rand(T, generator=g) > 0.2, weight=torch.rand(T, generator=g),
                           ref_logp=-torch.rand(T, generator=g) * 5, beta=0.1, kl_estimator="k3")
    return logits, hidden, weight, targets, spec


def _err(a, b) -> float:
    """Max abs difference, relative to the reference's scale when that exceeds 1 (fp32 rounding)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def _kernel_checks(rank: int, group) -> dict:
    from meml_kernels.linear_logprobs import linear_token_logprobs
    from meml_kernels.logprobs import token_logprobs

    logits, hidden, weight, targets, spec = _data()
    sl = slice(rank * V_LOCAL, (rank + 1) * V_LOCAL)
    errs = {}
    for impl in ("torch", "triton"):
        # Logits path: unsharded reference on this rank vs the 2-rank sharded call.
        full = logits.clone().requires_grad_()
        ref = token_logprobs(full, targets, temperature=0.8, return_entropy=True, loss=spec, impl=impl)
        (ref.loss.sum() + ref.entropy.sum() + ref.logp.sum()).backward()
        shard = logits[:, sl].clone().requires_grad_()
        out = token_logprobs(shard, targets, temperature=0.8, return_entropy=True, loss=spec, tp_group=group,
                             impl=impl)
        (out.loss.sum() + out.entropy.sum() + out.logp.sum()).backward()
        errs[f"{impl}/logits/logp"] = _err(out.logp, ref.logp)
        errs[f"{impl}/logits/entropy"] = _err(out.entropy, ref.entropy)
        errs[f"{impl}/logits/loss"] = _err(out.loss, ref.loss)
        errs[f"{impl}/logits/dlogits"] = _err(shard.grad, full.grad[:, sl])
        errs[f"{impl}/logits/clipped"] = float(not torch.equal(out.clipped, ref.clipped))

        # Fused linear path: hidden replicated, weight sharded by rows.
        h_full, w_full = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        ref = linear_token_logprobs(h_full, w_full, targets, return_entropy=True, loss=spec, impl=impl)
        (ref.loss.sum() + ref.entropy.sum()).backward()
        h_rep, w_shard = hidden.clone().requires_grad_(), weight[sl].clone().requires_grad_()
        out = linear_token_logprobs(h_rep, w_shard, targets, return_entropy=True, loss=spec, tp_group=group,
                                    impl=impl)
        (out.loss.sum() + out.entropy.sum()).backward()
        errs[f"{impl}/linear/logp"] = _err(out.logp, ref.logp)
        errs[f"{impl}/linear/entropy"] = _err(out.entropy, ref.entropy)
        errs[f"{impl}/linear/loss"] = _err(out.loss, ref.loss)
        errs[f"{impl}/linear/dweight"] = _err(w_shard.grad, w_full.grad[sl])
        errs[f"{impl}/linear/dhidden"] = _err(h_rep.grad, h_full.grad)
    return errs


def _megatron_checks(rank: int, tp: int) -> dict:
    """Backend token_logprobs vs -vocab_parallel_cross_entropy, megatron parallel_state with TP=tp."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_meml.backend.train.logprobs import token_logprobs

    ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    try:
        logits, _, _, targets, _ = _data()
        targets = targets.clamp_min(0).view(4, 6)                  # [S, B] like Megatron; no ignore index here
        full = logits.view(4, 6, -1)
        v_local = full.shape[-1] // tp
        r = ps.get_tensor_model_parallel_rank()
        shard = full[..., r * v_local:(r + 1) * v_local]
        errs = {}
        for temperature in (1.0, 0.7):
            x_meg = (shard / temperature).clone().requires_grad_()  # megatron edits fp32 logits in place
            ce = vocab_parallel_cross_entropy(x_meg.clone(), targets)
            ce.sum().backward()
            for impl in ("torch", "triton"):
                x = shard.clone().requires_grad_()
                logp = token_logprobs(x, targets, temperature=temperature, impl=impl)
                (-logp).sum().backward()
                # absolute errors here: the acceptance bound is 1e-5 (fp32) against megatron
                key = f"tp{tp}/T{temperature}/{impl}"
                errs[f"{key}/logp"] = (logp + ce).abs().max().item()
                errs[f"{key}/dlogits"] = (x.grad - x_meg.grad / temperature).abs().max().item()
        return errs
    finally:
        ps.destroy_model_parallel()


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
        group = dist.new_group(list(range(WORLD)))
        errs = _kernel_checks(rank, group)
        errs.update(_megatron_checks(rank, tp=2))
        errs.update(_megatron_checks(rank, tp=1))
        torch.save({"ok": True, "errs": errs}, os.path.join(outdir, f"{rank}.pt"))
    except Exception:
        torch.save({"ok": False, "error": traceback.format_exc()}, os.path.join(outdir, f"{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_rank_vocab_parallel_matches_unsharded_and_megatron():
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(free_port(), d), nprocs=WORLD, join=True, start_method="spawn")
        results = [torch.load(os.path.join(d, f"{r}.pt")) for r in range(WORLD)]
    for rank, res in enumerate(results):
        assert res["ok"], f"rank {rank} failed:\n{res.get('error')}"
        errs = res["errs"]
        assert len(errs) == 2 * 10 + 2 * 2 * 2 * 2     # (impl x 10 kernel checks) + (tp x T x impl x 2)
        bad = {k: v for k, v in errs.items() if v > 1e-5}
        assert not bad, f"rank {rank}: errors above 1e-5: {bad}"
