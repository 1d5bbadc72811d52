"""A Qwen2.5-1.5B-shaped MEF + RIEL step measured on one GPU, the planner's prediction beside every number.

    python -m megatron_meml.gpu.scale_check               # on a GPU (tools/gpu_check.sh runs it): ~3 minutes on an H200
    python -m megatron_meml.gpu.scale_check --tiny         # the same script end to end on a tiny shape (CPU, ~1 minute)
    python -m megatron_meml.gpu.scale_check --parts mef      # only some parts: ceilings, mef, riel

Shape (default): 28 layers, hidden 1536, 12 heads, 2 KV groups (head dim 128), ffn 8960, vocab 151936, tied
embeddings, qkv bias, random weights, bf16, TP = PP = DP = 1, megatron's local layer spec (the lent GPU image has no
Transformer Engine; sequence parallelism needs TE or apex norms, and TP = 1 here anyway).

Parts, each catching its own errors (a failed part still prints its row, with the error):
  ceilings  bf16 8192^3 matmul TFLOP/s and a 1 GiB device copy, measured in this run (one MFU denominator; the
            other is the spec sheet's dense bf16 peak, ``SPEC_PEAK_FLOPS``: 989 TFLOP/s for the H100 SXM and H200).
  mef       MEF steps of --mef-tokens tokens (random tokens, SFT loss through the fused output layer), first with the
            planner's recompute choice for this batch on one GPU, then with the other choice: step time, tokens/s,
            MFU = model FLOPs (6·N_mm + 6·L·s·q per token, incl. causal attention; planning.ModelShape) / step time /
            peak, against the spec peak (``mfu_spec``, the number to quote) and the measured matmul peak (``mfu``),
            peak memory (max_memory_allocated).
  riel      --riel-steps RIEL steps of 16 questions x 3 experts x G=8 on the synthetic task (byte tokenizer; with
            random weights every reward is 0, so riel.skip_zero_advantage=false keeps all 384 rollouts in the
            training forward, and the hard-example buffer fires), <= 512 new tokens: time split generate / score
            (rewards, advantages, pairs, packing) / train, peak memory, generated and trained tokens/s.
Beside each measured number: megatron_meml.planning's prediction for the same shape, layout and batch (hardware:
the measured matmul peak and copy bandwidth, the planner's assumed MFU / HBM efficiency) and measured/planner.
(On the CPU, --tiny, the peak is the process RSS and the ceilings are fp32: the ratios there only prove the
plumbing.)
Output: markdown tables on stdout; everything in ``--json`` (default $OUT/scale_check.json; its ``table`` holds the
markdown, ``summary`` the one line), rewritten after every part so a run cut short keeps what it measured; the
summary line last on stdout. The run directory (logs of stages.run.setup) goes to a temporary folder, not $OUT: a
device call brings back only 8 files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional

from megatron_meml.algo.objective import RielObjective, sft_loss
from megatron_meml.backend.runtime.memory import peak_memory_bytes, reset_peak_memory
from megatron_meml.backend.train import model as bmodel
from megatron_meml.backend.train import optimizer as boptim
from megatron_meml.backend.train.step import forward_backward
from megatron_meml.config import load_config
from megatron_meml.planning import Hardware, Layout, ModelShape, Workload, evaluate
from megatron_meml.rollout.scheduler import build_riel_scheduler, verifier_reward
from megatron_meml.stages.common import finish, load_records, riel_questions
from megatron_meml.stages.run import setup
from megatron_meml.types import MicroBatch, TokenKind

GiB = float(2 ** 30)
#: Dense bf16 tensor-core peak of the spec sheets (no sparsity), by a substring of torch's device name; the first
#: match wins. H100 SXM5 and H200 share the GH100 die and clocks: 989.4 TFLOP/s; H100 PCIe 756; A100 312.
SPEC_PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12))


def spec_peak(device_name: str) -> Optional[float]:
    """The spec sheet's dense bf16 FLOP/s of this device (None when unknown, e.g. the CPU)."""
    for key, flops in SPEC_PEAK_FLOPS:
        if key in device_name:
            return flops
    return None
