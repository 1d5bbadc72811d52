"""The fast twin of tests/slurm/test_two_nodes.py: what the two-node cluster would create (namespaces, veth pairs,
addresses, hostnames, slurm.conf) and the two-node job scripts, checked without starting anything; plus the
lost-node note of backend/runtime/hosts.py on the error texts gloo gives. Runs in seconds."""
import subprocess
import sys

from megatron_meml.backend.runtime.hosts import lost_node_note
from tests.conftest import ROOT
from tests.slurm.netns_cluster import SUBNET, plan, render_conf
from tests.slurm.test_render import CFG, launch


def test_plan_stays_inside_its_own_namespaces(tmp_path):
    p = plan(str(tmp_path), "m26x")
    assert p.namespaces == ["m26x-ctl", "m26x-n1", "m26x-n2"]
    # every `ip` command names one of our namespaces: nothing is configured in the host's network namespace
    for cmd in p.setup_cmds:
        assert cmd[0] == "ip"
        ns = cmd[3] if cmd[1] == "netns" else cmd[2]
        assert cmd[1] in ("netns", "-n") and ns in p.namespaces, cmd
    veths = [c for c in p.setup_cmds if "veth" in c]
    assert len(veths) == 2 and all(c[2] == "m26x-ctl" and c[-2:] in (["netns", "m26x-n1"], ["netns", "m26x-n2"])
                                   for c in veths)
    addrs = [c[5] for c in p.setup_cmds if c[3:5] == ["addr", "add"]]
    assert addrs == [f"{SUBNET}.1/24", f"{SUBNET}.11/24", f"{SUBNET}.12/24"]
    assert SUBNET.startswith("10.")  # private (RFC 1918), and only ever inside the namespaces above
    assert p.hosts_text.splitlines() == ["127.0.0.1 localhost", f"{SUBNET}.1 meml-ctl", f"{SUBNET}.11 meml-n1",
                                         f"{SUBNET}.12 meml-n2"]
    d1 = p.slurmd_cmd(p.nodes[0])
    assert d1[:2] == ["nsenter", "--net=/var/run/netns/m26x-n1"] and "--uts" in d1 and "--mount" in d1
    assert "hostname meml-n1" in d1[d1.index("-c") + 1] and "/etc/netns/m26x-n1/hosts" in d1[d1.index("-c") + 1]
    assert d1[-4:] == ["-f", p.conf, "-N", "meml-n1"]
    assert p.slurmctld_cmd()[:2] == ["nsenter", "--net=/var/run/netns/m26x-ctl"]
    r = subprocess.run(["sh", "-n", "-c", d1[d1.index("-c") + 1]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bad_tag_is_rejected(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="namespace tag"):
        plan(str(tmp_path), "a-tag-that-is-too-long")


def test_slurm_conf_has_two_addressed_nodes(tmp_path):
    p = plan(str(tmp_path), "m26x")
    conf = render_conf(p).splitlines()
    for line in (f"SlurmctldHost=meml-ctl({SUBNET}.1)", "SlurmdParameters=config_overrides", "JobRequeue=1",
                 "ReturnToService=2", f"SlurmdSpoolDir={p.root}/spool/%n", f"SlurmdPidFile={p.root}/slurmd-%n.pid",
                 f"AuthInfo=socket={p.munge_socket}", "PartitionName=debug Nodes=meml-n1,meml-n2 Default=YES "
                 "MaxTime=INFINITE State=UP"):
        assert line in conf, line
    nodes = [ln for ln in conf if ln.startswith("NodeName=")]
    assert nodes == [f"NodeName=meml-n{i} NodeAddr={SUBNET}.1{i} NodeHostname=meml-n{i} CPUs=4 RealMemory=4000 "
                     "State=UNKNOWN" for i in (1, 2)]
    timeout = int(next(ln for ln in conf if ln.startswith("SlurmdTimeout=")).split("=")[1])
    assert timeout <= 10  # a killed node is DOWN in seconds, so the requeue test does not wait SLURM's 300 s


def test_two_node_scripts():
    """The scripts the slow test submits: 2 nodes x 2 ranks (TP=2 in a node, DP=2 across), rendezvous on the first
    host of the allocation, one log line per node; async with the rollout rank on its own node."""
    text = launch.render(CFG, ["parallel.tensor_model_parallel_size=2"],
                         launch.ClusterOptions(cpu=True, nodes=2, nproc_per_node=2, rdzv_port=29400))
    for needle in ("#SBATCH --nodes=2", "#SBATCH --requeue", "#SBATCH --cpus-per-task=2",
                   'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
                   '--nnodes "$SLURM_NNODES" --nproc-per-node 2', '--rdzv-endpoint "${HEAD_NODE}:${RDZV_PORT}"',
                   'echo "[launch] node $(hostname): torchrun node $SLURM_NODEID of $SLURM_NNODES"'):
        assert needle in text, needle
    assert subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0
    r = subprocess.run([sys.executable, "-m", "megatron_meml.launch", "examples/quickstart/config.yaml", "--cpu",
                        "--nodes", "2", "--nproc-per-node", "1", "--rollout-nodes", "1", "--dry-run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "riel.async_rollout=true riel.rollout_ranks=1" in r.stdout
    assert "global ranks 0-0 train, 1-1 generate" in r.stdout


TABLE = [("meml-n1", "10.226.0.11"), ("meml-n1", "10.226.0.11"), ("meml-n2", "10.226.0.12"),
         ("meml-n2", "10.226.0.12")]


def test_lost_node_note_names_the_peer_host():
    me = TABLE[0]
    gloo = "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.226.0.12]:41234"
    assert lost_node_note(gloo, TABLE, me) == "; lost node meml-n2 (ranks 2-3)"
    # no address in the message (a timeout): the only other host is the lost one
    assert lost_node_note("Timed out waiting 30000ms for recv", TABLE, me) == "; lost node meml-n2 (ranks 2-3)"
    three = TABLE + [("meml-n3", "10.226.0.13")]
    assert lost_node_note("timeout", three, me) == "; lost node: one of meml-n2 (ranks 2-3), meml-n3 (rank 4)"
    assert lost_node_note(gloo, TABLE[:2], me) == ""  # one host: nothing to name
    assert lost_node_note(gloo, None, me) == ""       # never recorded (error before the process group)
