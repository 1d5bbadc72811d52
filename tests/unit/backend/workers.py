"""Module-level functions run in a fresh process (the CPU runtime changes process-global torch state)."""
from __future__ import annotations

import os


def cpu_runtime_changes():
    """Activate the CPU runtime and report what each listed change does."""
    import torch

    from megatron_meml.backend.runtime import cpu_runtime

    before_type = torch.zeros(1).type()
    assert cpu_runtime.activate() is True
    out = {"changes": list(cpu_runtime.CHANGES), "before_type": before_type}
    import os

    out["max_connections"] = os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")
    out["factory_cuda"] = str(torch.zeros(2, device="cuda").device)
    out["factory_cuda_index"] = str(torch.ones(2, device=torch.device("cuda", 0)).device)
    out["factory_int"] = str(torch.empty(2, device=0).device)
    out["tensor_cuda"] = str(torch.zeros(2).cuda().device)
    out["tensor_to_cuda"] = str(torch.zeros(2).to("cuda").device)
    out["pin_memory"] = torch.zeros(2, pin_memory=True).is_pinned()
    out["type"] = torch.zeros(1).type()
    out["current_device"] = str(torch.cuda.current_device())
    torch.cuda.synchronize()
    torch.cuda.set_device(0)
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    ev1.record()
    out["event_ms"] = ev0.elapsed_time(ev1)
    with torch.cuda.stream(torch.cuda.Stream()):
        out["stream_ok"] = True
    out["current_stream"] = type(torch.cuda.current_stream()).__name__
    torch.cuda.manual_seed(5)
    a = torch.rand(3)
    state = torch.cuda.get_rng_state()
    b = torch.rand(3)
    torch.cuda.set_rng_state(state)
    c = torch.rand(3)
    torch.manual_seed(5)
    out["rng_is_cpu_generator"] = bool(torch.equal(a, torch.rand(3)))
    out["rng_restore"] = bool(torch.equal(b, c))
    from megatron.core.tensor_parallel import random as mrandom

    s = mrandom._get_cuda_rng_state()
    x = torch.rand(2)
    mrandom._set_cuda_rng_state(s)
    out["tracker_rng_restore"] = bool(torch.equal(x, torch.rand(2)))
    return out


def count_params(hf_config: str):
    """Parameter count of a model built (on the meta device) from a HF config.json."""
    from megatron_meml.backend.train import model as M
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.config import load_config

    cfg = load_config(None, [f"model.hf_config={hf_config}"])
    parallel.initialize(1, 1, seed=1)
    m = M.build_gpt(cfg, meta=True)
    names = sorted(n for n, _ in m.named_parameters())
    return {"params": M.count_parameters(m), "padded_vocab": M.padded_vocab_size(cfg), "names": names,
            "rope_scaling": cfg.model.rope_scaling, "tied": cfg.model.tie_word_embeddings}


