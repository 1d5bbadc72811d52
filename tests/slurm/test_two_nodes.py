"""megatron_meml.launch on a real two-node SLURM (two slurmd "hosts" in network namespaces, slurmctld in a third:
tests/slurm/netns_cluster.py). Marked slow: each training job pays ~1-2 minutes of start-up on the 2 shared cores.

1. ``--nodes 2 --nproc-per-node 2`` with TP=2 (inside a node) and DP=2 (across the nodes), MEF then RIEL: the
   rendezvous host comes from ``scontrol show hostnames $SLURM_JOB_NODELIST | head -n1`` as on a real cluster, and
   every logged metric equals the same run as one 4-rank node (1e-6). Its checkpoint (written by ranks on both
   hosts) holds the one-node run's weights bit for bit and starts a job at another layout (TP=1, one rank per
   node; ``model.init_from``, since an exact resume needs the saved layout).
2. One node (its slurmd, slurmstepd, torchrun and ranks: every process in its namespace) is SIGKILLed mid-RIEL: the
   ranks on the other node stop within ``parallel.timeout_minutes`` with one line naming the lost node and the
   newest complete checkpoint; SLURM declares the node DOWN and requeues the job (``--requeue``); with the node
   back, the rerun resumes and every later metric equals the uninterrupted run.
3. Async RIEL with ``--rollout-nodes 1``: the training rank on one node, the rollout rank on the other, weights
   broadcast across the veth link; every metric equals the single-node async run.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from megatron_meml.backend.ckpt import checkpoint as C
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TINY = ["examples/quickstart/config.yaml", "logging.tensorboard=false", "model.num_layers=1", "model.hidden_size=32",
        "model.ffn_hidden_size=64", "data.global_batch_size=8", "data.micro_batch_size=4", "eval.enabled=false",
        "mef.max_steps=3", "riel.questions_per_step=2", "riel.group_size=2", "riel.buffer_k=1",
        "riel.buffer_capacity=2", "riel.lr=1e-3", "rollout.max_new_tokens=8", "checkpoint.save_interval=1",
        "checkpoint.keep_last=100"]
SYNC = TINY + ["riel.steps=12"]
ASYNC = TINY + ["riel.steps=5", "data.global_batch_size=4"]
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")
KEYS = ("loss", "grad_norm", "tokens", "reward/mean", "tokens/grpo", "tokens/kl", "tokens/sft", "buffer/size")
OMP = ["--env", "OMP_NUM_THREADS=1", "--env", "PYTHONWARNINGS=ignore"]


def submit(cluster, run_dir, *args, nodes=2, nproc=2, overrides=SYNC, port=29400) -> int:
    """launch.py --submit from inside the controller's namespace (where sbatch reaches slurmctld)."""
    cmd = cluster.client(sys.executable, "-m", "megatron_meml.launch", *overrides, f"logging.run_dir={run_dir}", "--cpu",
                         "--nodes", str(nodes), "--nproc-per-node", str(nproc), "--python", sys.executable,
                         "--rdzv-port", str(port), "--time", "00:20:00", *OMP, *args, "--submit")
    r = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return int(re.search(r"submitted job (\d+)", r.stdout).group(1))


def job_log(run_dir, job_id) -> str:
    path = os.path.join(run_dir, "slurm", f"slurm-{job_id}.out")
    return open(path, errors="replace").read() if os.path.exists(path) else "(no job log)"


def metrics(run_dir):
    """Last record per (stage, step): a resumed run re-logs the steps after its checkpoint."""
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        row = json.loads(line)
        out[(row["stage"], row["step"])] = row
    return out


def wait_done(cluster, job_id, run_dir, timeout=600, restarts=None):
    try:
        info = cluster.wait_job(job_id, DONE, timeout, restarts=restarts)
    except TimeoutError as e:
        pytest.fail(f"{e}\n{job_log(run_dir, job_id)[-4000:]}")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", \
        f"job {job_id}: {info['JobState']} {info['ExitCode']}\n{job_log(run_dir, job_id)[-4000:]}"
    return info


def max_diff(ref, got, keys=KEYS):
    """Largest |ref - got| over the common (stage, step) rows and ``keys``; asserts the rows match."""
    assert sorted(ref) == sorted(got), (sorted(ref), sorted(got))
    worst = 0.0
    for k in ref:
        for m in keys:
            if m in ref[k]:
                worst = max(worst, abs(ref[k][m] - got[k][m]))
    return worst


