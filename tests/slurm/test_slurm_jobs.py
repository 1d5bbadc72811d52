"""megatron_meml.launch on a real SLURM (one node, 2 CPUs): a generated CPU job (torchrun, 2 gloo ranks, DP=2)
trains and checkpoints; a second, identical job is signalled mid-run the way ``--signal=B:USR1@secs`` does it
(``scancel --batch --signal=USR1``), checkpoints, requeues itself and resumes to the same final step with per-step
metrics identical to the uninterrupted first job.

Budget: ~15 s of start-up per training attempt (imports, data) + 60 fast steps (~0.1 s each); three attempts +
SLURM start-up stay well under the 3 minutes these tests may add to ``make test``. Every wait is bounded.
"""
import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.slurm.cluster import free_port

pytestmark = pytest.mark.slurm

STEPS = 60
TRAIN = ["examples/quickstart/config.yaml", f"mef.max_steps={STEPS}", "riel.enabled=false", "eval.enabled=false",
         "logging.tensorboard=false", "model.num_layers=1", "data.global_batch_size=8", "data.micro_batch_size=4",
         "data.synthetic.num_train=1000"]
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")


def submit(cluster, run_dir) -> int:
    """Generate and submit the job with the launcher's CLI (CPU mode, 2 ranks on one node)."""
    cmd = [sys.executable, "-m", "megatron_meml.launch", *TRAIN, f"logging.run_dir={run_dir}", "--cpu",
           "--nproc-per-node", "2", "--python", sys.executable, "--rdzv-port", str(free_port()),
           "--time", "00:10:00", "--signal-seconds", "60", "--env", "PYTHONWARNINGS=ignore", "--submit"]
    r = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return int(re.search(r"submitted job (\d+)", r.stdout).group(1))


def job_log(run_dir, job_id) -> str:
    path = os.path.join(run_dir, "slurm", f"slurm-{job_id}.out")
    return open(path, errors="replace").read() if os.path.exists(path) else "(no job log)"


def metrics(run_dir):
    """Last record per MEF step: a resumed run re-logs the steps after its checkpoint."""
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        row = json.loads(line)
        if row.get("stage") == "mef":
            out[("mef", row["step"])] = row
    return out


def wait_done(cluster, job_id, run_dir, timeout=240, restarts=None):
    try:
        info = cluster.wait_job(job_id, DONE, timeout, restarts=restarts)
    except TimeoutError as e:
        pytest.fail(f"{e}\n{job_log(run_dir, job_id)[-3000:]}")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", \
        f"job {job_id}: {info['JobState']} {info['ExitCode']}\n{job_log(run_dir, job_id)[-3000:]}"
    return info


@pytest.fixture(scope="module")
def reference_job(slurm_cluster, tmp_path_factory):
    """The uninterrupted run: (run_dir, job_id)."""
    run_dir = str(tmp_path_factory.mktemp("ref") / "run")
    job_id = submit(slurm_cluster, run_dir)
    wait_done(slurm_cluster, job_id, run_dir)
    return run_dir, job_id


def test_cpu_job_trains_and_checkpoints(reference_job):
    run_dir, job_id = reference_job
    got = metrics(run_dir)
    assert sorted(got) == [("mef", s) for s in range(STEPS)]
    assert open(os.path.join(run_dir, "checkpoints", "latest")).read().strip() == f"step_{STEPS:08d}"
    meta = json.load(open(os.path.join(run_dir, "checkpoints", f"step_{STEPS:08d}", "meta.json")))
    assert meta["stage"] == "mef" and meta["stage_complete"]
    log = job_log(run_dir, job_id)
    assert f"[launch] job {job_id} restart 0" in log and "training exited with status 0 (preempted=0)" in log
    # one log per rank from torchrun --log-dir, and the resolved config says DP=2 on gloo
    rank_logs = glob.glob(os.path.join(run_dir, "slurm", "ranks", "restart-0", "*", "attempt_0", "*", "stdout.log"))
    assert len(rank_logs) == 2, rank_logs
    assert "MEF loss" in "".join(open(p).read() for p in rank_logs)


def test_signalled_job_requeues_and_resumes_exactly(slurm_cluster, reference_job, tmp_path):
    ref_dir, _ = reference_job
    run_dir = str(tmp_path / "run")
    job_id = submit(slurm_cluster, run_dir)
    path = os.path.join(run_dir, "metrics.jsonl")
    t0 = time.time()
    while not (os.path.exists(path) and any(json.loads(line).get("step", -1) >= 5 for line in open(path)
                                            if line.strip())):
        state = slurm_cluster.job(job_id).get("JobState")
        if state in DONE or time.time() - t0 > 240:
            pytest.fail(f"job {job_id} never reached step 5 ({state}):\n{job_log(run_dir, job_id)[-3000:]}")
        time.sleep(0.1)
    # what `#SBATCH --signal=B:USR1@secs` does before the time limit: USR1 to the batch shell only
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", str(job_id))
    try:
        slurm_cluster.wait_job(job_id, ("PENDING",), 120, restarts=1)
    except TimeoutError as e:
        pytest.fail(f"not requeued: {e}\n{job_log(run_dir, job_id)[-3000:]}")
    # slurmd refuses a credential created in the same second the old one was revoked; then skip the ~120 s
    # requeue hold-off
    time.sleep(2.0)
    slurm_cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    wait_done(slurm_cluster, job_id, run_dir, restarts=1)

    log = job_log(run_dir, job_id)
    assert "got SIGUSR1" in log and f"requeueing job {job_id}" in log
    assert f"[launch] job {job_id} restart 1" in log
    saved = re.search(r"signal received: checkpoint \S+ written at mef step (\d+)", log)
    assert saved, log[-3000:]
    assert int(saved.group(1)) < STEPS - 1, "the signal must interrupt the run, not arrive after its end"
    assert f"resumed mef from {run_dir}/checkpoints/step_{int(saved.group(1)) + 1:08d}" in log
    assert open(os.path.join(run_dir, "checkpoints", "latest")).read().strip() == f"step_{STEPS:08d}"

    ref, got = metrics(ref_dir), metrics(run_dir)
    assert sorted(got) == sorted(ref) == [("mef", s) for s in range(STEPS)]
    for key in ref:
        for m in ("loss", "grad_norm", "tokens"):
            assert got[key][m] == ref[key][m], (key, m, got[key][m], ref[key][m])