QWEN15 = dict(layers=28, hidden=1536, heads=12, groups=2, ffn=8960, vocab=151936, seq=2048, mef_tokens=16384,
              micro=4, questions=16, group=8, new=512, riel_seq=768, riel_micro=16, budget=262144, dtype="bf16")
TINY = dict(layers=2, hidden=64, heads=4, groups=2, ffn=176, vocab=512, seq=64, mef_tokens=256, micro=2,
            questions=2, group=2, new=16, riel_seq=128, riel_micro=8, budget=4096, dtype="fp32")


def config_overrides(s: dict, run_dir: str) -> List[str]:
    return [f"model.num_layers={s['layers']}", f"model.hidden_size={s['hidden']}",
            f"model.num_attention_heads={s['heads']}", f"model.num_query_groups={s['groups']}",
            f"model.ffn_hidden_size={s['ffn']}", f"model.vocab_size={s['vocab']}",
            f"model.padded_vocab_size={s['vocab']}", "model.tie_word_embeddings=true", "model.add_qkv_bias=true",
            "model.rotary_base=1000000.0", f"model.max_position_embeddings={max(s['seq'], s['riel_seq'])}",
            "model.recompute_activations=false", f"precision.dtype={s['dtype']}", "data.name=synthetic",
            "data.tokenizer=byte", f"data.seq_length={s['riel_seq']}", f"data.micro_batch_size={s['riel_micro']}",
            f"riel.questions_per_step={s['questions']}", f"riel.group_size={s['group']}",
            "riel.skip_zero_advantage=false", f"riel.buffer_k={max(1, s['group'] * 3 // 4)}",
            f"riel.buffer_capacity={s['questions'] * 3}", f"rollout.max_new_tokens={s['new']}",
            f"rollout.token_budget={s['budget']}", "experts.prompts=[Use equations., Go step by step., Split into parts.]",
            "eval.enabled=false", "checkpoint.save_interval=0", f"logging.run_dir={run_dir}",
            "logging.progress_bar=false", "logging.tensorboard=false"]


# ---------------------------------------------------------------------------------------------------- measurement
class Device:
    """Synchronisation and peak memory on CUDA (max_memory_allocated) or the CPU (VmHWM, reset via clear_refs)."""

    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.name = torch.cuda.get_device_name() if self.cuda else "CPU"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        reset_peak_memory()

    def peak(self) -> float:
        return peak_memory_bytes()

    def timed(self, fn: Callable) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