def run_job(cluster, run_dir, args=(), **kw):
    t0 = time.time()
    job_id = submit(cluster, str(run_dir), *args, **kw)
    wait_done(cluster, job_id, str(run_dir))
    print(f"\n[job {job_id}] {kw.get('nodes', 2)} node(s) x {kw.get('nproc', 2)}: {time.time() - t0:.0f} s")
    return str(run_dir), job_id


@pytest.fixture(scope="module")
def one_node(two_node_cluster, tmp_path_factory):
    """The reference: the same job as one node with 4 ranks (TP=2, DP=2)."""
    return run_job(two_node_cluster, tmp_path_factory.mktemp("one") / "run", nodes=1, nproc=4,
                   overrides=SYNC + ["parallel.tensor_model_parallel_size=2"])


@pytest.fixture(scope="module")
def two_node(two_node_cluster, tmp_path_factory):
    return run_job(two_node_cluster, tmp_path_factory.mktemp("two") / "run", nodes=2, nproc=2,
                   overrides=SYNC + ["parallel.tensor_model_parallel_size=2"])


def test_two_node_job_equals_one_node(one_node, two_node):
    (ref_dir, _), (run_dir, job_id) = one_node, two_node
    log = job_log(run_dir, job_id)
    assert f"nodes meml-n[1-2]" in log and "rendezvous meml-n1:29400" in log, log[-3000:]
    assert "[launch] node meml-n1: torchrun node 0 of 2" in log and "[launch] node meml-n2: torchrun node 1 of 2" in log
    ref, got = metrics(ref_dir), metrics(run_dir)
    assert [k for k in ref if k[0] == "mef"] == [("mef", s) for s in range(3)]
    assert [k for k in ref if k[0] == "riel"] == [("riel", s) for s in range(12)]
    worst = max_diff(ref, got)
    print(f"\n[two-node vs one-node] max |diff| over {len(ref)} steps x {KEYS}: {worst:.3g}")
    assert worst <= 1e-6
    # the checkpoint: one file per rank, ranks 0-1 written on meml-n1 and 2-3 on meml-n2, complete
    latest = C.latest(os.path.join(run_dir, "checkpoints"))
    assert latest and C.verify(latest) is None


def test_two_node_checkpoint_resumes_at_another_layout(two_node_cluster, one_node, two_node, tmp_path):
    """The final checkpoint of the 2x2 job (rank files 0-1 written on meml-n1, 2-3 on meml-n2) is complete, holds
    bit for bit the weights of the one-node run's, and a new job at another layout (2 nodes x 1 rank: TP=1, DP=2)
    starts from it (``model.init_from``: exact resume needs the saved layout, ``checkpoint.py``)."""
    from megatron_meml.backend.ckpt.checkpoint_source import read_training_checkpoint

    (ref_dir, _), (src, _) = one_node, two_node
    ckpt = C.latest(os.path.join(src, "checkpoints"))
    assert ckpt.endswith("step_01000012") and C.verify(ckpt) is None
    assert sorted(f for f in os.listdir(ckpt) if f.startswith("rank_")) == [f"rank_{r:05d}.pt" for r in range(4)]
    meta, got = read_training_checkpoint(ckpt)
    _, ref = read_training_checkpoint(os.path.join(ref_dir, "checkpoints", "step_01000012"))
    names = sorted({n for sh in meta.shards for n in sh["tensors"]})
    assert meta.tp == 2 and names
    for n in names:
        assert torch.equal(got.full(n), ref.full(n)), n
    run_dir = str(tmp_path / "run")
    job_id = submit(two_node_cluster, run_dir, nodes=2, nproc=1, port=29401,
                    overrides=SYNC[:-1] + ["riel.steps=3", "parallel.tensor_model_parallel_size=1",
                                           f"model.init_from={ckpt}"])
    wait_done(two_node_cluster, job_id, run_dir)
    log = job_log(run_dir, job_id)
    assert f"initial weights from checkpoint {ckpt} (" in log, log[-3000:]
    rows = metrics(run_dir)
    assert sorted(rows) == [("mef", s) for s in range(3)] + [("riel", s) for s in range(3)]
    print(f"\n[init_from the two-node checkpoint at TP=1 x DP=2] {len(names)} tensors equal the one-node run's; "
          f"MEF loss at step 0: {rows[('mef', 0)]['loss']:.4f} (fresh init: {metrics(src)[('mef', 0)]['loss']:.4f})")


