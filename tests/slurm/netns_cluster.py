"""A real two-node SLURM on one machine: munge + slurmctld + two slurmd, each in its own network namespace.

Layout (every address exists only inside namespaces this module creates; nothing in the host's own network
namespace is configured, addressed or listened on)::

    netns <tag>-ctl   hostname meml-ctl  10.226.0.1/24 on bridge br0   slurmctld
         |  veth eth1 <-> eth0 of <tag>-n1                              (the cluster's "switch")
         |  veth eth2 <-> eth0 of <tag>-n2
    netns <tag>-n1    hostname meml-n1   10.226.0.11/24 on eth0         slurmd -N meml-n1  (+ its job steps)
    netns <tag>-n2    hostname meml-n2   10.226.0.12/24 on eth0         slurmd -N meml-n2  (+ its job steps)

* Hostnames: every daemon runs under ``nsenter --net`` + ``unshare --uts`` with ``hostname`` set, so ``socket.gethostname()`` in a job
  step (torchrun, gloo, the trainer) says meml-n1 / meml-n2 as on two real hosts.
* Name resolution: each daemon runs in a private mount namespace (``unshare --mount``) with
  ``/etc/netns/NS/hosts`` bind-mounted over ``/etc/hosts`` (the convention of ``ip netns exec``); this module
  writes one per namespace (the three names above) and deletes them at stop. The host's /etc/hosts is not touched.
* The filesystem is shared, like a cluster's shared FS: the slurm.conf, the spool / state / log directories, the
  munge socket (a pathname Unix socket: reachable from every network namespace, so one munged serves all) and the
  job's run directory. Per-node files use slurm.conf's ``%n`` (node name).
* Clients (sbatch, scontrol, squeue) reach slurmctld only from inside a namespace: :meth:`TwoNodeSlurm.run` prefixes
  ``nsenter --net=/var/run/netns/<tag>-ctl``.
* Both nodes declare ``CPUs=4`` on a 2-core machine (``SlurmdParameters=config_overrides``): two 2-rank nodes, or
  one 4-rank node for the single-node reference, oversubscribe the cores on purpose.
* ``SlurmdTimeout`` is short (:data:`SLURMD_TIMEOUT` s) so a killed node is declared DOWN in seconds, not SLURM's
  default 5 minutes; its jobs then end as NODE_FAIL and ``--requeue`` jobs go back to PENDING.

Stop is by PID: every process that lives in one of our namespaces (``ip netns pids``: the slurm daemons, slurmstepd,
torchrun, the ranks), then munged by its pid file; then the namespaces and their /etc/netns folders are deleted.
:func:`plan` builds every command, file and address without running anything (the fast test checks it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from tests.slurm.cluster import LocalSlurm, SlurmUnavailable, _alive, _sbin, _tail, ensure_installed

SUBNET = "10.226.0"
SLURMD_TIMEOUT = 6          # s without a slurmd answer before slurmctld declares its node DOWN
CTL_PORT, SLURMD_PORT = 6817, 6818  # fixed: each namespace has its own port space


@dataclass
class Node:
    name: str        # SLURM NodeName = hostname inside its UTS namespace
    netns: str
    addr: str
    ifname: str      # this node's interface (eth0 in its namespace)
    hub_ifname: str  # the other end of its veth pair, a port of the controller's bridge


@dataclass
class Plan:
    """Everything the cluster will create, as data: names, addresses, commands, files."""

    root: str
    tag: str
    ctl: Node
    nodes: List[Node]
    bridge: str = "br0"
    setup_cmds: List[List[str]] = field(default_factory=list)
    hosts_text: str = ""

    @property
    def namespaces(self) -> List[str]:
        return [self.ctl.netns] + [n.netns for n in self.nodes]

    @property
    def conf(self) -> str:
        return os.path.join(self.root, "slurm.conf")

    @property
    def munge_socket(self) -> str:
        return os.path.join(self.root, "munge", "munge.socket.2")

    def hosts_file(self, netns: str) -> str:
        return f"/etc/netns/{netns}/hosts"

    def in_ns(self, netns: str, hostname: Optional[str], *cmd: str) -> List[str]:
        """``cmd`` inside ``netns``; with ``hostname`` also in its own UTS + mount namespace, with that hostname
        and ``/etc/netns/<netns>/hosts`` bind-mounted over /etc/hosts (what ``ip netns exec`` does, without its
        remount of /sys, which would hide the cgroup tree slurmd needs)."""
        enter = ["nsenter", f"--net=/var/run/netns/{netns}"]
        if hostname is None:
            return [*enter, *cmd]
        script = f'mount --bind {self.hosts_file(netns)} /etc/hosts && hostname {hostname} && exec "$@"'
        return [*enter, "unshare", "--mount", "--uts", "--", "sh", "-c", script, "sh", *cmd]

    def slurmctld_cmd(self) -> List[str]:
        return self.in_ns(self.ctl.netns, self.ctl.name, _sbin("slurmctld"), "-f", self.conf)

    def slurmd_cmd(self, node: Node) -> List[str]:
        return self.in_ns(node.netns, node.name, _sbin("slurmd"), "-f", self.conf, "-N", node.name)

    def pidfile(self, daemon: str, node: Optional[str] = None) -> str:
        return os.path.join(self.root, f"{daemon}{'-' + node if node else ''}.pid")

    def log(self, daemon: str, node: Optional[str] = None) -> str:
        return os.path.join(self.root, "log", f"{daemon}{'-' + node if node else ''}.log")


def plan(root: str, tag: str) -> Plan:
    """The cluster under ``root``; ``tag`` (<= 8 chars, e.g. ``m26<pid>``) makes the namespace names unique."""
    if not tag or len(tag) > 8 or not tag.replace("-", "").isalnum():
        raise ValueError(f"namespace tag {tag!r}: 1-8 alphanumeric characters")
    ctl = Node("meml-ctl", f"{tag}-ctl", f"{SUBNET}.1", "br0", "")
    nodes = [Node(f"meml-n{i}", f"{tag}-n{i}", f"{SUBNET}.{10 + i}", "eth0", f"eth{i}") for i in (1, 2)]
    p = Plan(os.path.abspath(root), tag, ctl, nodes)
    c = ctl.netns
    cmds = [["ip", "netns", "add", ns] for ns in p.namespaces]
    cmds += [["ip", "-n", ns, "link", "set", "lo", "up"] for ns in p.namespaces]
    cmds += [["ip", "-n", c, "link", "add", p.bridge, "type", "bridge"],
             ["ip", "-n", c, "addr", "add", f"{ctl.addr}/24", "dev", p.bridge],
             ["ip", "-n", c, "link", "set", p.bridge, "up"]]
    for n in nodes:  # the veth pair is created inside the namespaces: no interface ever exists in the host's
        cmds += [["ip", "-n", c, "link", "add", n.hub_ifname, "type", "veth", "peer", "name", n.ifname,
                  "netns", n.netns],
                 ["ip", "-n", c, "link", "set", n.hub_ifname, "master", p.bridge],
                 ["ip", "-n", c, "link", "set", n.hub_ifname, "up"],
                 ["ip", "-n", n.netns, "addr", "add", f"{n.addr}/24", "dev", n.ifname],
                 ["ip", "-n", n.netns, "link", "set", n.ifname, "up"]]
    p.setup_cmds = cmds
    p.hosts_text = "127.0.0.1 localhost\n" + "".join(f"{n.addr} {n.name}\n" for n in [ctl, *nodes])
    return p


def render_conf(p: Plan, mem_mb: int = 4000, cpus: int = 4) -> str:
    """slurm.conf of the two-node cluster (the single-node facts of shared/notes/slurm-local.md, plus NodeAddr,
    per-node spool / pid / log files via %n and a short SlurmdTimeout)."""
    r = p.root
    lines = [
        "ClusterName=memlnetns", f"SlurmctldHost={p.ctl.name}({p.ctl.addr})", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={CTL_PORT}", f"SlurmdPort={SLURMD_PORT}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={p.munge_socket}",
        f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool/%n",
        f"SlurmctldPidFile={p.pidfile('slurmctld')}", f"SlurmdPidFile={r}/slurmd-%n.pid",
        f"SlurmctldLogFile={p.log('slurmctld')}", f"SlurmdLogFile={r}/log/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU", "MpiDefault=none", "MailProg=/bin/true", "SlurmdParameters=config_overrides",
        "JobRequeue=1", "ReturnToService=2", "KillWait=5", "MinJobAge=600", "InactiveLimit=0",
        f"SlurmdTimeout={SLURMD_TIMEOUT}", "MessageTimeout=10", "TCPTimeout=3",
        "SchedulerType=sched/builtin", "SlurmctldDebug=info", "SlurmdDebug=info",
    ]
    for n in p.nodes:
        lines.append(f"NodeName={n.name} NodeAddr={n.addr} NodeHostname={n.name} CPUs={cpus} "
                     f"RealMemory={mem_mb} State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={','.join(n.name for n in p.nodes)} Default=YES MaxTime=INFINITE "
                 f"State=UP")
    return "\n".join(lines) + "\n"


def _sh(cmd: Sequence[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise SlurmUnavailable(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip()}")
    return r


def _ensure_iproute2() -> None:
    """``ip`` (iproute2) and ``nsenter`` / ``unshare`` (util-linux); apt-get installs iproute2 when ``ip`` is
    missing. Creating namespaces needs root (CAP_SYS_ADMIN): a refusal surfaces as SlurmUnavailable with ip's
    message."""
    import shutil

    if shutil.which("ip") is None:
        if shutil.which("apt-get") is None:
            raise SlurmUnavailable("`ip` (iproute2) is missing and apt-get is absent")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "iproute2"], env=env,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SlurmUnavailable(f"apt-get install iproute2 failed: {r.stderr.strip()[-500:]}")
    missing = [b for b in ("ip", "nsenter", "unshare") if shutil.which(b) is None]
    if missing:
        raise SlurmUnavailable(f"missing {', '.join(missing)} (iproute2 / util-linux)")


def ns_pids(netns: str) -> List[int]:
    """PIDs of every process in network namespace ``netns`` (``ip netns pids``)."""
    r = _sh(["ip", "netns", "pids", netns], check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def kill_pids(pids: Sequence[int], timeout: float = 10) -> None:
    """SIGTERM each PID, then SIGKILL what is still alive after ``timeout`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        t0 = time.time()
        while any(_alive(p) for p in pids) and time.time() - t0 < timeout:
            time.sleep(0.1)
        if not any(_alive(p) for p in pids):
            return


class TwoNodeSlurm(LocalSlurm):
    """The cluster of :func:`plan`, started and stopped. ``sbatch`` / ``job`` / ``wait_job`` come from
    :class:`LocalSlurm`; every client command runs in the controller's namespace."""

    def __init__(self, root: str, tag: Optional[str] = None):
        super().__init__(root)
        self.plan = plan(self.root, tag or f"m26{os.getpid() % 100000}")
        self.pidfiles = {"munged": self.plan.pidfile("munged"), "slurmctld": self.plan.pidfile("slurmctld")}
        self.created: List[str] = []
        self.started_s = self.stopped_s = None

    @property
    def node_names(self) -> List[str]:
        return [n.name for n in self.plan.nodes]

    def node(self, name: str) -> Node:
        return next(n for n in self.plan.nodes if n.name == name)

    def run(self, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        full = self.plan.in_ns(self.plan.ctl.netns, None, *cmd)
        r = subprocess.run(full, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip()}")
        return r

    def client(self, *cmd: str) -> List[str]:
        """A command line that runs ``cmd`` where slurmctld is reachable (for subprocess calls of the tests)."""
        return self.plan.in_ns(self.plan.ctl.netns, None, *cmd)

    # -- start / stop ----------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> "TwoNodeSlurm":
        t0 = time.time()
        ensure_installed()
        _ensure_iproute2()
        p = self.plan
        stale = [ns for ns in p.namespaces if os.path.exists(f"/var/run/netns/{ns}")]
        if stale:
            raise SlurmUnavailable(f"network namespaces {stale} exist already (a previous run of pid "
                                   f"{p.tag[3:]} was not cleaned up; `ip netns del` them)")
        for d in ("munge", "state", "spool", "log"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(os.path.join(self.root, "munge"), 0o755)
        for n in p.nodes:
            os.makedirs(os.path.join(self.root, "spool", n.name), exist_ok=True)
        for cmd in p.setup_cmds:
            if cmd[:3] == ["ip", "netns", "add"]:
                self.created.append(cmd[3])
            _sh(cmd)
        for ns in p.namespaces:
            os.makedirs(os.path.dirname(p.hosts_file(ns)), exist_ok=True)
            with open(p.hosts_file(ns), "w") as f:
                f.write(p.hosts_text)
        self._start_munge()
        with open(self.conf, "w") as f:
            f.write(render_conf(p))
        self._daemon(p.slurmctld_cmd(), p.log("slurmctld"))
        for n in p.nodes:
            self.start_node(n.name, wait=False)
        self._wait_nodes("idle", timeout)
        self.started_s = time.time() - t0
        return self

    def _daemon(self, cmd: List[str], log: str) -> None:
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip()}\n"
                                   f"{_tail(log)}")

    def start_node(self, name: str, wait: bool = True, timeout: float = 60) -> None:
        """(Re)start the slurmd of node ``name`` in its namespace; with ``wait``, until SLURM has it back."""
        self._daemon(self.plan.slurmd_cmd(self.node(name)), self.plan.log("slurmd", name))
        if wait:
            self._wait_nodes(("idle", "mixed", "allocated", "completing"), timeout, names=[name])

    def kill_node(self, name: str) -> List[int]:
        """SIGKILL every process in node ``name``'s namespace (its slurmd, slurmstepd, torchrun, ranks): the host
        is gone. Returns the PIDs killed."""
        pids = ns_pids(self.node(name).netns)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def node_states(self) -> Dict[str, str]:
        r = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10)
        return dict(line.split()[:2] for line in r.stdout.splitlines() if len(line.split()) >= 2)

    def _wait_nodes(self, states, timeout: float, names: Optional[Sequence[str]] = None) -> None:
        states = (states,) if isinstance(states, str) else tuple(states)
        names = list(names or self.node_names)
        t0, got = time.time(), {}
        while time.time() - t0 < timeout:
            got = self.node_states()
            if all(got.get(n, "").rstrip("*~#") in states for n in names):
                return
            time.sleep(0.3)
        raise SlurmUnavailable(
            f"nodes {names} not {states} after {timeout:.0f} s (sinfo: {got})\nslurmctld: "
            f"{_tail(self.plan.log('slurmctld'))}\n" +
            "\n".join(f"slurmd {n}: {_tail(self.plan.log('slurmd', n))}" for n in names))

    def wait_node_state(self, name: str, states, timeout: float) -> str:
        self._wait_nodes(states, timeout, names=[name])
        return self.node_states()[name]

    def stop(self, timeout: float = 10) -> None:
        """Kill every process in our namespaces by PID, munged by its pid file; delete the namespaces and their
        /etc/netns folders. Safe to call after a failed or partial start, and twice."""
        t0 = time.time()
        pids = [pid for ns in self.plan.namespaces if os.path.exists(f"/var/run/netns/{ns}")
                for pid in ns_pids(ns)]
        kill_pids(pids, timeout)
        munged = self._pid("munged")
        if munged is not None and _alive(munged):
            kill_pids([munged], timeout)
        for ns in self.plan.namespaces:
            if os.path.exists(f"/var/run/netns/{ns}"):
                _sh(["ip", "netns", "del", ns], check=False)
            d = os.path.dirname(self.plan.hosts_file(ns))
            if os.path.isdir(d):
                for f in os.listdir(d):
                    os.remove(os.path.join(d, f))
                os.rmdir(d)
        self.stopped_s = time.time() - t0

    def leftovers(self) -> List[str]:
        """What stop() should have removed and did not (empty after a clean stop)."""
        out = [f"netns {ns}" for ns in self.plan.namespaces if os.path.exists(f"/var/run/netns/{ns}")]
        out += [f"dir {os.path.dirname(self.plan.hosts_file(ns))}" for ns in self.plan.namespaces
                if os.path.exists(os.path.dirname(self.plan.hosts_file(ns)))]
        munged = self._pid("munged")
        if munged is not None and _alive(munged):
            out.append(f"munged pid {munged}")
        return out