def llama3_rope(factor: float, low: float, high: float, orig: int):
    """inv_freq of a built model with llama3 rope scaling vs the HF formula."""
    import math

    import torch

    from megatron_meml.backend.train import model as M
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.config import load_config

    cfg = load_config(None, ["model.rope_scaling=llama3", f"model.rope_scaling_factor={factor}",
                             f"model.rope_low_freq_factor={low}", f"model.rope_high_freq_factor={high}",
                             f"model.rope_original_max_position={orig}", "model.rotary_base=500000",
                             "model.arch=llama", "model.add_qkv_bias=false"])
    parallel.initialize(1, 1, seed=1)
    m = M.build_gpt(cfg)
    dim = cfg.model.hidden_size // cfg.model.num_attention_heads
    inv = 1.0 / (500000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    lw, hw = orig / low, orig / high
    ref = []
    for f in inv.tolist():
        wl = 2 * math.pi / f
        if wl < hw:
            ref.append(f)
        elif wl > lw:
            ref.append(f / factor)
        else:
            s = (orig / wl - low) / (high - low)
            ref.append((1 - s) * f / factor + s * f)
    return {"ours": m.rotary_pos_emb.inv_freq.double().tolist(), "ref": ref}


def nonfinite_guard():
    """A NaN loss makes grads_finite False; a finite one True (the trainer then skips / takes the step)."""
    import torch

    from megatron_meml.backend.train import model as M, optimizer as O, step as S
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.config import load_config
    from megatron_meml.types import MicroBatch

    cfg = load_config(None, ["model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64"])
    parallel.initialize(1, 1, seed=1)
    chunks = M.build_model(cfg)
    opt, _ = O.build_optimizer(cfg, chunks, total_steps=2)
    tok = torch.randint(0, 200, (2, 8))
    mb = MicroBatch(tokens=tok, loss_mask=torch.ones(2, 8), kind=torch.zeros(2, 8, dtype=torch.int8),
                    weight=torch.full((2, 8), 1 / 16))
    out = {}
    for name, scale in (("nan", float("nan")), ("finite", 1.0)):
        O.zero_grads(chunks, opt)
        S.forward_backward(chunks, [mb], lambda lp, m: (-(lp * m.weight).sum() * scale, {}))
        out[name] = O.grads_finite(chunks)
    # the trainer's step-or-skip (sync and async RIEL share it): a NaN step leaves the weights, counts, then aborts
    from types import SimpleNamespace

    from megatron_meml.stages.common import riel_optimizer_step

    opt, sched = O.build_optimizer(cfg, chunks, total_steps=4)
    said = []
    run = SimpleNamespace(chunks=chunks, cfg=load_config(None, ["riel.max_nonfinite_steps=1"]), say=said.append)
    before = [p.detach().clone() for c in chunks for p in c.parameters()]
    for k in range(2):
        O.zero_grads(chunks, opt)
        S.forward_backward(chunks, [mb], lambda lp, m: (-(lp * m.weight).sum() * float("nan"), {}))
        if k == 0:
            finite, norm, bad = riel_optimizer_step(run, opt, sched, 7, 0)
            out["skip"] = (finite, norm != norm, bad, said[-1])
        else:
            try:
                riel_optimizer_step(run, opt, sched, 8, bad)
            except RuntimeError as e:
                out["abort"] = str(e)
    out["untouched"] = all(torch.equal(a, p) for a, p in zip(before, (p for c in chunks for p in c.parameters())))
    O.zero_grads(chunks, opt)
    S.forward_backward(chunks, [mb], lambda lp, m: (-(lp * m.weight).sum(), {}))
    finite, norm, bad = riel_optimizer_step(run, opt, sched, 9, 1)
    out["step"] = (finite, norm > 0, bad)
    return out


def finished_stage_weights(run_dir: str):
    """Train a 2-step MEF stage, then load its finished checkpoint into a freshly initialised model: the weights
    must be the trained ones (a restart that skips MEF evaluates and continues from them)."""
    import torch

    from megatron_meml.stages import common, mef, riel, run as stages_run
    from megatron_meml.backend.train import model as M, state
    from megatron_meml.config import load_config

    cfg = load_config(None, ["model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64",
                             "mef.max_steps=2", "data.global_batch_size=8", "data.synthetic.num_train=20", "data.seq_length=256",
                             "riel.enabled=false", "eval.enabled=false", f"logging.run_dir={run_dir}",
                             "logging.progress_bar=false", "logging.tensorboard=false", "mef.lr=1e-2"])
    run = stages_run.setup(cfg)
    mef.run_mef(run)
    trained = state.full_state_dict(run.chunks, 1)
    fresh = M.build_model(cfg)
    initial = state.full_state_dict(fresh, 1)
    loaded = run.ckpt.load_finished_stage("mef", fresh)
    after = state.full_state_dict(fresh, 1)
    diff = lambda a, b: max((a[k] - b[k]).abs().max().item() for k in a)  # noqa: E731
    return {"loaded": loaded, "moved": diff(trained, initial), "after_vs_trained": diff(after, trained)}


def sdpa_matches_megatron_attention():
    """SDPAttention vs megatron's DotProductAttention: the core module on every mask case (forward and input
    gradients), then whole models built with each ``model.attention_impl`` (logits and weight gradients)."""
    import torch
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_meml.backend.train import model as M
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.backend.train.attention import SDPAttention
    from megatron_meml.backend.train.step import model_logits
    from megatron_meml.config import load_config

    parallel.initialize(1, 1, seed=3)
    out = {}
    cfg = load_config(None, ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
                             "model.num_query_groups=2", "model.ffn_hidden_size=96"])
    tcfg = M.transformer_config(cfg)
    ref = DotProductAttention(tcfg, 1, AttnMaskType.causal, "self")
    new = SDPAttention(tcfg, 1, AttnMaskType.causal, "self")
    g = torch.Generator().manual_seed(0)
    B, S, H, G, D = 3, 11, 4, 2, 16

    def qkv(sq, sk):
        return [torch.randn(s, B, h, D, generator=g, requires_grad=True) for s, h in ((sq, H), (sk, G), (sk, G))]

    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, :3] = True  # left padding of row 1 (the aligned generation layout)
    causal = torch.triu(torch.ones(S, S, dtype=torch.bool), 1)
    cases = {
        "causal": (S, S, None),
        "explicit_mask": (S, S, causal[None, None] | pad[:, None, None, :]),
        "decode_no_mask": (1, S, None),
        "decode_mask": (1, S, pad[:, None, None, :]),
    }
    for name, (sq, sk, mask) in cases.items():
        q, k, v = qkv(sq, sk)
        keep = slice(None) if mask is None or sq == 1 else slice(3, None)  # fully masked query rows: garbage
        a = ref(q, k, v, mask)
        ga = torch.autograd.grad(a[keep].square().sum(), (q, k, v))
        b = new(q, k, v, mask)
        gb = torch.autograd.grad(b[keep].square().sum(), (q, k, v))
        out[name] = {"shape": tuple(b.shape) == tuple(a.shape), "finite": bool(torch.isfinite(b).all()),
                     "out": float((a - b)[keep].abs().max()),
                     "grad": max(float((x - y).abs().max()) for x, y in zip(ga, gb))}
    # whole models: identical weights (layout-invariant init), logits and gradients
    models = {}
    for impl in ("sdpa", "megatron"):
        c = load_config(None, ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
                               "model.num_query_groups=2", "model.ffn_hidden_size=96", f"model.attention_impl={impl}"])
        chunk = M.build_model(c)[0]
        tokens = torch.randint(0, 200, (4, 24), generator=torch.Generator().manual_seed(1))
        logits = model_logits(chunk, tokens)
        logits.float().square().mean().backward()
        grads = {n: (p.main_grad if getattr(p, "main_grad", None) is not None else p.grad).clone()
                 for n, p in chunk.named_parameters()}
        core = M.unwrap(chunk).decoder.layers[0].self_attention.core_attention
        models[impl] = (logits.detach(), grads, type(core).__name__)
    (la, ga, ta), (lb, gb, tb) = models["sdpa"], models["megatron"]
    out["model"] = {"types": (ta, tb), "logits": float((la - lb).abs().max()),
                    "grads": max(float((ga[n] - gb[n]).abs().max()) for n in ga)}
    return out


def startup_report():
    """``runtime_info.startup_lines`` for the tiny test model (local layer spec, CPU)."""
    from megatron_meml.backend.runtime.runtime_info import startup_lines
    from tests.unit.rollout.engine_workers import _setup

    cfg, info, chunks = _setup()
    return startup_lines(cfg, chunks)
