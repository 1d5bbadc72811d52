"""The steps of tools/gpu_check.sh: one budget shared among them, every result in $OUT as soon as it exists.

    bash tools/gpu_check.sh                          # on the lent GPU (carry .whl from `make gpu-carry`)
    GPU_CHECK_DRY_RUN=1 bash tools/gpu_check.sh      # the same steps on the CPU at a tiny shape (< 3 minutes)
    python -m megatron_meml.gpu.check --out DIR [--dry-run] [--budget S] [--only step,step]   # what the script runs

Order (the checks no GPU run has passed yet first, then the rest by value per second):
  cuda-graph-test  tests/gpu/test_rollout_gpu.py: CUDA-graph decode == eager == static engine      cuda_graph_test.json
  scale-check      megatron_meml.gpu.scale_check: Qwen2.5-1.5B MEF MFU (spec and measured peak), RIEL split,
                   the planner beside each number                                                     scale_check.json
  rollout-check    megatron_meml.gpu.rollout_check: 256 x 512 decode, capture apart from decode, MBU with
                   the logits traffic, the decode kernel against its reference at the real shape  rollout_check.json
  output-bench     megatron_meml.gpu.output_bench: the fused output forward vs Liger vs torch          output_bench.json
  gpu-tests        the other tests of tests/gpu (kernels, fused output, async, fp8)                   gpu_tests.json
Before them an environment probe (versions, device, which megatron fallbacks are active: the "no Transformer
Engine / no Apex, falling back" notes are recorded, not silenced) writes env.json; when megatron-core does not
import the run stops there with one line. After every step summary.md is rewritten and the step's JSON gets a
``step`` record (status, seconds, limit) and the active fallbacks; the full output of every step is appended to
gpu_check.log. That is 8 files: the most a device call brings back.

Budget: ``--budget`` seconds (GPU_CHECK_BUDGET_S, default 540, counted from GPU_CHECK_T0 -- when the shell script
started, so the wheel install counts) shared by the steps in order: each step may run for what is left (up to its
own cap, ``Step.cap_s``; ``KILL_GRACE_S`` are kept back to stop it), and a step with less than its minimum
(``Step.min_s``) left is recorded as skipped with that reason. A step over its limit is sent SIGTERM, then SIGKILL.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megatron_meml.backend.runtime import compat

KILL_GRACE_S = 10.0
MAX_FILES = 8                      # a device call brings back at most 8 files from $OUT
DEFAULT_BUDGET_S = 540.0
MOD = ["-P", "-m"]                 # steps run as modules, without the checkout root on sys.path (gpu_check.sh says why)


@dataclass(frozen=True)
class Step:
    """One step: ``argv`` on the GPU, ``dry_argv`` in the dry run (tiny shape); placeholders {py} {out} {json}
    {junit} {deadline} are filled in when it runs. ``kind``: ``tool`` (writes {json} itself, as it goes) or ``pytest``
    (its junit XML becomes {json})."""

    name: str
    json: str
    argv: List[str]
    dry_argv: List[str]
    min_s: float
    cap_s: float
    what: str
    kind: str = "tool"


def plan() -> List[Step]:
    """The steps, in the order of the module docstring."""
    pytest = ["{py}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "--junitxml={junit}", "-rs"]
    graph_test = "tests/gpu/test_rollout_gpu.py"
    return [
        Step("cuda-graph-test", "cuda_graph_test.json", pytest + [graph_test], pytest + [graph_test], 30, 150,
             "CUDA-graph decode == eager == static engine (tests/gpu/test_rollout_gpu.py)", kind="pytest"),
        Step("scale-check", "scale_check.json", ["{py}", *MOD, "megatron_meml.gpu.scale_check", "--json", "{json}"],
             ["{py}", *MOD, "megatron_meml.gpu.scale_check", "--tiny", "--json", "{json}"], 90, 240,
             "Qwen2.5-1.5B MEF MFU + RIEL split, planner beside each number"),
        Step("rollout-check", "rollout_check.json",
             ["{py}", *MOD, "megatron_meml.gpu.rollout_check", "--json", "{json}", "--deadline", "{deadline}"],
             ["{py}", *MOD, "megatron_meml.gpu.rollout_check", "--tiny", "--json", "{json}", "--deadline",
              "{deadline}"], 60, 200,
             "decode tok/s, capture apart, MBU with logits, decode kernel vs reference, HF baseline"),
        Step("output-bench", "output_bench.json", ["{py}", *MOD, "megatron_meml.gpu.output_bench", "--json", "{json}"],
             ["{py}", *MOD, "megatron_meml.gpu.output_bench", "--tiny", "--json", "{json}"], 20, 90,
             "fused output forward vs Liger vs torch at the 1.5B shape"),
        Step("gpu-tests", "gpu_tests.json", pytest + ["tests/gpu", "--deselect", graph_test],
             pytest + ["tests/gpu", "--deselect", graph_test], 30, 180,
             "the other GPU tests (kernels, fused output, async, fp8)", kind="pytest"),
    ]


# ---------------------------------------------------------------------------------------------- environment probe
PROBE_MODULES = ("megatron.core", "megatron.core.transformer", "megatron.core.models.gpt.gpt_layer_specs",
                 "megatron.core.optimizer", "megatron.core.distributed")


def probe() -> dict:
    """Versions, the device, and megatron's fallback notes (recorded while its modules import: that is when
    megatron-core warns "Transformer Engine and Apex are not installed. Falling back to ...")."""
    import importlib
    import logging
    import platform
    import warnings

    out: dict = {"python": platform.python_version()}
    try:
        import torch

        out.update(torch=torch.__version__, cuda=torch.version.cuda, device="CPU", gpu_memory_gib=None)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out.update(device=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1),
                       sms=p.multi_processor_count)
    except Exception as exc:  # noqa: BLE001 -- reported, and the megatron import below decides
        out["torch"] = f"not importable: {type(exc).__name__}: {exc}"
    notes: List[str] = []

    class _Rec(logging.Handler):
        def emit(self, record):
            notes.append(f"log {record.name}: {record.getMessage()}")

    handler = _Rec(level=logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                for name in PROBE_MODULES:
                    importlib.import_module(name)
                out["megatron_core"] = {"ok": True, "version": str(compat.megatron_version())}
            except Exception as exc:  # noqa: BLE001
                out["megatron_core"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
        notes += [f"{w.category.__name__}: {w.message}" for w in caught]
    finally:
        logging.getLogger().removeHandler(handler)
    falling = sorted({n for n in notes if "fall" in n.lower() or "not installed" in n.lower()})
    out["fallback_notes"] = falling
    out["other_notes"] = sorted(set(notes) - set(falling))[:20]
    for mod in ("transformer_engine", "apex", "liger_kernel", "triton", "transformers", "meml_kernels",
                "megatron_meml"):
        try:
            m = importlib.import_module(mod)
            out[f"have_{mod}"] = getattr(m, "__version__", None) or os.path.dirname(getattr(m, "__file__", "") or "")
        except Exception as exc:  # noqa: BLE001
            out[f"have_{mod}"] = None
            out.setdefault("import_errors", {})[mod] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    if out["megatron_core"]["ok"]:
        try:
            out["transformer_engine_usable"] = compat.have_te()
        except Exception as exc:  # noqa: BLE001
            out["transformer_engine_usable"] = f"unknown: {type(exc).__name__}: {exc}"
    cuda = out.get("device", "CPU") != "CPU"
    out["layer_spec"] = "te" if cuda and out.get("transformer_engine_usable") is True else "local"
    out["fallbacks"] = ([] if out["layer_spec"] == "te" else
                        ["megatron local layer spec (torch RMSNorm, SDPA attention, no TE fused norm+linear)"]) + \
        (["no Apex: torch optimizers / local multi_tensor_applier"] if out.get("have_apex") is None else [])
    return out


# ---------------------------------------------------------------------------------------------- running steps
@dataclass
class Result:
    name: str
    status: str = "pending"       # pending | ok | FAIL(rc) | TIMEOUT | skipped
    seconds: float = 0.0
    limit_s: Optional[float] = None
    reason: str = ""
    key: str = ""
    extra: Dict = field(default_factory=dict)


def run_command(argv: List[str], limit_s: float, log, env: dict) -> tuple:
    """Run ``argv`` in its own process group, its output streamed to ``log`` and stdout; stop it after ``limit_s``
    (SIGTERM, then SIGKILL after KILL_GRACE_S). Returns (rc, timed_out, tail of the output)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            text=True, errors="replace", bufsize=1)
    tail: List[str] = []

    def pump():
        for line in proc.stdout:
            log.write(line)
            log.flush()
            sys.stdout.write(line)
            tail.append(line)
            del tail[:-60]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(limit_s, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5.0)
    return proc.returncode, timed_out, "".join(tail)


