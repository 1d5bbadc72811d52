"""tools/gpu_check.sh + megatron_meml.gpu.check: the one prepared GPU call and its CPU dry run.

Fast (``make test``): the runner on fake steps (budget sharing, a skip for lack of budget, a timeout, a failure,
summary.md rewritten after every step, each step's JSON with its step record, at most 8 files), the stop in one
line when megatron-core does not import, the real plan (owed checks first, every step's tool accepts its dry-run
arguments, 8 files), and the real shell script on one step (GPU_CHECK_ONLY=cuda-graph-test: environment probe with
megatron's fallback notes recorded, pytest's outcomes as JSON).
Slow: the whole dry run, ``GPU_CHECK_DRY_RUN=1 tools/gpu_check.sh``, every step ok and every file written.
"""
import importlib
import json
import os
import resource
import subprocess
import sys
import time

import pytest

from megatron_meml.gpu import check as gc
from tests.conftest import ROOT

PROBE_OK = json.dumps({"python": "3.12", "device": "FAKE", "megatron_core": {"ok": True, "version": "0.19.2"},
                       "layer_spec": "local", "fallbacks": ["megatron local layer spec"],
                       "fallback_notes": ["UserWarning: Transformer Engine and Apex are not installed."]})


def _py(code):
    return [sys.executable, "-c", code]


def _fake_steps():
    """ok (writes its JSON, as a tool does), reads summary.md while it runs (the previous row must be there),
    fails, times out, and one whose minimum the budget cannot meet."""
    write = "import json,sys; json.dump({'summary': 'fake numbers 42'}, open(sys.argv[1], 'w'))"
    check_summary = ("import sys,os; s = open(os.path.join(os.path.dirname(sys.argv[1]), 'summary.md')).read(); "
                     "sys.exit(0 if '| first | ok |' in s and 'fake numbers 42' in s else 3)")
    return [
        gc.Step("first", "first.json", [], _py(write) + ["{json}"], 1, 30, "writes its result"),
        gc.Step("second", "second.json", [], _py(check_summary) + ["{json}"], 1, 30, "sees the first row"),
        gc.Step("broken", "broken.json", [], _py("print('something broke'); raise SystemExit(7)"), 1, 30, "fails"),
        gc.Step("slow", "slow.json", [], _py("import time; print('start', flush=True); time.sleep(60)"), 1, 2,
                "times out"),
        gc.Step("greedy", "greedy.json", [], _py("pass"), 10_000, 20_000, "never fits"),
    ]


def test_runner_shares_the_budget_and_records_every_step(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "KILL_GRACE_S", 1.0)
    out = tmp_path / "out"
    runner = gc.Runner(str(out), _fake_steps(), budget_s=120, t0=time.time(), dry_run=True, python=sys.executable,
                       probe_argv=_py(f"print({PROBE_OK!r})"))
    t = time.time()
    rc = runner.run()
    assert time.time() - t < 60
    assert rc == 1                                           # a step failed and one timed out
    status = {r.name: r.status for r in runner.results}
    assert status == {"first": "ok", "second": "ok", "broken": "FAIL(7)", "slow": "TIMEOUT", "greedy": "skipped"}
    files = sorted(os.listdir(out))
    assert files == sorted(["env.json", "gpu_check.log", "summary.md", "first.json", "second.json", "broken.json",
                            "slow.json", "greedy.json"]) and len(files) <= gc.MAX_FILES
    first = json.load(open(out / "first.json"))
    assert first["summary"] == "fake numbers 42" and first["step"]["status"] == "ok"
    assert first["fallbacks"]["fallback_notes"] == ["UserWarning: Transformer Engine and Apex are not installed."]
    broken = json.load(open(out / "broken.json"))
    assert broken["error"].startswith("the step wrote no result") and "something broke" in broken["log_tail"]
    slow = json.load(open(out / "slow.json"))
    assert slow["step"]["status"] == "TIMEOUT" and slow["step"]["limit_s"] == 2 and "start" in slow["log_tail"]
    greedy = json.load(open(out / "greedy.json"))
    assert "its minimum 10000 s" in greedy["step"]["reason"]
    summary = (out / "summary.md").read_text()
    assert "| greedy | skipped |" in summary and "its minimum 10000 s" in summary
    assert "fallbacks active: megatron local layer spec" in summary
    assert "something broke" in (out / "gpu_check.log").read_text()


