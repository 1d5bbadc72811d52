"""Benchmarks of the meml_kernels ops.

  python -m megatron_meml.bench.kernels --cpu-memory     CPU: peak extra memory of the fused hidden x W log-prob path (torch
                                                twin) vs the naive path, T=8192 H=512 V=32768 fp32, fwd+bwd.
  python -m megatron_meml.bench.kernels --gpu [--json F] GPU: median times, achieved GB/s or TFLOP/s and % of the copy /
                                                matmul ceilings measured in the same run, peak memory, for naive
                                                torch, ours (Triton) and Liger-Kernel where importable.

CPU memory method. Each variant runs in its own fresh subprocess. After the inputs (hidden, weight, targets) are
allocated and touched, the baseline is the current RSS (VmRSS) and the kernel's peak-RSS counter is reset
(``echo 5 > /proc/self/clear_refs``; where that is not allowed, ru_maxrss is used and the baseline is the larger
of VmRSS and the peak so far). One forward+backward then runs. "Extra" = peak RSS - baseline - bytes of the
gradients the variant must produce (dhidden [T,H] and dweight [V,H], fp32: the same size as the inputs). Both
variants are charged the same way, so the ratio compares only the temporaries each one needs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from megatron_meml.backend.runtime.memory import (
    cpu_peak_rss_bytes,
    peak_memory_bytes,
    proc_status_bytes,
    reset_peak_memory,
    reset_peak_rss,
)

CPU_SHAPE = dict(T=8192, H=512, V=32768)


# ----------------------------------------------------------------------------------------------- CPU memory


def cpu_memory_child(variant: str, t: int, h: int, v: int) -> dict:
    """One fwd+bwd of ``variant`` ("fused" or "naive") in this process; returns the memory record."""
    import torch
    from meml_kernels.linear_logprobs import linear_token_logprobs

    torch.manual_seed(0)
    hidden = torch.randn(t, h).requires_grad_()
    weight = torch.randn(v, h).mul_(0.05).requires_grad_()
    targets = torch.randint(0, v, (t,))
    base = proc_status_bytes("VmRSS")
    reset = reset_peak_rss()
    if not reset:
        base = max(base, cpu_peak_rss_bytes())
    t0 = time.perf_counter()
    if variant == "naive":
        logits = hidden @ weight.t()
        logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
        del logits
    else:
        logp = linear_token_logprobs(hidden, weight, targets, impl="torch").logp
    (-logp.sum()).backward()
    seconds = time.perf_counter() - t0
    peak = cpu_peak_rss_bytes()
    grads = hidden.grad.nelement() * hidden.grad.element_size() + weight.grad.nelement() * weight.grad.element_size()
    return dict(variant=variant, baseline=base, peak=peak, grads=grads, extra=peak - base - grads,
                seconds=seconds, peak_reset=reset, logp_sum=float(logp.sum()))


def cpu_memory_main(t: int, h: int, v: int) -> float:
    records = {}
    for variant in ("naive", "fused"):
        cmd = [sys.executable, "-m", "megatron_meml.bench.kernels", "--cpu-memory-child", variant,
               "--shape", str(t), str(h), str(v)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        records[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 1024 ** 3
    print(f"CPU fwd+bwd, T={t} H={h} V={v} fp32 (peak RSS growth minus the dhidden+dweight gradients)")
    for name, r in records.items():
        print(f"  {name:5s}: baseline {r['baseline'] / gib:6.2f} GiB  peak {r['peak'] / gib:6.2f} GiB  "
              f"grads {r['grads'] / gib:5.2f} GiB  extra {r['extra'] / gib:7.3f} GiB  {r['seconds']:6.1f} s"
              f"  (peak reset: {r['peak_reset']})")
    print(f"  sum of log-probs: naive {records['naive']['logp_sum']:.6e}, fused {records['fused']['logp_sum']:.6e}")
    ratio = max(records["fused"]["extra"], 0) / records["naive"]["extra"]
    print(f"fused/naive peak extra memory: {ratio:.4f}")
    return ratio


# ----------------------------------------------------------------------------------------------- GPU

GPU_SHAPES = dict(logits=dict(T=16384, V=151936), linear=dict(T=16384, H=1536, V=151936),
                  adv_small=2048, adv_large=262144, loss_T=16384 * 8)


class GpuBench:
    """Holds the measured ceilings and the result rows of one --gpu run."""

    def __init__(self, quick: bool = False):
        import torch
        from triton.testing import do_bench

        self.torch, self.do_bench = torch, do_bench
        self.rep = 50 if quick else 200
        self.rows: list[dict] = []
        self.copy_bw, self.mm_flops = self._ceilings()

    def time_ms(self, fn, grad_to_none=None) -> float:
        return self.do_bench(fn, warmup=25, rep=self.rep, grad_to_none=grad_to_none, return_mode="median")

    def peak_extra(self, fn, grad_to_none=()) -> int:
        """Bytes allocated at peak during one call beyond what was allocated before it (grads included)."""
        torch = self.torch
        for x in grad_to_none:
            x.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        reset_peak_memory()
        fn()
        torch.cuda.synchronize()
        peak = peak_memory_bytes() - base
        for x in grad_to_none:
            x.grad = None
        return peak

    def _ceilings(self):
        torch = self.torch
        n = 1 << 30   # 1 GiB of bf16 read + 1 GiB written
        x = torch.empty(n // 2, dtype=torch.bfloat16, device="cuda").normal_()
        y = torch.empty_like(x)
        copy_ms = self.time_ms(lambda: y.copy_(x))
        del x, y
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        mm_ms = self.time_ms(lambda: a @ b)
        del a, b
        torch.cuda.empty_cache()
        copy_bw = 2 * n / (copy_ms * 1e-3)
        mm = 2 * 8192 ** 3 / (mm_ms * 1e-3)
        print(f"ceilings: device copy {copy_bw / 1e12:.2f} TB/s ({copy_ms:.3f} ms for 2 GiB moved), "
              f"8192^3 bf16 matmul {mm / 1e12:.0f} TFLOP/s ({mm_ms:.3f} ms)", flush=True)
        return copy_bw, mm

    def run(self, op: str, variant: str, mode: str, fn, *, nbytes: float = 0.0, flops: float = 0.0,
            grad_to_none=()):
        """Time ``fn``; rate is bytes/s vs the copy ceiling when ``nbytes`` is given, else flop/s vs matmul."""
        torch = self.torch
        row = dict(op=op, variant=variant, mode=mode)
        try:
            row["ms"] = self.time_ms(fn, grad_to_none=list(grad_to_none) or None)
            row["peak_gib"] = self.peak_extra(fn, grad_to_none) / 1024 ** 3
        except torch.cuda.OutOfMemoryError:
            row["error"] = "OOM"
        except Exception as exc:  # a failing comparison library must not hide the other rows
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        for x in grad_to_none:
            x.grad = None
        torch.cuda.empty_cache()
        if "ms" in row:
            s = row["ms"] * 1e-3
            if nbytes:
                row["rate"] = f"{nbytes / s / 1e9:.0f} GB/s"
                row["pct"] = 100 * (nbytes / s) / self.copy_bw
                row["floor_x"] = s / (nbytes / self.copy_bw)
            elif flops:
                row["rate"] = f"{flops / s / 1e12:.0f} TFLOP/s"
                row["pct"] = 100 * (flops / s) / self.mm_flops
                row["floor_x"] = s / (flops / self.mm_flops)
        self.rows.append(row)
        print(_row_text(row), flush=True)

    def table(self) -> str:
        head = ("| op | variant | mode | median ms | achieved | % of ceiling | x floor | peak extra GiB |\n"
                "|---|---|---|---:|---:|---:|---:|---:|")
        return "\n".join([head] + [_row_md(r) for r in self.rows])


def _row_text(r: dict) -> str:
    if "error" in r:
        return f"  {r['op']:<22s} {r['variant']:<8s} {r['mode']:<8s} {r['error']}"
    return (f"  {r['op']:<22s} {r['variant']:<8s} {r['mode']:<8s} {r['ms']:9.3f} ms  {r.get('rate', ''):>14s}  "
            f"peak {r['peak_gib']:.2f} GiB")


def _row_md(r: dict) -> str:
    if "error" in r:
        return f"| {r['op']} | {r['variant']} | {r['mode']} | {r['error']} | | | | |"
    pct = f"{r['pct']:.0f}%" if "pct" in r else ""
    fx = f"{r['floor_x']:.2f}" if "floor_x" in r else ""
    return (f"| {r['op']} | {r['variant']} | {r['mode']} | {r['ms']:.3f} | {r.get('rate', '')} | {pct} | {fx} | "
            f"{r['peak_gib']:.2f} |")


class _swapped:
    """Temporarily replace ``module.attr`` (a tile-config dict) by ``value``."""

    def __init__(self, module, attr: str, value: dict):
        self.module, self.attr, self.value = module, attr, value

    def __enter__(self):
        self.saved = getattr(self.module, self.attr)
        setattr(self.module, self.attr, dict(self.value))

    def __exit__(self, *exc):
        setattr(self.module, self.attr, self.saved)


def _sweep(b: "GpuBench", op: str, mode: str, module, attr: str, candidates, fn, **rate):
    """Time ``fn`` under each candidate config of ``module.attr`` (rows "cfg<i>"), printing each config."""
    for i, cfg in enumerate(candidates):
        with _swapped(module, attr, cfg):
            b.run(op, f"cfg{i}", mode, fn, **rate)
        print(f"    cfg{i} {attr} = {cfg}", flush=True)


LINEAR_FWD_CANDIDATES = [
    dict(BLOCK_T=128, BLOCK_V=256, BLOCK_H=64, GROUP_T=8, num_warps=8, num_stages=4),
    dict(BLOCK_T=256, BLOCK_V=128, BLOCK_H=64, GROUP_T=8, num_warps=8, num_stages=3),
    dict(BLOCK_T=128, BLOCK_V=256, BLOCK_H=32, GROUP_T=16, num_warps=8, num_stages=4),
    dict(BLOCK_T=128, BLOCK_V=256, BLOCK_H=64, GROUP_T=32, num_warps=8, num_stages=3),
    dict(BLOCK_T=64, BLOCK_V=256, BLOCK_H=64, GROUP_T=16, num_warps=4, num_stages=4),
]
LINEAR_BWD_CANDIDATES = [
    dict(BLOCK_T=128, BLOCK_V=128, BLOCK_H=64, GROUP_T=8, num_warps=8, num_stages=3),
    dict(BLOCK_T=128, BLOCK_V=256, BLOCK_H=64, GROUP_T=8, num_warps=8, num_stages=3),
    dict(BLOCK_T=128, BLOCK_V=256, BLOCK_H=64, GROUP_T=16, num_warps=8, num_stages=4),
]
LOGITS_FWD_CANDIDATES = [dict(BLOCK_V=8192, num_warps=16), dict(BLOCK_V=4096, num_warps=16),
                         dict(BLOCK_V=2048, num_warps=8), dict(BLOCK_V=8192, num_warps=8)]
LOGITS_BWD_CANDIDATES = [dict(BLOCK_V=4096, num_warps=8), dict(BLOCK_V=1024, num_warps=4),
                         dict(BLOCK_V=4096, num_warps=16)]


def _liger():
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy, liger_fused_linear_cross_entropy
        return liger_cross_entropy, liger_fused_linear_cross_entropy
    except Exception as exc:  # ImportError, or a triton/torch version mismatch inside liger
        print(f"Liger-Kernel not usable here ({type(exc).__name__}: {exc}); its rows are skipped", flush=True)
        return None


def bench_logits(b: GpuBench, liger, t: int, v: int, sweep: bool = False):
    torch = b.torch
    from meml_kernels.logprobs import token_logprobs, triton_impl

    logits = torch.randn(t, v, device="cuda", dtype=torch.bfloat16)
    tgt = torch.randint(0, v, (t,), device="cuda")
    nb = t * v * 2
    op = f"logprobs T={t} V={v}"

    def naive(x):
        return torch.log_softmax(x.float(), dim=-1).gather(1, tgt[:, None]).squeeze(1)

    with torch.no_grad():
        b.run(op, "naive", "fwd", lambda: naive(logits), nbytes=nb)
        b.run(op, "ours", "fwd", lambda: token_logprobs(logits, tgt, impl="triton").logp, nbytes=nb)
        if sweep:
            _sweep(b, op, "fwd", triton_impl, "GPU_FWD", LOGITS_FWD_CANDIDATES,
                   lambda: token_logprobs(logits, tgt, impl="triton").logp, nbytes=nb)
        if liger:
            b.run(op, "liger", "fwd", lambda: liger[0](logits, tgt, reduction="none"), nbytes=nb)
    x = logits.clone().requires_grad_()
    del logits
    b.run(op, "naive", "fwd+bwd", lambda: (-naive(x)).sum().backward(), nbytes=3 * nb, grad_to_none=[x])
    b.run(op, "ours", "fwd+bwd", lambda: (-token_logprobs(x, tgt, impl="triton").logp).sum().backward(),
          nbytes=3 * nb, grad_to_none=[x])
    if sweep:
        _sweep(b, op, "fwd+bwd", triton_impl, "GPU_BWD", LOGITS_BWD_CANDIDATES,
               lambda: (-token_logprobs(x, tgt, impl="triton").logp).sum().backward(), nbytes=3 * nb,
               grad_to_none=[x])
    if liger:
        b.run(op, "liger", "fwd+bwd", lambda: liger[0](x, tgt, reduction="sum").backward(), nbytes=3 * nb,
              grad_to_none=[x])
    del x
    torch.cuda.empty_cache()


def bench_linear(b: GpuBench, liger, t: int, h: int, v: int, sweep: bool = False):
    torch = b.torch
    from meml_kernels.linear_logprobs import linear_token_logprobs, triton_impl

    hid = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(v, h, device="cuda", dtype=torch.bfloat16) * 0.02)
    tgt = torch.randint(0, v, (t,), device="cuda")
    f_fwd, f_all = 2.0 * t * h * v, 8.0 * t * h * v
    op = f"linear T={t} H={h} V={v}"

    def naive(x, wt):
        return torch.log_softmax((x @ wt.t()).float(), dim=-1).gather(1, tgt[:, None]).squeeze(1)

    def ours(x, wt):
        return linear_token_logprobs(x, wt, tgt, impl="triton").logp

    with torch.no_grad():
        b.run(op, "naive", "fwd", lambda: naive(hid, w), flops=f_fwd)
        b.run(op, "ours", "fwd", lambda: ours(hid, w), flops=f_fwd)
        if sweep:
            _sweep(b, op, "fwd", triton_impl, "GPU_CONFIG", LINEAR_FWD_CANDIDATES, lambda: ours(hid, w), flops=f_fwd)
        if liger:
            b.run(op, "liger", "fwd", lambda: liger[1](hid, w, tgt, reduction="sum"), flops=f_fwd)
    x, wt = hid.clone().requires_grad_(), w.clone().requires_grad_()
    del hid, w
    b.run(op, "naive", "fwd+bwd", lambda: (-naive(x, wt)).sum().backward(), flops=f_all, grad_to_none=[x, wt])
    b.run(op, "ours", "fwd+bwd", lambda: (-ours(x, wt)).sum().backward(), flops=f_all, grad_to_none=[x, wt])
    if sweep:
        _sweep(b, op, "fwd+bwd", triton_impl, "GPU_BWD_CONFIG", LINEAR_BWD_CANDIDATES,
               lambda: (-ours(x, wt)).sum().backward(), flops=f_all, grad_to_none=[x, wt])
    if liger:
        b.run(op, "liger", "fwd+bwd", lambda: liger[1](x, wt, tgt, reduction="sum").backward(), flops=f_all,
              grad_to_none=[x, wt])
    del x, wt
    torch.cuda.empty_cache()


def bench_small_ops(b: GpuBench, s_small: int, s_large: int, t_loss: int):
    torch = b.torch
    from meml_kernels.group_advantages import group_advantages
    from meml_kernels.token_loss import token_loss

    for s in (s_small, s_large):
        r = (torch.rand(s, device="cuda") > 0.5).float()
        gid = torch.randperm(s, device="cuda") // 8
        nb = s * (4 + 8 + 4)
        for impl, name in (("torch", "torch twin"), ("triton", "ours")):
            b.run(f"group_adv S={s}", name, "fwd",
                  lambda: group_advantages(r, gid, s // 8, std_normalize=True, impl=impl), nbytes=nb)
    t = t_loss
    logp = -torch.rand(t, device="cuda") * 3
    old = logp + 0.3 * torch.randn(t, device="cuda")
    args = (old, torch.randn(t, device="cuda"), torch.randint(0, 3, (t,), device="cuda", dtype=torch.int8),
            torch.rand(t, device="cuda") > 0.1, torch.rand(t, device="cuda"))
    ref = logp + 0.3 * torch.randn(t, device="cuda")
    x = logp.clone().requires_grad_()
    nb = t * (4 * 6 + 1 + 1 + 4 * 2 + 1)
    for impl, name in (("torch", "torch twin"), ("triton", "ours")):
        b.run(f"token_loss T={t}", name, "fwd+bwd",
              lambda: token_loss(x, *args, ref_logp=ref, beta=0.05, impl=impl).loss.sum().backward(),
              nbytes=nb, grad_to_none=[x])


def gpu_main(args) -> str:
    import torch
    import triton

    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    t0 = time.perf_counter()
    b = GpuBench(quick=args.quick)
    liger = _liger()
    scale = 4 if args.quick else 1
    sh = GPU_SHAPES
    bench_logits(b, liger, sh["logits"]["T"] // scale, sh["logits"]["V"], args.configs)
    bench_linear(b, liger, sh["linear"]["T"] // scale, sh["linear"]["H"], sh["linear"]["V"], args.configs)
    bench_small_ops(b, sh["adv_small"], sh["adv_large"], sh["loss_T"])
    table = b.table()
    print(f"\n{table}\n\n(ceilings measured in this run: copy {b.copy_bw / 1e12:.2f} TB/s, matmul "
          f"{b.mm_flops / 1e12:.0f} TFLOP/s; fused-linear fwd+bwd counts the nominal 8*T*H*V flop; "
          f"bench time {time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), copy_bw=b.copy_bw, mm_flops=b.mm_flops,
                           rows=b.rows), f, indent=1)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-memory", action="store_true", help="CPU peak-memory comparison (fused vs naive)")
    p.add_argument("--gpu", action="store_true", help="GPU timing table")
    p.add_argument("--quick", action="store_true", help="GPU: T/4 and shorter timing windows")
    p.add_argument("--configs", action="store_true", help="GPU: also time candidate tile configs (rows cfg<i>)")
    p.add_argument("--json", help="GPU: also write the rows as JSON here")
    p.add_argument("--shape", nargs=3, type=int, metavar=("T", "H", "V"), help="CPU shape (default 8192 512 32768)")
    p.add_argument("--cpu-memory-child", choices=["naive", "fused"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    t, h, v = args.shape or (CPU_SHAPE["T"], CPU_SHAPE["H"], CPU_SHAPE["V"])
    if args.cpu_memory_child:
        print(json.dumps(cpu_memory_child(args.cpu_memory_child, t, h, v)))
        return 0
    if not (args.cpu_memory or args.gpu):
        p.error("pick --cpu-memory and/or --gpu")
    if args.cpu_memory:
        cpu_memory_main(t, h, v)
    if args.gpu:
        import torch
        if not torch.cuda.is_available():
            print("--gpu: no CUDA device here", file=sys.stderr)
            return 2
        gpu_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
