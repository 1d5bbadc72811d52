"""Async RIEL through the real entry point, 3 processes (2 training ranks, 1 rollout rank), marked slow: kill -9 of
every process mid-run then a restart reproduces the uninterrupted run's steps; kill -9 of the rollout rank alone
stops the training ranks with an error naming it within riel.rollout_timeout_s. The fast twins (resume from a
checkpoint, a hung rollout rank) run in the default suite: tests/distributed/test_async_riel.py."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_meml.backend.runtime.parallel import free_port
from tests.conftest import ROOT

ARGS = ["examples/quickstart/config.yaml", "mef.max_steps=4", "model.num_layers=1", "data.global_batch_size=16",
        "data.micro_batch_size=8",
        "eval.enabled=false", "logging.progress_bar=false", "logging.tensorboard=false", "riel.steps=5",
        "riel.questions_per_step=2", "riel.group_size=4", "riel.buffer_k=2", "riel.buffer_capacity=3",
        "riel.lr=1e-3", "rollout.max_new_tokens=12", "riel.async_rollout=true", "riel.rollout_ranks=1",
        "checkpoint.save_interval=1"]


def _launch(run_dir, *extra, world=3):
    port = free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "megatron_meml.train", *ARGS,
                                       f"logging.run_dir={run_dir}", *extra], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_all(procs, timeout=900):
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [p.returncode for p in procs], outs


def _riel_metrics(run_dir):
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        row = json.loads(line)
        if row["stage"] == "riel":
            out[row["step"]] = row
    return out


def _wait_riel_step(run_dir, step, procs, timeout=600):
    path = os.path.join(run_dir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert all(p.poll() is None for p in procs), "a rank ended early"
        if os.path.exists(path) and any(json.loads(l)["stage"] == "riel" and json.loads(l)["step"] >= step
                                        for l in open(path) if l.strip()):
            return
        time.sleep(0.05)
    raise AssertionError(f"RIEL step {step} not reached in {timeout}s")


@pytest.mark.slow
def test_async_kill9_every_rank_then_resume_matches(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    codes, outs = _wait_all(_launch(ref_dir))
    assert codes == [0, 0, 0], outs[0][1][-3000:]
    procs = _launch(run_dir)
    _wait_riel_step(run_dir, 2, procs)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)
    codes, outs = _wait_all(_launch(run_dir))
    assert codes == [0, 0, 0], outs[0][1][-3000:]
    assert "resumed riel from" in outs[0][0] and "rollouts from the checkpoint" in outs[0][0]
    ref, got = _riel_metrics(ref_dir), _riel_metrics(run_dir)
    assert sorted(ref) == sorted(got) == list(range(5))
    for s in ref:
        for k in ("reward/mean", "loss", "grad_norm", "buffer/size", "sft/fired", "tokens/grpo", "tokens/kl",
                  "async/behavior_version"):
            assert got[s][k] == ref[s][k], (s, k, got[s][k], ref[s][k])


@pytest.mark.slow
def test_async_killed_rollout_rank_stops_training_ranks(tmp_path):
    run_dir = tmp_path / "run"
    procs = _launch(run_dir, "riel.steps=50", "riel.rollout_timeout_s=10", "checkpoint.save_interval=0")
    _wait_riel_step(run_dir, 1, procs)
    t0 = time.time()
    procs[2].send_signal(signal.SIGKILL)
    codes, outs = _wait_all(procs[:2], timeout=120)
    procs[2].wait(timeout=30)
    assert time.time() - t0 < 60
    assert codes[0] != 0 and codes[1] != 0
    for _, err in outs:  # each training rank names the dead rank (heartbeat silence or the broken transfer)
        last = err.strip().splitlines()[-1]
        assert "AsyncRolloutError" in last and "rollout0" in last, err[-2000:]
