"""Ahead-of-time compilation of every Triton kernel here for NVIDIA GPUs, on a machine without one: registers,
stack (spills) and shared memory per kernel at the real shapes, read from the compiled cubin.

    python -m meml_kernels.aot                          # sm_90 and sm_80, Qwen2.5-1.5B and Llama-3.2-1B, all cases
    python -m meml_kernels.aot --arch sm_90 --fast --json out.json --markdown table.md
    python -m meml_kernels.aot --config /path/to/config.json ...   # shapes from a Hugging Face config.json

How. Each case is one launch as the public entry point would issue it on that GPU: the same constexprs and
warps/stages (taken from the launchers' own plan functions: ``decode_attention.triton_impl.launch_plan``,
``linear_logprobs.triton_impl.gpu_config`` / ``num_splits``, ``logprobs.triton_impl.GPU_FWD`` / ``GPU_BWD``, ...),
the same argument types, and the specialisation Triton's launcher would derive from the real values (integer
arguments equal to 1 become constants, integers and pointers divisible by 16 get ``tt.divisibility = 16``). It is
compiled with ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32))`` --
no driver, no GPU -- and the cubin is read with the ``cuobjdump -res-usage`` that ships in the triton wheel:
REG (registers per thread), STACK (bytes of stack frame per thread: spills and local arrays live there), LOCAL;
``--ptxas`` also runs the wheel's ``ptxas -v`` (the one Triton uses for that target) on the PTX for the spill-store /
spill-load byte counts. Shared
memory is the dynamic amount Triton requests at launch (``metadata.shared``), checked against the per-block opt-in
limit of the target (sm_90: 227 KiB = 232448 B; sm_80: 163 KiB = 166912 B) -- Triton refuses a launch above it.

A case *passes* when it compiles, STACK == 0 and LOCAL == 0 (nothing spilled) and its shared memory fits.
Compiling needs Triton's real JIT: run this with ``TRITON_INTERPRET`` unset (the interpreter replaces
``@triton.jit`` functions); tests call it in a subprocess (tests/kernels/test_aot_resources.py).

Shapes (from the models' config.json; /work/shared/data/tokenizers/*/config.json): Qwen2.5-1.5B hidden 1536,
vocab 151936, 12 query heads over 2 KV heads of dim 128; Llama-3.2-1B hidden 2048, vocab 128256, 32 heads over 8
KV heads of dim 64. Training: 4096 tokens per microbatch, bf16 (log-probs from logits fwd/bwd, fused hidden x W
fwd/bwd, the token loss); decode: 256 slots, a 640-token cache (+ the scratch column), bf16; group advantages at
1536 samples (64 questions x 3 experts x 8). ``--fp32`` adds the fp32-parameter variants.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import triton


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_hf_config(cls, path: str, name: Optional[str] = None) -> "ModelShape":
        with open(path) as f:
            c = json.load(f)
        heads = c["num_attention_heads"]
        return cls(name or os.path.basename(os.path.dirname(os.path.abspath(path))), c["hidden_size"],
                   c["vocab_size"], heads, c.get("num_key_value_heads", heads),
                   c.get("head_dim") or c["hidden_size"] // heads)


QWEN25_1_5B = ModelShape("qwen2.5-1.5b", 1536, 151936, 12, 2, 128)
LLAMA32_1B = ModelShape("llama3.2-1b", 2048, 128256, 32, 8, 64)


@dataclass(frozen=True)
class Target:
    name: str
    capability: int
    sms: int            # SMs of the reference part (H100 SXM / A100): sets the launchers' split counts
    smem_limit: int     # bytes of shared memory one block may opt in to


SM90 = Target("sm_90", 90, 132, 232448)
SM80 = Target("sm_80", 80, 108, 166912)
TARGETS = {t.name: t for t in (SM90, SM80)}


@dataclass
class Case:
    """One kernel launch: ``args`` maps every non-constexpr argument, in order, to a pointer type ("*bf16") or
    its value (int / float); ``constexprs`` the compile-time arguments."""
    kernel: str                     # "<module under meml_kernels>:<kernel name>"
    model: str
    phase: str                      # fwd / bwd / decode
    dtype: str
    shape: str
    args: Dict[str, object]
    constexprs: Dict[str, object]
    num_warps: int = 4
    num_stages: int = 3


@dataclass
class Result:
    case: Case
    target: str
    regs: int = -1
    stack: int = -1
    local: int = -1
    shared: int = -1
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None
    seconds: float = 0.0
    error: str = ""
    smem_limit: int = 0
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _ptr(dtype: str) -> str:
    return {"bfloat16": "*bf16", "float32": "*fp32"}[dtype]


def cases(model: ModelShape, target: Target, dtype: str = "bfloat16", tokens: int = 4096, slots: int = 256,
          cache: int = 640) -> List[Case]:
    """The model-dependent launches (log-probs from logits, fused hidden x W, decode attention) at ``dtype``."""
    from .decode_attention import triton_impl as da
    from .linear_logprobs import triton_impl as ll
    from .logprobs import triton_impl as lp

    T, V, H, nh, ng, hn = tokens, model.vocab, model.hidden, model.heads, model.kv_heads, model.head_dim
    P, f32, i64, u8 = _ptr(dtype), "*fp32", "*i64", "*u8"
    out: List[Case] = []
    tv = f"T={T} V={V}"
    # log-probs from materialised logits
    fw = dict(lp.GPU_FWD, BLOCK_V=min(lp.GPU_FWD["BLOCK_V"], triton.next_power_of_2(V)))
    out.append(Case("logprobs.triton_impl:_row_stats_kernel", model.name, "fwd", dtype, tv,
                    dict(logits_ptr=P, stride_t=V, targets_ptr=i64, valid_ptr=u8, m_ptr=f32, s_ptr=f32, u_ptr=f32,
                         tgt_ptr=f32, V=V, inv_temp=1.0, vocab_start=0),
                    dict(ENTROPY=True, BLOCK_V=fw["BLOCK_V"]), fw["num_warps"]))
    bw = dict(lp.GPU_BWD, BLOCK_V=min(lp.GPU_BWD["BLOCK_V"], triton.next_power_of_2(V)))
    out.append(Case("logprobs.triton_impl:_dlogits_kernel", model.name, "bwd", dtype, tv,
                    dict(logits_ptr=P, stride_t=V, out_ptr=P, stride_out=V, targets_ptr=i64, valid_ptr=u8,
                         lse_ptr=f32, ent_ptr=f32, g_ptr=f32, h_ptr=f32, V=V, inv_temp=1.0, vocab_start=0),
                    dict(ENT_GRAD=True, BLOCK_V=bw["BLOCK_V"]), bw["num_warps"]))
    # fused hidden x W (no logits)
    fp32 = dtype == "float32"
    cfg = ll.gpu_config(fp32, capability=target.capability)
    n_split = ll.num_splits(T, V, cfg, target.sms)
    v_per = triton.cdiv(triton.cdiv(V, n_split), cfg["BLOCK_V"]) * cfg["BLOCK_V"]
    n_split = triton.cdiv(V, v_per)
    const = {k: cfg[k] for k in ("DOT_FP32", "BLOCK_T", "BLOCK_V", "BLOCK_H", "GROUP_T")}
    thv = f"T={T} H={H} V={V}"
    out.append(Case("linear_logprobs.triton_impl:_linear_stats_kernel", model.name, "fwd", dtype, thv,
                    dict(h_ptr=P, w_ptr=P, targets_ptr=i64, stats_ptr=f32, T=T, V=V, H=H, stride_ht=H, stride_hh=1,
                         stride_wv=H, stride_wh=1, inv_temp=1.0, vocab_start=0, v_per_split=v_per,
                         n_split=n_split),
                    dict(const, ENTROPY=True), cfg["num_warps"], cfg["num_stages"]))
    bcfg = ll.gpu_config(fp32, backward=True, capability=target.capability)
    bv = bcfg["BLOCK_V"]
    vc = min(max(bv, ll.BWD_CHUNK_BYTES // (T * (4 if fp32 else 2)) // bv * bv), triton.cdiv(V, bv) * bv)
    out.append(Case("linear_logprobs.triton_impl:_linear_dz_kernel", model.name, "bwd", dtype, thv,
                    dict(h_ptr=P, w_ptr=P, targets_ptr=i64, valid_ptr=u8, lse_ptr=f32, ent_ptr=f32, g_ptr=f32,
                         hg_ptr=f32, dz_ptr=P, stride_dz=vc, T=T, VC=min(vc, V), v_start=0, H=H, stride_ht=H,
                         stride_hh=1, stride_wv=H, stride_wh=1, inv_temp=1.0, vocab_start=0),
                    dict({k: bcfg[k] for k in const}, ENT_GRAD=True), bcfg["num_warps"], bcfg["num_stages"]))
    # decode attention, the CUDA-graph launch of the continuous engine (max_len = the whole cache)
    C = cache + 1
    plan = da.launch_plan(slots, nh, ng, hn, C, da.BLOCK_N, target.sms, dot_fp32=fp32)
    dshape = f"B={slots} C={C} nh={nh} ng={ng} hn={hn}"
    out.append(Case("decode_attention.triton_impl:_split_kernel", model.name, "decode", dtype, dshape,
                    dict(q_ptr=P, k_ptr=P, v_ptr=P, len_ptr="*i32", mid_ptr=f32, scale=hn ** -0.5,
                         chunk=plan["chunk"], sq_b=nh * hn, sq_h=hn, sk_n=ng * C * hn, sk_g=C * hn, sk_c=hn,
                         sv_n=ng * C * hn, sv_g=C * hn, sv_c=hn, NH=nh, SPLITS=plan["splits"], HN=hn),
                    plan["split_const"], plan["num_warps"]))
    out.append(Case("decode_attention.triton_impl:_combine_kernel", model.name, "decode", dtype, dshape,
                    dict(mid_ptr=f32, out_ptr=P, so_b=nh * hn, so_h=hn, NH=nh, SPLITS=plan["splits"], HN=hn),
                    plan["combine_const"]))
    return out


def shared_cases(tokens: int = 4096, samples: int = 1536) -> List[Case]:
    """Launches that do not depend on the model: the token loss (fp32 log-probs) and the group advantages."""
    f32 = "*fp32"
    return [
        Case("token_loss.triton_impl:_token_loss_kernel", "-", "fwd", "float32", f"T={tokens}",
             dict(logp_ptr=f32, old_ptr=f32, adv_ptr=f32, kind_ptr="*i8", mask_ptr="*u8", weight_ptr=f32,
                  ref_ptr=f32, loss_ptr=f32, grad_ptr=f32, clipped_ptr="*i8", T=tokens, eps_low=0.2, eps_high=0.2,
                  beta=0.1),
             dict(USE_REF=True, REF_KL=3, KL_EST=3, BLOCK=1024), 4),
        Case("group_advantages.triton_impl:_group_advantages_kernel", "-", "fwd", "float32", f"S={samples}",
             dict(r_ptr=f32, key_ptr="*i64", out_ptr=f32, fws_ptr=f32, cnt_ptr="*i32", S=samples,
                  G=samples // 8, groups_per_program=samples // 8, eps=1e-6),
             dict(STD_NORM=True, POSITIVE_ONLY=False, BLOCK=1024), 8),
    ]


def _jit_function(kernel: str):
    import importlib

    mod, name = kernel.split(":")
    fn = getattr(importlib.import_module(f"meml_kernels.{mod}"), name)
    if not hasattr(fn, "cache_key"):
        raise RuntimeError("meml_kernels.aot needs Triton's JIT: unset TRITON_INTERPRET (the interpreter is on)")
    return fn


def _signature(fn, case: Case):
    """(signature, constexprs, attrs) as Triton's launcher would specialise ``case.args``."""
    sig, const, attrs = {}, dict(case.constexprs), {}
    names = list(fn.arg_names)
    missing = [n for n in names if n not in case.args and n not in case.constexprs]
    extra = [n for n in case.args if n not in names]
    if missing or extra:
        raise ValueError(f"{case.kernel}: arguments missing {missing}, unknown {extra}")
    for i, n in enumerate(names):
        if n in case.constexprs:
            sig[n] = "constexpr"
            continue
        v = case.args[n]
        if isinstance(v, str):
            sig[n] = v
            attrs[(i,)] = [["tt.divisibility", 16]]      # torch allocations are 16-byte aligned
        elif isinstance(v, bool):
            sig[n] = "i1"
        elif isinstance(v, int):
            if v == 1:                                    # Triton specialises integer 1 to a constant
                sig[n], const[n] = "constexpr", 1
                continue
            sig[n] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[n] = "fp32"
        else:
            raise TypeError(f"{case.kernel}: argument {n}={v!r}")
    return sig, const, attrs


