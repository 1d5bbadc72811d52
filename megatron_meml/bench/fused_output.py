"""CPU memory of one MEF step with the fused output layer vs the logits path (``model.fused_output``), and the
planner's prediction beside each measured number.

    python -m megatron_meml.bench.fused_output                  # 2 layers, hidden 256, vocab 151936 rows (151665 real),
                                                          # 8192 tokens per microbatch (4 x 2048), fp32
    python -m megatron_meml.bench.fused_output --tokens 16384     # needs ~21 GiB free for the logits path in fp32
    python -m megatron_meml.bench.fused_output --json out.json

What one variant does, in its own fresh subprocess (so each peak RSS is clean): build the model and the Adam
optimizer through ``backend.train.model`` / ``backend.train.optimizer`` exactly as a run does, then one MEF step --
zero grads,
``backend.train.step.forward_backward`` with the SFT objective over one microbatch, ``optimizer_step``. Recorded:
  * peak RSS (VmHWM) of the whole process, and per phase the peak RSS growth over the RSS before it (the kernel's
    peak counter is reset with ``echo 5 > /proc/self/clear_refs`` between phases);
  * the bytes of every distinct non-parameter tensor storage autograd saves for the backward during the forward (a
    ``saved_tensors_hooks`` pack hook): the activations, split into tensors with a vocabulary-sized last dim
    ("logits") and the rest, beside ``megatron_meml.planning.activation_bytes`` (local layer spec: the transformer
    layers only, so the measured number also holds the embedding output and the final norm's 4 [T, h] tensors)
    and ``logits_bytes`` (GPU terms: the Triton backward's chunk for the fused path);
  * the loss (the two variants must agree: the fused path is exact).
Default shape: fp32 at 8192 tokens holds the same [tokens x vocab] bytes (4.6 GiB per tensor) as the 16k-token bf16
microbatch of a GPU run; CPU bf16 matmuls are ~50x slower than fp32 on machines without AVX512-BF16.
Before the logits variant the parent checks MemAvailable against the planner's estimate and refuses to start it
when it would not fit (the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from megatron_meml.algo.objective import SFTObjective
from megatron_meml.backend.runtime import parallel
from megatron_meml.backend.runtime.memory import cpu_peak_rss_bytes as _peak
from megatron_meml.backend.runtime.memory import proc_status_bytes as _status
from megatron_meml.backend.runtime.memory import reset_peak_rss as _reset_peak
from megatron_meml.backend.train import model as M
from megatron_meml.backend.train import optimizer as O
from megatron_meml.backend.train.step import forward_backward
from megatron_meml.config import load_config
from megatron_meml.planning import Layout, ModelShape, Workload, activation_bytes, logits_bytes, state_bytes
from megatron_meml.types import MicroBatch, TokenKind

GiB = float(2 ** 30)


def overrides(a) -> list:
    return [f"model.num_layers={a.layers}", f"model.hidden_size={a.hidden}", f"model.ffn_hidden_size={a.ffn}",
            f"model.num_attention_heads={a.heads}", f"model.num_query_groups={a.groups}",
            f"model.vocab_size={a.real_vocab}", f"model.padded_vocab_size={a.vocab}",
            f"model.max_position_embeddings={a.seq}", f"precision.dtype={a.dtype}", f"data.seq_length={a.seq}",
            f"data.micro_batch_size={a.tokens // a.seq}", "model.tie_word_embeddings=true"]


def child(a, variant: str) -> dict:
    import torch

    torch.set_num_threads(1)
    cfg = load_config(None, overrides(a) + [f"model.fused_output={str(variant == 'fused').lower()}"])
    parallel.initialize(1, 1, seed=cfg.seed)
    rec = {"variant": variant, "rss_import": _status("VmRSS")}
    chunks = M.build_model(cfg)
    opt, sch = O.build_optimizer(cfg, chunks, total_steps=2)
    b, s = a.tokens // a.seq, a.seq
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, a.real_vocab, (b, s), generator=g)
    mask = torch.ones(b, s)
    mask[:, -1] = 0
    mb = MicroBatch(tokens=tokens, loss_mask=mask, weight=mask / mask.sum(),
                    kind=torch.full((b, s), int(TokenKind.SFT), dtype=torch.int8))
    O.zero_grads(chunks, opt)
    rec["rss_built"] = _status("VmRSS")

    saved = {}
    params = {q.untyped_storage().data_ptr() for q in chunks[0].parameters()}
    done = []

    def pack(t):
        st = t.untyped_storage()
        if not done and st.data_ptr() not in params:
            saved[st.data_ptr()] = (st.nbytes(), t.shape[-1] if t.dim() else 0)
        return t

    class Objective(SFTObjective):   # marks the end of the forward: later saves are the backward's
        def reduce(self, *args):
            done.append(True)
            return super().reduce(*args)

        def __call__(self, *args):
            done.append(True)
            return super().__call__(*args)

    reset = _reset_peak()
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        res = forward_backward(chunks, [mb], Objective())
    rec["fb_s"] = time.perf_counter() - t0
    rec["fb_peak"] = _peak()
    rec["fb_extra"] = rec["fb_peak"] - rec["rss_built"]
    rec["saved_logits"] = sum(n for n, last in saved.values() if last >= a.vocab // 2)
    rec["saved_other"] = sum(n for n, last in saved.values() if last < a.vocab // 2)
    rec["loss"] = res[0]["loss"]
    rss = _status("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    updated, _ = O.optimizer_step(opt, sch)
    rec["opt_s"] = time.perf_counter() - t0
    rec["opt_extra"] = _peak() - rss
    rec["updated"] = bool(updated)
    rec["peak_rss"] = max(rec["fb_peak"], _peak())
    rec["peak_reset_works"] = reset
    rec["params"] = M.count_parameters(M.unwrap(chunks[0]))
    parallel.destroy()
    return rec


def planner_view(a) -> dict:
    """The planner's terms (bytes) for this shape and microbatch, fused and not."""
    cfg = load_config(None, overrides(a))
    shape, lay = ModelShape.from_config(cfg), Layout(1, 1, 1)
    out = {"state": sum(state_bytes(shape, lay, Workload.from_config(cfg)).values())}
    for fused in (True, False):
        w = Workload.from_config(cfg)
        w = type(w)(**{**w.__dict__, "fused_output": fused, "train_sequences": a.tokens // a.seq,
                       "layer_spec": "local"})
        out["fused" if fused else "logits"] = {"activations": activation_bytes(shape, lay, w),
                                                "logits": logits_bytes(shape, lay, w)}
    return out


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_child(a, variant: str) -> dict:
    cmd = [sys.executable, "-m", "megatron_meml.bench.fused_output", "--child", variant, "--tokens", str(a.tokens),
           "--seq", str(a.seq), "--layers", str(a.layers), "--hidden", str(a.hidden), "--ffn", str(a.ffn), "--heads",
           str(a.heads), "--groups", str(a.groups), "--vocab", str(a.vocab), "--real-vocab", str(a.real_vocab),
           "--dtype", a.dtype]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"error: the {variant} child failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tokens", type=int, default=8192, help="tokens in the one microbatch (a multiple of --seq)")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ffn", type=int, default=896)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--vocab", type=int, default=151936, help="embedding rows (padded vocabulary)")
    p.add_argument("--real-vocab", type=int, default=151665, help="model.vocab_size (Qwen2.5's tokenizer)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--json", help="write both records and the planner's terms here")
    p.add_argument("--child", choices=["fused", "logits"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.tokens % a.seq:
        raise SystemExit(f"error: --tokens {a.tokens} is not a multiple of --seq {a.seq}")
    if a.child:
        print(json.dumps(child(a, a.child)))
        return 0
    plan = planner_view(a)
    recs = {"fused": run_child(a, "fused")}
    need = recs["fused"]["peak_rss"] + plan["logits"]["logits"] * 1.2
    if mem_available() < need:
        raise SystemExit(f"error: the logits variant needs ~{need / GiB:.1f} GiB, MemAvailable is "
                         f"{mem_available() / GiB:.1f} GiB; lower --tokens")
    recs["logits"] = run_child(a, "logits")
    print(f"one MEF step, {a.layers} layers, hidden {a.hidden}, vocab {a.vocab} rows ({a.real_vocab} real), "
          f"{a.tokens} tokens ({a.tokens // a.seq} x {a.seq}), {a.dtype}, {recs['fused']['params'] / 1e6:.1f}M params, "
          f"1 thread; peak reset between phases: {recs['fused']['peak_reset_works']}")
    print(f"planner: static state {plan['state'] / GiB:.3f} GiB (params + grads + Adam, after the step)")
    print("| variant | peak RSS GiB | fwd+bwd peak growth GiB | saved activations GiB (planner) | saved logits GiB "
          "| planner logits term GiB | optimizer step growth GiB | fwd+bwd s | loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in recs.items():
        pl = plan[name]
        print(f"| {name} | {r['peak_rss'] / GiB:.3f} | {r['fb_extra'] / GiB:.3f} | {r['saved_other'] / GiB:.3f} "
              f"({pl['activations'] / GiB:.3f}) | {r['saved_logits'] / GiB:.3f} | {pl['logits'] / GiB:.3f} | "
              f"{r['opt_extra'] / GiB:.3f} | {r['fb_s']:.1f} | {r['loss']:.6f} |")
    ratio = recs["fused"]["peak_rss"] / recs["logits"]["peak_rss"]
    step = recs["fused"]["fb_extra"] / recs["logits"]["fb_extra"]
    dloss = abs(recs["fused"]["loss"] - recs["logits"]["loss"])
    print(f"fused/logits peak RSS: {ratio:.3f} (goal <= 0.5); fwd+bwd peak growth: {step:.3f}; "
          f"|loss difference| {dloss:.2e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "planner": plan, "records": recs, "peak_ratio": ratio}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