def test_killed_node_stops_survivors_then_requeue_resumes_exactly(two_node_cluster, two_node, tmp_path):
    ref_dir, _ = two_node
    cluster = two_node_cluster
    run_dir = str(tmp_path / "run")
    timeout_min = 2.0  # also bounds process-group start-up: 0.5 min timed out rank 3's late join under load
    job_id = submit(cluster, run_dir, nodes=2, nproc=2, port=29402,
                    overrides=SYNC + ["parallel.tensor_model_parallel_size=2",
                                      f"parallel.timeout_minutes={timeout_min}"])
    path = os.path.join(run_dir, "metrics.jsonl")
    t0 = time.time()
    while not (os.path.exists(path) and any(json.loads(l)["stage"] == "riel" and json.loads(l)["step"] >= 2
                                            for l in open(path) if l.strip())):
        state = cluster.job(job_id).get("JobState")
        if state in DONE or time.time() - t0 > 600:
            pytest.fail(f"job {job_id} never reached RIEL step 2 ({state}):\n{job_log(run_dir, job_id)[-3000:]}")
        time.sleep(0.05)
    killed = cluster.kill_node("meml-n2")
    t_kill = time.time()
    assert killed
    # the survivors' one line, in the job log (srun on meml-n1 relays their stderr)
    line = None
    while time.time() - t_kill < timeout_min * 60 + 60 and line is None:
        line = next((ln for ln in job_log(run_dir, job_id).splitlines() if "lost contact with another rank" in ln),
                    None)
        time.sleep(0.1)
    latency = time.time() - t_kill
    assert line is not None, job_log(run_dir, job_id)[-4000:]
    print(f"\n[node meml-n2 killed] after {latency:.1f} s: {line}")
    assert latency < timeout_min * 60
    newest = C.latest(os.path.join(run_dir, "checkpoints"))
    assert "lost node meml-n2 (ranks 2-3)" in line and f"the newest complete checkpoint is {newest}" in line
    # SLURM: node DOWN, job requeued
    t_down = time.time()
    state = cluster.wait_node_state("meml-n2", ("down", "down*"), 120)
    try:
        info = cluster.wait_job(job_id, ("PENDING",), 120, restarts=1)
    except TimeoutError as e:
        pytest.fail(f"not requeued: {e}\n{job_log(run_dir, job_id)[-4000:]}")
    print(f"\n[SLURM] meml-n2 {state} and job {job_id} requeued ({info.get('Reason')}) "
          f"{time.time() - t_down:.1f} s after the line")
    cluster.start_node("meml-n2")
    # No `scontrol update StartTime=now` here (the single-node requeue test uses it): SLURM's requeue hold-off
    # (~120 s) is what keeps the new instance safe from the previous one's terminate request, which slurmctld
    # queued for the dead node and re-sends every 60 s until the node answers -- job ids survive a requeue, so
    # released earlier, the restarted job's step on meml-n2 was killed by it (seen on this cluster).
    t_back = time.time()
    wait_done(cluster, job_id, run_dir, restarts=1, timeout=900)
    print(f"\n[requeued run] node back -> job completed in {time.time() - t_back:.0f} s")
    log = job_log(run_dir, job_id)
    assert f"[launch] job {job_id} restart 1" in log
    resumed = re.search(r"resumed riel from \S+", log)
    assert resumed, log[-3000:]
    print(f"\n[requeued run] {resumed.group(0)}")
    ref, got = metrics(ref_dir), metrics(run_dir)
    worst = max_diff(ref, got)
    assert worst == 0.0, worst


@pytest.mark.parametrize("layout", ["rollout node"])
def test_async_rollout_node_equals_single_node(two_node_cluster, tmp_path, layout):
    """Training rank on meml-n1, rollout rank on meml-n2 (``--rollout-nodes 1``) vs both on one node."""
    one, _ = run_job(two_node_cluster, tmp_path / "one", nodes=1, nproc=2, port=29403, overrides=ASYNC,
                     args=("--rollout-ranks", "1"))
    two, job_id = run_job(two_node_cluster, tmp_path / "two", nodes=2, nproc=1, port=29404, overrides=ASYNC,
                          args=("--rollout-nodes", "1"))
    log = job_log(two, job_id)
    assert "async RIEL: global ranks 0-0 train, 1-1 generate" in log, log[-3000:]
    assert "[launch] node meml-n1: torchrun node 0 of 2" in log and "[launch] node meml-n2: torchrun node 1 of 2" in log
    ref, got = metrics(one), metrics(two)
    assert [k for k in ref if k[0] == "riel"] == [("riel", s) for s in range(5)]
    worst = max_diff(ref, got)
    print(f"\n[async two-node vs one-node] max |diff|: {worst:.3g}")
    assert worst <= 1e-6
