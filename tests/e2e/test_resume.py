"""Checkpoint/resume of the training entry point: kill -9 mid-run then resume gives the same metrics as an
uninterrupted run (CPU, deterministic); SIGTERM writes a checkpoint and exits cleanly within 60 s."""
import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT

BASE = ["examples/quickstart/config.yaml", "mef.max_steps=10", "riel.enabled=false", "logging.progress_bar=false",
        "logging.tensorboard=false", "model.num_layers=1", "data.global_batch_size=16", "data.micro_batch_size=8",
        "eval.enabled=false"]


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "megatron_meml.train", *BASE, f"logging.run_dir={run_dir}", *extra]


def _metrics(run_dir):
    """Last record per (stage, step): a resumed run re-logs the steps after its checkpoint."""
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        row = json.loads(line)
        out[(row["stage"], row["step"])] = row
    return out


def _wait_for_step(run_dir, step, proc, timeout=240):
    path = os.path.join(run_dir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
        if os.path.exists(path) and any(json.loads(l)["step"] >= step for l in open(path) if l.strip()):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def test_kill9_then_resume_matches_uninterrupted(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_cmd(ref_dir), cwd=ROOT, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(_cmd(run_dir, "checkpoint.save_interval=3"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(run_dir, 7, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert open(run_dir / "checkpoints" / "latest").read().strip() == "step_00000006"
    r = subprocess.run(_cmd(run_dir, "checkpoint.save_interval=3"), cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed mef from" in r.stdout
    ref, got = _metrics(ref_dir), _metrics(run_dir)
    assert sorted(ref) == sorted(got) == [("mef", s) for s in range(10)]
    for key in ref:
        for m in ("loss", "grad_norm", "tokens"):
            assert got[key][m] == ref[key][m], (key, m, got[key][m], ref[key][m])


def test_sigterm_writes_checkpoint_and_exits(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_cmd(run_dir, "mef.max_steps=1000"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(run_dir, 2, proc)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 60
    assert proc.returncode == 0, err[-2000:]
    assert "signal received: checkpoint" in out
    latest = open(run_dir / "checkpoints" / "latest").read().strip()
    meta = json.load(open(run_dir / "checkpoints" / latest / "meta.json"))
    assert meta["stage"] == "mef" and meta["stage_step"] >= 2 and not meta["stage_complete"]


RIEL = ["mef.max_steps=4", "riel.enabled=true", "riel.steps=6", "riel.questions_per_step=2", "riel.group_size=4",
        "riel.buffer_k=2", "riel.buffer_capacity=3", "riel.lr=1e-3", "rollout.max_new_tokens=12"]


def test_kill9_during_riel_then_resume_matches_uninterrupted(tmp_path):
    """Kill -9 at RIEL step k, restart: steps k+1.. (rollouts, rewards, buffer firing, losses) equal an
    uninterrupted run's."""
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    r = subprocess.run(_cmd(ref_dir, *RIEL), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    proc = subprocess.Popen(_cmd(run_dir, *RIEL, "checkpoint.save_interval=2"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    path = run_dir / "metrics.jsonl"
    t0 = time.time()
    while not (path.exists() and any(json.loads(l)["stage"] == "riel" and json.loads(l)["step"] >= 3
                                     for l in open(path) if l.strip())):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    r = subprocess.run(_cmd(run_dir, *RIEL, "checkpoint.save_interval=2"), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed riel from" in r.stdout
    ref, got = _metrics(ref_dir), _metrics(run_dir)
    riel_steps = sorted(k for k in ref if k[0] == "riel")
    assert riel_steps == [("riel", s) for s in range(6)] and sorted(got) == sorted(ref)
    for key in riel_steps:
        for m in ("reward/mean", "loss", "grad_norm", "buffer/size", "sft/fired", "tokens/grpo", "tokens/kl"):
            assert got[key][m] == ref[key][m], (key, m, got[key][m], ref[key][m])
    assert any(ref[k]["sft/fired"] > 0 for k in riel_steps)  # the buffer fired (its state crossed the restart)