def _bin(tool: str) -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: the triton wheel ships {tool} for its CUDA backend")
    return path


_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_case(case: Case, target: Target, ptxas: bool = False) -> Result:
    """Compile one case for ``target`` and read its resources (see the module docstring)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    res = Result(case, target.name, smem_limit=target.smem_limit)
    t0 = time.perf_counter()
    try:
        fn = _jit_function(case.kernel)
        sig, const, attrs = _signature(fn, case)
        k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", target.capability, 32),
                           options=dict(num_warps=case.num_warps, num_stages=case.num_stages))
        res.shared = int(k.metadata.shared)
        with tempfile.TemporaryDirectory() as d:
            cubin = os.path.join(d, "k.cubin")
            with open(cubin, "wb") as f:
                f.write(k.asm["cubin"])
            txt = subprocess.run([_bin("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True,
                                 check=True).stdout
            res.regs, res.stack, _, res.local = map(int, _RES.search(txt).groups())
            if ptxas:
                ptx = os.path.join(d, "k.ptx")
                with open(ptx, "w") as f:
                    f.write(k.asm["ptx"])
                arch = f"sm_{target.capability}" + ("a" if target.capability == 90 else "")
                from triton.backends.nvidia.compiler import get_ptxas   # the ptxas Triton itself runs for cc

                cmd = [get_ptxas(target.capability).path, "-lineinfo", "-v", "--regAllocOptLevel=2",  # Triton's flags
                       f"--gpu-name={arch}", ptx, "-o", os.path.join(d, "o")]
                log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
                m = _SPILL.search(log)
                res.spill_stores, res.spill_loads = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    except Exception as e:  # a compile failure is a result (reported and failed), not a crash of the table
        res.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    res.seconds = time.perf_counter() - t0
    if res.error:
        res.problems.append(f"does not compile ({res.error})")
    else:
        if res.stack or res.local:
            res.problems.append(f"spills: {res.stack} B stack, {res.local} B local per thread")
        if res.spill_stores:
            res.problems.append(f"ptxas: {res.spill_stores} B spill stores")
        if res.shared > target.smem_limit:
            res.problems.append(f"shared memory {res.shared} B > {target.smem_limit} B")
    return res


def all_cases(models: Sequence[ModelShape], target: Target, fp32: bool = False) -> List[Case]:
    out = [c for m in models for dt in (("bfloat16", "float32") if fp32 else ("bfloat16",))
           for c in cases(m, target, dt)]
    return out + shared_cases()


def fast_cases(target: Target) -> List[Case]:
    """The set ``make test`` compiles: every kernel once, at the shape that stresses it most (Qwen2.5-1.5B: the
    largest vocabulary and the widest GQA group, rep 6 -> 8 rows at head dim 128)."""
    return cases(QWEN25_1_5B, target) + shared_cases()


def markdown(results: Sequence[Result]) -> str:
    lines = ["| target | kernel | model | phase | dtype | shape | warps/stages | regs | stack B | spill st/ld B "
             "| shared B | ok |", "|" + "---|" * 12]
    for r in results:
        c = r.case
        spill = "-" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}"
        ok = "yes" if r.ok else "NO: " + "; ".join(r.problems)
        lines.append(f"| {r.target} | {c.kernel.split(':')[1]} | {c.model} | {c.phase} | {c.dtype} | {c.shape} "
                     f"| {c.num_warps}/{c.num_stages} | {r.regs} | {r.stack} | {spill} | {r.shared} | {ok} |")
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[Result]) -> list:
    return [dict(asdict(r), ok=r.ok) for r in results]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m meml_kernels.aot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", choices=sorted(TARGETS), help="default: sm_90 and sm_80")
    ap.add_argument("--config", action="append", default=[], help="a Hugging Face config.json (repeatable); "
                    "default: the built-in Qwen2.5-1.5B and Llama-3.2-1B shapes")
    ap.add_argument("--fast", action="store_true", help="every kernel once at the Qwen2.5-1.5B shape")
    ap.add_argument("--fp32", action="store_true", help="also the fp32-parameter variants")
    ap.add_argument("--ptxas", action="store_true", help="also run ptxas -v for spill byte counts")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--markdown", help="write the table here")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("meml_kernels.aot: unset TRITON_INTERPRET (ahead-of-time compiling needs Triton's JIT)", file=sys.stderr)
        return 2
    models = [ModelShape.from_hf_config(p) for p in a.config] or [QWEN25_1_5B, LLAMA32_1B]
    results = []
    for name in a.arch or ["sm_90", "sm_80"]:
        t = TARGETS[name]
        for c in (fast_cases(t) if a.fast else all_cases(models, t, a.fp32)):
            results.append(compile_case(c, t, a.ptxas))
            r = results[-1]
            print(f"{t.name} {c.kernel.split(':')[1]:28s} {c.model:14s} {c.phase:6s} {c.dtype:8s} regs {r.regs:3d} "
                  f"stack {r.stack:5d} shared {r.shared:6d} {r.seconds:5.1f}s {'ok' if r.ok else r.problems}",
                  flush=True)
    table = markdown(results)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table)
    else:
        print(table)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(to_json(results), f, indent=1)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
