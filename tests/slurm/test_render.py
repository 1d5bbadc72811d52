"""The sbatch script megatron_meml.launch writes (no SLURM needed): torchrun per node with a c10d rendezvous on
the first node, GPU vs CPU resources, pyxis container flags, the preemption trap, valid bash, and errors that name
the bad option."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

from megatron_meml import launch

CFG = os.path.join(ROOT, "examples", "quickstart", "config.yaml")
CLUSTER = os.path.join(ROOT, "examples", "slurm", "cluster.yaml")


def dry_run(*args):
    r = subprocess.run([sys.executable, "-m", "megatron_meml.launch", *args, "--dry-run"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def test_gpu_script_has_rendezvous_resources_and_preemption():
    opts = launch.ClusterOptions(nodes=4, gpus_per_node=8, partition="batch", account="acct", time="01:00:00",
                                 nccl_socket_ifname="ib0", gloo_socket_ifname="eth0")
    text = launch.render(CFG, ["logging.run_dir=runs/x"], opts)
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:8",
                 "#SBATCH --partition=batch", "#SBATCH --account=acct", "#SBATCH --time=01:00:00",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --requeue", "#SBATCH --output=runs/x/slurm/slurm-%j.out",
                 'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
                 "--nnodes \"$SLURM_NNODES\" --nproc-per-node 8",
                 '--rdzv-backend c10d --rdzv-endpoint "${HEAD_NODE}:${RDZV_PORT}" --rdzv-id "$SLURM_JOB_ID"',
                 "export CUDA_DEVICE_MAX_CONNECTIONS=1", "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
                 "export NCCL_ASYNC_ERROR_HANDLING=1", "export NCCL_SOCKET_IFNAME=ib0",
                 "export GLOO_SOCKET_IFNAME=eth0", "export OMP_NUM_THREADS=1",
                 "trap 'forward_signal USR1' USR1", 'scontrol requeue "$SLURM_JOB_ID"',
                 "RDZV_PORT=$((29500 + SLURM_JOB_ID % 1000))", "--log-dir", "SLURM_RESTART_COUNT",
                 "-m megatron_meml.train examples/quickstart/config.yaml logging.run_dir=runs/x"):
        assert line in text, line
    assert "CUDA_VISIBLE_DEVICES" not in text and "{{" not in text
    r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


def test_cpu_mode_has_no_gres_and_hides_gpus():
    text = launch.render(CFG, [], launch.ClusterOptions(cpu=True, nproc_per_node=2, rdzv_port=12345))
    assert "--gres" not in text and "#SBATCH --cpus-per-task=2" in text and "--nproc-per-node 2" in text
    assert "export CUDA_VISIBLE_DEVICES=''" in text and "RDZV_PORT=12345" in text
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in text
    # the run dir is pinned so that a requeued job resumes from the same checkpoints
    assert "logging.run_dir=runs/quickstart" in text


def test_example_cluster_file_with_container_dry_run():
    code, out, err = dry_run("examples/quickstart/config.yaml", "--cluster", CLUSTER, "--nodes", "2")
    assert code == 0, err
    assert "#SBATCH --nodes=2" in out and "#SBATCH --exclusive" in out and "#SBATCH --mem=0" in out
    assert "--container-image=/lustre/images/megatron_meml.sqsh" in out
    assert "--container-workdir=/lustre/proj/megatron_meml" in out
    assert "#SBATCH --chdir=/lustre/proj/megatron_meml" in out
    assert "--container-mounts=/lustre/proj/megatron_meml:/lustre/proj/megatron_meml," in out
    assert "export NCCL_IB_TIMEOUT=22" in out and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=900" in out


@pytest.mark.parametrize("args, needle", [
    (["parallel.tensor_model_parallel_size=2", "--cpu", "--nproc-per-node", "1"], "does not divide the world size 1"),
    (["--cluster", CLUSTER, "model.hiden_size=8"], "model.hidden_size"),
])
def test_bad_run_config_is_rejected_naming_the_key(args, needle):
    code, out, err = dry_run("examples/quickstart/config.yaml", *args)
    assert code == 2 and needle in err and out == ""


def test_unknown_cluster_option_is_named(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("nodes: 2\ngpu_per_node: 8\n")
    code, _, err = dry_run("examples/quickstart/config.yaml", "--cluster", str(bad))
    assert code == 2 and "gpu_per_node" in err


def test_async_rollout_nodes_place_the_last_ranks_on_whole_nodes():
    """4 nodes x 8 GPUs, --rollout-nodes 1: ranks 24-31 (the last node) generate with TP 2, 24 ranks train."""
    opts = launch.ClusterOptions(nodes=4, gpus_per_node=8, rollout_nodes=1)
    text = launch.render(CFG, ["riel.rollout_tensor_parallel_size=2"], opts)
    assert "riel.async_rollout=true riel.rollout_ranks=8" in text
    assert 'echo "[launch] async RIEL: global ranks 0-23 train, 24-31 generate (rollout TP 2)"' in text
    assert subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0
    cpu = launch.render(CFG, [], launch.ClusterOptions(cpu=True, nproc_per_node=3, rollout_ranks=1))
    assert "riel.rollout_ranks=1" in cpu and "global ranks 0-1 train, 2-2 generate" in cpu
    assert "async RIEL" not in launch.render(CFG, [], launch.ClusterOptions(cpu=True))


@pytest.mark.parametrize("args, needle", [
    (["--nodes", "2", "--gpus-per-node", "8", "--rollout-nodes", "2"], "`rollout_nodes` must be in [0, nodes)"),
    (["--cpu", "--nproc-per-node", "3", "--rollout-ranks", "1", "riel.rollout_tensor_parallel_size=2"],
     "riel.rollout_tensor_parallel_size"),
    (["--cpu", "--nproc-per-node", "4", "--rollout-ranks", "1", "parallel.tensor_model_parallel_size=2"],
     "does not divide the world size 3"),
    (["--cpu", "--nproc-per-node", "2", "--rollout-ranks", "2"], "leave no training rank"),
])
def test_bad_async_placement_is_rejected_naming_the_key(args, needle):
    code, out, err = dry_run("examples/quickstart/config.yaml", *args)
    assert code == 2 and needle in err and out == "", err