def ceilings(dev: Device, dtype: str) -> Dict[str, float]:
    """Matmul FLOP/s (bf16 8192^3 on GPU; fp32 1024^3 on the CPU) and device copy bytes/s, best of a few."""
    torch = dev.torch
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    n = 8192 if dev.cuda else 1024
    a = torch.randn(n, n, dtype=dt, device="cuda" if dev.cuda else "cpu")
    b = torch.randn_like(a)
    a @ b
    mm = min(dev.timed(lambda: a @ b) for _ in range(5 if dev.cuda else 2))
    del a, b
    size = (1 << 30) if dev.cuda else (64 << 20)
    x = torch.empty(size // 2, dtype=torch.bfloat16, device="cuda" if dev.cuda else "cpu")
    y = torch.empty_like(x)
    y.copy_(x)
    cp = min(dev.timed(lambda: y.copy_(x)) for _ in range(5))
    del x, y
    if dev.cuda:
        torch.cuda.empty_cache()
    return {"matmul_flops": 2 * n ** 3 / mm, "copy_bytes_per_s": 2 * size / cp, "matmul_n": n}


def planner_inputs(cfg, ceil: Dict[str, float], mem_gib: float):
    hw = Hardware(memory_gib=mem_gib, peak_tflops=ceil["matmul_flops"] / 1e12, hbm_tbps=ceil["copy_bytes_per_s"] / 1e12,
                  gpus_per_node=1)
    return ModelShape.from_config(cfg), hw


def workload(cfg, **kw):
    w = Workload.from_config(cfg)
    return Workload(**{**w.__dict__, "layer_spec": "local", **kw})


def err_text(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def ratio(measured: Optional[float], predicted: Optional[float]) -> str:
    if not measured or not predicted:
        return "-"
    return f"{measured / predicted:.2f}"


# ---------------------------------------------------------------------------------------------------- MEF
def mef_part(run, dev: Device, s: dict, ceil: Dict[str, float], mem_gib: float, steps: int,
             on_row: Callable[[List[dict]], None] = lambda rows: None) -> List[dict]:
    """MEF steps with the planner's recompute choice, then the other one; one row each."""
    import torch

    cfg = run.cfg
    seq, micro = s["seq"], s["micro"]
    n_seq = s["mef_tokens"] // seq
    shape, hw = planner_inputs(cfg, ceil, mem_gib)
    work = workload(cfg, seq_length=seq, micro_batch_size=micro, train_sequences=n_seq, rollouts=0, token_budget=0)
    plans = {rc: evaluate(shape, Layout(1, 1, 1, recompute=rc), work, hw) for rc in (False, True)}
    choice = not plans[False].fits and plans[True].fits
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (n_seq, seq), generator=g)
    mask = torch.ones(n_seq, seq)
    mask[:, -1] = 0
    total = mask.sum()
    mbs = [MicroBatch(tokens=t, loss_mask=m, weight=m / total,
                      kind=torch.full(t.shape, int(TokenKind.SFT), dtype=torch.int8))
           for t, m in zip(tokens.split(micro), mask.split(micro))]
    optimizer, scheduler = boptim.build_optimizer(cfg, run.chunks, lr=1e-5, total_steps=4 * steps + 2)
    rows = []
    for rc in (choice, not choice):
        row = {"part": "mef", "recompute": rc, "planner_choice": rc == choice, "tokens_per_step": n_seq * seq}
        try:
            bmodel.set_recompute(run.chunks, rc)

            def step():
                boptim.zero_grads(run.chunks, optimizer)
                res = forward_backward(run.chunks, mbs, sft_loss)
                boptim.optimizer_step(optimizer, scheduler)
                row["loss"] = sum(r["loss"] for r in res)

            dev.timed(step)                                  # warm-up (allocator, Triton compilation, Adam state)
            dev.reset_peak()
            times = sorted(dev.timed(step) for _ in range(steps))
            pl = plans[rc]
            flops = shape.model_flops_per_token(seq) * n_seq * seq
            row.update(step_s=times[len(times) // 2], best_s=times[0], peak_bytes=dev.peak(),
                       tokens_per_s=n_seq * seq / times[len(times) // 2],
                       mfu=flops / times[len(times) // 2] / ceil["matmul_flops"], model_flops=flops,
                       mfu_spec=(flops / times[len(times) // 2] / ceil["spec_flops"]) if ceil.get("spec_flops")
                       else None,
                       planner_step_s=pl.train_s, planner_peak_bytes=pl.state_total + pl.activations + pl.logits,
                       planner_fits=pl.fits)
        except Exception as exc:  # the row says what failed; the other parts still run
            row["error"] = err_text(exc)
            traceback.print_exc()
        rows.append(row)
        on_row(rows)
        print(f"MEF recompute={rc}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                    for k, v in row.items()}), flush=True)
        if dev.cuda:
            torch.cuda.empty_cache()
    bmodel.set_recompute(run.chunks, cfg.model.recompute_activations)
    del optimizer
    return rows


# ---------------------------------------------------------------------------------------------------- RIEL
def riel_part(run, dev: Device, s: dict, ceil: Dict[str, float], mem_gib: float, steps: int,
              on_row: Callable[[List[dict]], None] = lambda rows: None) -> List[dict]:
    """RIEL steps (the trainer's loop body, timed in parts); one row per step."""

    cfg = run.cfg
    reward = verifier_reward(cfg.data.name)
    score_s = [0.0]

    def timed_reward(text, record):
        t0 = time.perf_counter()
        try:
            return reward(text, record)
        finally:
            score_s[0] += time.perf_counter() - t0

    sched = build_riel_scheduler(cfg, run.chunks, run.tokenizer, run.prompts, timed_reward)
    optimizer, scheduler = boptim.build_optimizer(cfg, run.chunks, lr=cfg.riel.lr, total_steps=steps)
    records = load_records(cfg, cfg.data.train_split)
    loss_fn = RielObjective(cfg.riel)
    shape, hw = planner_inputs(cfg, ceil, mem_gib)
    rows = []
    for step in range(steps):
        row = {"part": "riel", "step": step}
        try:
            dev.reset_peak()
            score_s[0] = 0.0
            dev.sync()
            t0 = time.perf_counter()
            out = sched.step(riel_questions(records, step, cfg.riel.questions_per_step, cfg.seed), step)
            dev.sync()
            t1 = time.perf_counter()
            boptim.zero_grads(run.chunks, optimizer)
            res = forward_backward(run.chunks, out.microbatches, loss_fn, temperature=cfg.rollout.temperature)
            boptim.optimizer_step(optimizer, scheduler)
            dev.sync()
            t2 = time.perf_counter()
            st = out.stats
            gen_s = st.get("rollout/seconds", t1 - t0) - score_s[0]
            rollouts = [ro for grp in out.groups for ro in grp.rollouts]
            new_tok = sum(len(ro.response_ids) for ro in rollouts)
            prompt = sum(len(ro.request.prompt_ids) for ro in rollouts) / max(len(rollouts), 1)
            trained = sum(st.get(f"tokens/{k}", 0.0) for k in ("grpo", "kl", "sft"))
            n_train = len(rollouts) + st.get("kl/questions", 0) * cfg.riel.max_kl_responses
            row.update(generate_s=gen_s, score_s=(t1 - t0) - gen_s, train_s=t2 - t1, step_s=t2 - t0,
                       peak_bytes=dev.peak(), rollouts=len(rollouts), new_tokens=new_tok,
                       gen_tokens_per_s=new_tok / max(gen_s, 1e-9), trained_tokens=trained,
                       forward_tokens=st.get("tokens/forward", 0.0), train_tokens_per_s=trained / max(t2 - t1, 1e-9),
                       sft_fired=st.get("sft/fired", 0.0), loss=sum(r["loss"] for r in res),
                       microbatches=len(out.microbatches))
            seq = int(round(prompt)) + cfg.rollout.max_new_tokens
            w = workload(cfg, seq_length=seq, rollouts=len(rollouts), train_sequences=int(n_train),
                         prompt_tokens=int(round(prompt)), new_tokens=cfg.rollout.max_new_tokens,
                         micro_batch_size=max(1, cfg.data.micro_batch_size * cfg.data.seq_length // seq))
            pl = evaluate(shape, Layout(1, 1, 1), w, hw)
            row.update(planner_generate_s=pl.rollout_s, planner_train_s=pl.train_s,
                       planner_peak_bytes=pl.state_total + max(pl.activations + pl.logits, pl.kv_cache),
                       planner_step_s=pl.step_s)
        except Exception as exc:
            row["error"] = err_text(exc)
            traceback.print_exc()
        rows.append(row)
        on_row(rows)
        print(f"RIEL step {step}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                  for k, v in row.items()}), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------- report
def fmt(x, spec=".2f", scale=1.0) -> str:
    return "-" if x is None else format(x / scale, spec)


def pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def tables(ceil: dict, mef: List[dict], riel: List[dict]) -> str:
    out = []
    if ceil:
        out.append(f"ceilings: spec {fmt(ceil.get('spec_flops'), '.4g', 1e12)} TFLOP/s, "
                   f"measured matmul {fmt(ceil.get('matmul_flops'), '.4g', 1e12)} TFLOP/s "
                   f"({ceil.get('matmul_n')}^3), device copy {fmt(ceil.get('copy_bytes_per_s'), '.3g', 1e12)} TB/s"
                   + (f"; error: {ceil['error']}" if "error" in ceil else ""))
    if mef:
        out += ["", "| MEF | tokens/step | step s (planner, ratio) | tokens/s | MFU spec | MFU measured peak | "
                    "peak GiB (planner, ratio) | loss |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mef:
            name = f"recompute {'on' if r['recompute'] else 'off'}{' (planner)' if r['planner_choice'] else ''}"
            if "error" in r:
                out.append(f"| {name} | {r['tokens_per_step']} | error: {r['error']} | | | | | |")
                continue
            out.append(f"| {name} | {r['tokens_per_step']} | {r['step_s']:.3f} ({r['planner_step_s']:.3f}, "
                       f"{ratio(r['step_s'], r['planner_step_s'])}) | {r['tokens_per_s']:.0f} | {pct(r.get('mfu_spec'))} | "
                       f"{pct(r['mfu'])} | "
                       f"{r['peak_bytes'] / GiB:.1f} ({r['planner_peak_bytes'] / GiB:.1f}, "
                       f"{ratio(r['peak_bytes'], r['planner_peak_bytes'])}) | {r['loss']:.4f} |")
    if riel:
        out += ["", "| RIEL step | rollouts | new tokens | generate s (planner, ratio) | score s | train s (planner, "
                    "ratio) | gen tok/s | train tok/s | peak GiB (planner, ratio) | SFT fired |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in riel:
            if "error" in r:
                out.append(f"| {r['step']} | error: {r['error']} | | | | | | | | |")
                continue
            out.append(f"| {r['step']} | {r['rollouts']} | {r['new_tokens']} | {r['generate_s']:.2f} "
                       f"({r['planner_generate_s']:.2f}, {ratio(r['generate_s'], r['planner_generate_s'])}) | "
                       f"{r['score_s']:.2f} | {r['train_s']:.2f} ({r['planner_train_s']:.2f}, "
                       f"{ratio(r['train_s'], r['planner_train_s'])}) | {r['gen_tokens_per_s']:.0f} | "
                       f"{r['train_tokens_per_s']:.0f} | {r['peak_bytes'] / GiB:.1f} "
                       f"({r['planner_peak_bytes'] / GiB:.1f}, {ratio(r['peak_bytes'], r['planner_peak_bytes'])}) | "
                       f"{int(r['sft_fired'])} |")
    return "\n".join(out)


def summary_line(mef: List[dict], riel: List[dict]) -> str:
    parts = []
    ok = [r for r in mef if "error" not in r]
    if ok:
        best = max(ok, key=lambda r: r["mfu"])
        parts.append(f"MEF MFU {pct(best.get('mfu_spec'))} of spec, {pct(best['mfu'])} of measured matmul "
                     f"({best['tokens_per_s']:.0f} tok/s, recompute "
                     f"{'on' if best['recompute'] else 'off'}, step/planner {ratio(best['step_s'], best['planner_step_s'])})")
    ok = [r for r in riel if "error" not in r]
    if ok:
        r = ok[-1]
        parts.append(f"RIEL step {r['step_s']:.1f}s = gen {r['generate_s']:.1f} + score {r['score_s']:.1f} + train "
                     f"{r['train_s']:.1f} (planner {r['planner_step_s']:.1f}), peak {r['peak_bytes'] / GiB:.1f} GiB")
    errors = sum("error" in r for r in mef + riel)
    return "scale-check: " + ("; ".join(parts) or "no part finished") + (f"; {errors} part(s) failed" if errors else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--tiny", "--dry-run", action="store_true", help="tiny shape (CPU): proves the script end to end")
    ap.add_argument("--parts", default="ceilings,mef,riel")
    ap.add_argument("--mef-steps", type=int, default=3, help="timed MEF steps per recompute setting (+1 warm-up)")
    ap.add_argument("--riel-steps", type=int, default=2)
    ap.add_argument("--mef-tokens", type=int, help="tokens per MEF step (default 16384; tiny 256)")
    ap.add_argument("--gpu-mem-gib", type=float, help="usable GPU memory for the planner (default: the device's)")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"), help="folder of scale_check.json")
    ap.add_argument("--json", help="the result file (default OUT/scale_check.json)")
    a = ap.parse_args(argv)
    import torch

    dev = Device()
    s = dict(TINY if a.tiny or not dev.cuda else QWEN15)
    if a.mef_tokens:
        s["mef_tokens"] = a.mef_tokens
    if not dev.cuda:
        torch.set_num_threads(1)
    parts = set(a.parts.split(","))
    json_path = a.json or os.path.join(a.out, "scale_check.json")
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    mem_gib = a.gpu_mem_gib or (torch.cuda.get_device_properties(0).total_memory / GiB if dev.cuda else 16.0)
    print(f"scale check on {dev.name}: {s['layers']} layers, hidden {s['hidden']}, heads {s['heads']}/{s['groups']}, "
          f"ffn {s['ffn']}, vocab {s['vocab']}, {s['dtype']}; planner memory {mem_gib:.0f} GiB", flush=True)
    ceil: Dict[str, float] = {}
    try:
        ceil = ceilings(dev, s["dtype"])
    except Exception as exc:
        ceil = {"error": err_text(exc), "matmul_flops": 989e12 if dev.cuda else 1e10,
                "copy_bytes_per_s": 3.35e12 if dev.cuda else 1e10, "matmul_n": 0}
    ceil["spec_flops"] = spec_peak(dev.name)
    t0 = time.perf_counter()
    cfg = load_config(None, config_overrides(s, tempfile.mkdtemp(prefix="scale_check_run_")))
    try:
        run = setup(cfg)
    except Exception as exc:   # nothing to measure without a model: say why in the summary line
        traceback.print_exc()
        print(f"scale-check: model build failed: {err_text(exc)}", flush=True)
        return 1
    shape = ModelShape.from_config(cfg)
    print(f"built {shape.params() / 1e6:.1f}M parameters in {time.perf_counter() - t0:.1f} s", flush=True)
    mef: List[dict] = []
    riel: List[dict] = []

    def save(mef_rows=None, riel_rows=None) -> str:   # after every row: a run cut short keeps what it measured
        m, r = mef if mef_rows is None else mef_rows, riel if riel_rows is None else riel_rows
        text = tables(ceil if "ceilings" in parts else {}, m, r)
        tmp = json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"device": dev.name, "shape": s, "params": shape.params(), "ceilings": ceil, "mef": m,
                       "riel": r, "table": text, "summary": summary_line(m, r)}, f, indent=1)
        os.replace(tmp, json_path)
        return text

    save()
    if "mef" in parts:
        mef = mef_part(run, dev, s, ceil, mem_gib, a.mef_steps, on_row=lambda rows: save(mef_rows=rows))
        print(save(), flush=True)
    if "riel" in parts:
        riel = riel_part(run, dev, s, ceil, mem_gib, a.riel_steps, on_row=lambda rows: save(riel_rows=rows))
        print(save(), flush=True)
    save()
    line = summary_line(mef, riel)
    finish(run)
    print(line, flush=True)
    return 1 if any("error" in r for r in mef + riel) else 0


if __name__ == "__main__":
    sys.exit(main())
