"""Every Triton kernel compiled ahead of time for NVIDIA GPUs on this CPU machine (``python -m meml_kernels.aot``):
it compiles, spills nothing (0 bytes of stack / local memory per thread, read from the cubin with the wheel's
cuobjdump) and its shared memory fits the target's per-block limit.

``make test`` compiles every kernel once for sm_90 at the shape that stresses it most (Qwen2.5-1.5B: vocabulary
151936, rep 6 at head dim 128), ~10-20 s of CPU on a cold Triton cache; the full matrix (sm_90 and sm_80, both
models, bf16 and fp32) is the slow test. The compile runs in a subprocess because it needs Triton's real JIT, and
this process runs kernels in the interpreter (TRITON_INTERPRET=1)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DATA, ROOT


def _run_aot(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "aot.json"
    proc = subprocess.run([sys.executable, "-m", "meml_kernels.aot", "--json", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc


def _check(results):
    bad = [f"{r['target']} {r['case']['kernel']} {r['case']['model']} {r['case']['dtype']}: {r['problems']}"
           for r in results if not r["ok"]]
    assert not bad, "\n".join(bad)
    for r in results:   # what "ok" means, spelled out
        assert r["regs"] > 0 and r["stack"] == 0 and r["local"] == 0 and 0 <= r["shared"] <= r["smem_limit"]


def test_every_kernel_compiles_for_sm90_without_spills(tmp_path):
    results, proc = _run_aot(tmp_path, "--arch", "sm_90", "--fast")
    kernels = {r["case"]["kernel"].split(":")[1] for r in results}
    assert kernels == {"_row_stats_kernel", "_dlogits_kernel", "_linear_stats_kernel", "_linear_dz_kernel",
                       "_split_kernel", "_combine_kernel", "_token_loss_kernel", "_group_advantages_kernel"}
    _check(results)
    assert proc.returncode == 0


@pytest.mark.slow
def test_full_matrix_sm90_sm80_both_models_bf16_fp32(tmp_path):
    configs = [os.path.join(DATA, "tokenizers", m, "config.json") for m in ("qwen2.5", "llama3")]
    args = ["--fp32", "--ptxas"] + [a for c in configs for a in ("--config", c)]
    results, proc = _run_aot(tmp_path, *args)
    assert {r["target"] for r in results} == {"sm_90", "sm_80"}
    assert len({r["case"]["model"] for r in results}) == 3   # the two models + the model-free kernels
    _check(results)
    assert all(r["spill_stores"] in (0, None) for r in results)
    assert proc.returncode == 0


def test_builtin_shapes_are_the_model_configs():
    """The shapes the fast test compiles at are the ones in the models' config.json files."""
    from meml_kernels.aot import LLAMA32_1B, QWEN25_1_5B, ModelShape

    for builtin, folder in ((QWEN25_1_5B, "qwen2.5"), (LLAMA32_1B, "llama3")):
        got = ModelShape.from_hf_config(os.path.join(DATA, "tokenizers", folder, "config.json"), name=builtin.name)
        assert got == builtin


def test_signature_specialises_like_the_launcher():
    """Integers equal to 1 become constants, multiples of 16 (and pointers) get the divisibility hint."""
    from meml_kernels import aot

    case = aot.cases(aot.QWEN25_1_5B, aot.SM90)[2]             # the fused linear forward

    class Fn:                                                   # the argument names of the kernel
        arg_names = list(case.args) + list(case.constexprs)

    sig, const, attrs = aot._signature(Fn, case)
    names = Fn.arg_names
    assert sig["stride_hh"] == "constexpr" and const["stride_hh"] == 1
    assert sig["h_ptr"] == "*bf16" and attrs[(names.index("h_ptr"),)] == [["tt.divisibility", 16]]
    assert sig["H"] == "i32" and (names.index("H"),) in attrs              # 1536 = 96 * 16
    assert sig["inv_temp"] == "fp32" and (names.index("inv_temp"),) not in attrs