def test_megatron_missing_stops_at_once_in_one_line(tmp_path, capsys):
    probe = json.dumps({"megatron_core": {"ok": False, "error": "ModuleNotFoundError: No module named 'megatron'"}})
    runner = gc.Runner(str(tmp_path), _fake_steps(), budget_s=60, t0=time.time(), dry_run=False,
                       python=sys.executable, probe_argv=_py(f"print({probe!r})"))
    assert runner.run() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "megatron-core does not import" in err[0] and "make gpu-carry" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["env.json", "gpu_check.log", "summary.md"]   # no step ran


def test_the_real_plan(tmp_path):
    steps = gc.plan()
    assert [s.name for s in steps][:3] == ["cuda-graph-test", "scale-check", "rollout-check"]   # owed first
    assert len({s.json for s in steps}) == len(steps) and len(steps) + 3 <= gc.MAX_FILES
    assert "tests/gpu/test_rollout_gpu.py" in steps[0].argv and "--deselect" in steps[-1].argv
    runner = gc.Runner(str(tmp_path), steps, 540, time.time(), True, sys.executable)
    for step in steps:
        for dry in (True, False):
            argv = runner.fill(step.dry_argv if dry else step.argv, step, str(tmp_path / "j.xml"), 100.0)
            assert not any("{" in a for a in argv), argv
            if step.kind == "tool":         # each tool parses exactly these arguments
                assert argv[1:3] == ["-P", "-m"], argv
                tool = importlib.import_module(argv[3])
                parse = getattr(tool, "parse_args", None)
                if parse is not None:
                    a = parse(argv[4:])
                    assert a.tiny == dry and a.json == str(tmp_path / step.json)
                else:                       # gpu_scale_check parses inside main: check its flags by --help
                    text = subprocess.run([sys.executable, "-m", argv[3], "--help"], capture_output=True,
                                          text=True, cwd=ROOT).stdout
                    assert all(f in text for f in ("--tiny", "--json"))
    assert sum(s.min_s for s in steps) < gc.DEFAULT_BUDGET_S


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_ONLY", "GPU_CHECK_T0")}
    return dict(env, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHON=sys.executable, **kw)


def test_shell_script_one_step_dry_run(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=_env(GPU_CHECK_DRY_RUN="1", OUT=str(out), GPU_CHECK_ONLY="cuda-graph-test"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    env = json.load(open(out / "env.json"))
    assert env["megatron_core"]["ok"] and env["layer_spec"] == "local"
    assert any("falling back" in n.lower() for n in env["fallback_notes"])   # recorded, not silenced
    res = json.load(open(out / "cuda_graph_test.json"))
    assert res["step"]["status"] == "ok" and res["skipped"] == 2 and res["passed"] == 0
    assert all("needs CUDA" in t["message"] for t in res["tests"])
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary and "| scale-check | skipped |" in summary and "not in GPU_CHECK_ONLY" in summary


@pytest.mark.slow
def test_whole_dry_run(tmp_path):
    """The same script end to end at the tiny shapes; < 3 minutes on an idle 2-core machine (CPU time is what is
    asserted: wall time on a shared machine says little)."""
    out = tmp_path / "out"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    r = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                       env=_env(GPU_CHECK_DRY_RUN="1", OUT=str(out), GPU_CHECK_BUDGET_S="1100"))
    wall = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert files == sorted(["env.json", "gpu_check.log", "summary.md"] + [s.json for s in gc.plan()])
    for s in gc.plan():
        data = json.load(open(out / s.json))
        assert data["step"]["status"] == "ok", (s.name, data.get("log_tail"))
    assert json.load(open(out / "scale_check.json"))["mef"][0]["mfu"] > 0
    roll = json.load(open(out / "rollout_check.json"))
    assert roll["decode_steps"] == roll["new"] - 1 and roll["graphs_captured_in_timed"] == 0 and roll["kernel"]["ok"]
    assert json.load(open(out / "output_bench.json"))["ours_ok"]
    print(f"dry run: wall {wall:.0f} s, CPU {cpu:.0f} s")
    assert cpu < 180, f"dry run used {cpu:.0f} s of CPU"