def junit_summary(path: str) -> dict:
    """Per-test outcomes from pytest's junit XML: {tests: [{name, outcome, message}], passed, failed, skipped}."""
    root = ET.parse(path).getroot()
    tests = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or el.text or "").strip().splitlines()[0][:300] if \
                    (el.get("message") or el.text) else ""
                break
        tests.append({"name": f"{case.get('classname', '')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0.0), "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"tests": tests, **counts}


def key_numbers(name: str, data: dict) -> str:
    """The one-line headline of a step's JSON for summary.md."""
    if "tests" in data:
        parts = [f"{data[k]} {k}" for k in ("passed", "failed", "error", "skipped") if data.get(k)]
        skipped = sorted({t["message"] for t in data["tests"] if t["outcome"] == "skipped" and t["message"]})
        return ", ".join(parts) + (f" ({'; '.join(skipped)[:120]})" if skipped else "") if parts else "no tests ran"
    if data.get("summary"):
        return str(data["summary"])
    if data.get("error"):
        return f"error: {data['error']}"
    return ""


class Runner:
    """Runs the plan against one deadline and keeps $OUT current (module docstring)."""

    def __init__(self, out: str, steps: List[Step], budget_s: float, t0: float, dry_run: bool, python: str,
                 probe_argv: Optional[List[str]] = None):
        self.out, self.steps, self.budget_s, self.t0, self.dry_run, self.python = out, steps, budget_s, t0, \
            dry_run, python
        self.probe_argv = probe_argv or [python, *MOD, "megatron_meml.gpu.check", "--probe"]
        self.deadline = t0 + budget_s
        self.results = [Result(s.name) for s in steps]
        self.env: dict = {}
        os.makedirs(out, exist_ok=True)
        self.log_path = os.path.join(out, "gpu_check.log")

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def write_json(self, name: str, data: dict) -> None:
        tmp = self.path(name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, self.path(name))

    def write_summary(self) -> None:
        e = self.env
        dry = " (DRY RUN on the CPU, tiny shapes: the numbers prove the plumbing only)" if self.dry_run else ""
        lines = [f"# GPU check{dry}",
                 "",
                 f"device: {e.get('device', '?')} ({e.get('gpu_memory_gib') or '-'} GiB); python {e.get('python')}, "
                 f"torch {e.get('torch')}, cuda {e.get('cuda')}, megatron-core "
                 f"{(e.get('megatron_core') or {}).get('version', 'NOT importable')}, triton {e.get('have_triton')}, "
                 f"liger {e.get('have_liger_kernel')}, TE {e.get('have_transformer_engine')}, "
                 f"apex {e.get('have_apex')}",
                 f"layer spec: {e.get('layer_spec', '?')}; fallbacks active: "
                 f"{'; '.join(e.get('fallbacks', [])) or 'none'}",
                 f"megatron fallback notes: {' | '.join(e.get('fallback_notes', [])) or 'none'}",
                 f"budget {self.budget_s:.0f} s, used {time.time() - self.t0:.0f} s",
                 "", "| step | status | seconds | limit s | key numbers |", "|---|---|---:|---:|---|"]
        for r in self.results:
            key = r.key or r.reason
            lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} | "
                         f"{'-' if r.limit_s is None else f'{r.limit_s:.0f}'} | {key.replace('|', '/')} |")
        lines += ["", "Files: env.json, gpu_check.log, summary.md and one JSON per step: "
                  + ", ".join(s.json for s in self.steps), ""]
        tmp = self.path("summary.md.tmp")
        with open(tmp, "w") as f:
            f.write("\n".join(lines))
        os.replace(tmp, self.path("summary.md"))

    def run_probe(self, log) -> bool:
        """env.json; False (and one line on stderr) when megatron-core does not import."""
        rc, timed_out, text = run_command(self.probe_argv, min(180.0, max(self.deadline - time.time(), 1.0)), log,
                                          dict(os.environ))
        try:
            self.env = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.env = {"megatron_core": {"ok": False, "error": f"environment probe failed (rc {rc}): "
                                                                f"{text.strip().splitlines()[-1:] or 'no output'}"}}
        self.write_json("env.json", self.env)
        self.write_summary()
        mc = self.env.get("megatron_core") or {}
        if not mc.get("ok"):
            print(f"gpu_check: megatron-core does not import ({mc.get('error')}); run `make gpu-carry` here and "
                  f"carry .whl (tools/gpu_check.sh installs it)", file=sys.stderr, flush=True)
            return False
        return True

    def fill(self, argv: List[str], step: Step, junit: str, limit: float) -> List[str]:
        subs = {"{py}": self.python, "{out}": self.out, "{json}": self.path(step.json), "{junit}": junit,
                "{deadline}": f"{max(limit - 30.0, limit * 0.6):.0f}"}
        out = []
        for a in argv:
            for k, v in subs.items():
                a = a.replace(k, v)
            out.append(a)
        return out

    def run_step(self, i: int, log) -> None:
        step, res = self.steps[i], self.results[i]
        left = self.deadline - time.time() - KILL_GRACE_S
        if left < step.min_s:
            res.status = "skipped"
            res.reason = f"{max(left, 0):.0f} s of the budget left < its minimum {step.min_s:.0f} s"
            self.record(step, res, None, "")
            return
        limit = min(step.cap_s, left)
        res.limit_s = limit
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            junit = os.path.join(tmp, "junit.xml")
            argv = self.fill(step.dry_argv if self.dry_run else step.argv, step, junit, limit)
            banner = f"\n=== {step.name} (limit {limit:.0f} s): {' '.join(argv)}\n"
            log.write(banner)
            sys.stdout.write(banner)
            env = dict(os.environ, GPU_CHECK_STEP_LIMIT_S=f"{limit:.0f}", PYTHONUNBUFFERED="1")
            t = time.time()
            rc, timed_out, tail = run_command(argv, limit, log, env)
            res.seconds = time.time() - t
            res.status = "TIMEOUT" if timed_out else ("ok" if rc == 0 else f"FAIL({rc})")
            data = None
            if step.kind == "pytest" and os.path.exists(junit):
                try:
                    data = junit_summary(junit)
                except ET.ParseError as exc:
                    data = {"error": f"junit XML unreadable: {exc}"}
            self.record(step, res, data, tail)

    def record(self, step: Step, res: Result, data: Optional[dict], tail: str) -> None:
        """The step's JSON = what the tool wrote (or the pytest outcomes) + the step record + the fallbacks."""
        if data is None and res.status != "skipped":
            try:
                with open(self.path(step.json)) as f:
                    data = json.load(f)
            except (OSError, ValueError) as exc:
                data = {"error": f"the step wrote no result ({type(exc).__name__})"}
        data = dict(data or {})
        data["step"] = {"name": step.name, "what": step.what, "status": res.status, "seconds": round(res.seconds, 1),
                        "limit_s": res.limit_s, "reason": res.reason, "dry_run": self.dry_run}
        data["fallbacks"] = {k: self.env.get(k) for k in ("layer_spec", "fallbacks", "fallback_notes")}
        if res.status not in ("ok", "skipped"):
            data["log_tail"] = tail[-4000:]
        res.key = key_numbers(step.name, data)
        if res.status == "skipped":
            res.key = f"skipped: {res.reason}"
        self.write_json(step.json, data)
        self.write_summary()

    def run(self, only: Optional[List[str]] = None) -> int:
        with open(self.log_path, "a") as log:
            if not self.run_probe(log):
                return 2
            for i, step in enumerate(self.steps):
                if only and step.name not in only:
                    self.results[i].status, self.results[i].reason = "skipped", "not in GPU_CHECK_ONLY"
                    self.write_summary()
                    continue
                self.run_step(i, log)
        self.write_summary()
        bad = [r.name for r in self.results if r.status not in ("ok", "skipped")]
        print(f"\ngpu_check: {len(self.results) - len(bad)}/{len(self.results)} steps ok or skipped"
              + (f"; not ok: {', '.join(bad)}" if bad else "") + f"; {time.time() - self.t0:.0f} s; results in "
              f"{self.out}", flush=True)
        with open(self.path("summary.md")) as f:
            print(f.read(), flush=True)
        return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_CHECK_DRY_RUN", "0") not in ("", "0"))
    ap.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S") or DEFAULT_BUDGET_S))
    ap.add_argument("--only", default=os.environ.get("GPU_CHECK_ONLY", ""), help="comma-separated step names")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(), default=str), flush=True)
        return 0
    steps = plan()
    only = [s for s in a.only.split(",") if s]
    unknown = sorted(set(only) - {s.name for s in steps})
    if unknown:
        print(f"gpu_check: GPU_CHECK_ONLY names unknown step(s) {unknown}; steps: {[s.name for s in steps]}",
              file=sys.stderr)
        return 2
    t0 = float(os.environ.get("GPU_CHECK_T0") or time.time())
    return Runner(os.path.abspath(a.out), steps, a.budget, t0, a.dry_run, sys.executable).run(only or None)


if __name__ == "__main__":
    sys.exit(main())
