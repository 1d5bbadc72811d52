"""A real single-node SLURM (munge + slurmctld + slurmd, Debian's slurm-wlm 22.05) in a fresh temp directory.

What makes it run on a root container without systemd is recorded in ``shared/notes/slurm-local.md``: munged with
its own key/socket (socket directory mode 755), ``SlurmUser=root``, linuxproc process tracking, no cgroup.conf,
``select/cons_tres`` with ``CR_CPU``, ``JobRequeue=1``. Every file (keys, sockets, spool, state, logs, pid files)
lives under the temp directory and every port is picked free at start, so a previous run's leftovers or a second
cluster on the same host cannot interfere. Daemons are stopped by the PIDs in their own pid files.

Every wait is bounded; a daemon that does not come up raises :class:`SlurmUnavailable` with the tail of its log.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional

from megatron_meml.backend.runtime.parallel import free_port as _parallel_free_port

PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel"]


class SlurmUnavailable(RuntimeError):
    """SLURM could not be installed or started; the message says which step failed and why."""


def free_port() -> int:
    """A free TCP port for a daemon (the rendezvous helper's rule: below the ephemeral range)."""
    try:
        return _parallel_free_port()
    except RuntimeError as e:
        raise SlurmUnavailable(str(e)) from None


def _missing_binaries() -> List[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]


def ensure_installed(timeout: float = 300) -> None:
    """Install slurm-wlm + munge with apt when a binary is missing (~6 s after `apt-get update`)."""
    if not _missing_binaries():
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(_missing_binaries())}) and apt-get is absent")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from None
        if r.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip()[-800:]}")
    if _missing_binaries():
        raise SlurmUnavailable(f"still missing after apt-get install: {', '.join(_missing_binaries())}")


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return "(no log)"


class LocalSlurm:
    """One controller + one compute node (this host, all its CPUs) with one default partition ``debug``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.host = socket.gethostname()
        self.conf = os.path.join(self.root, "slurm.conf")
        self.munge_socket = os.path.join(self.root, "munge", "munge.socket.2")
        self.pidfiles = {name: os.path.join(self.root, f"{name}.pid") for name in ("slurmd", "slurmctld", "munged")}
        self.cpus = os.cpu_count() or 1

    # -- environment of every client command -----------------------------------------------------------------
    @property
    def env(self) -> Dict[str, str]:
        return dict(os.environ, SLURM_CONF=self.conf)

    def run(self, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip()}")
        return r

    # -- start / stop ----------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> "LocalSlurm":
        ensure_installed()
        os.makedirs(os.path.join(self.root, "munge"), exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(os.path.join(self.root, "munge"), 0o755)  # 700 -> "Socket is inaccessible"
        for d in ("state", "spool", "log"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        self._start_munge()
        self._write_conf()
        for daemon in ("slurmctld", "slurmd"):
            r = subprocess.run([_sbin(daemon), "-f", self.conf], env=self.env, capture_output=True, text=True,
                               timeout=30)
            if r.returncode != 0:
                raise SlurmUnavailable(f"{daemon} did not start (exit {r.returncode}): {r.stderr.strip()}\n"
                                       f"{_tail(self._log(daemon))}")
        self._wait_idle(timeout)
        return self

    def _log(self, daemon: str) -> str:
        return os.path.join(self.root, "log", f"{daemon}.log")

    def _start_munge(self) -> None:
        key = os.path.join(self.root, "munge", "munge.key")
        r = subprocess.run([_sbin("mungekey"), "--create", f"--keyfile={key}"], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise SlurmUnavailable(f"mungekey failed: {r.stderr.strip()}")
        os.chmod(key, 0o600)
        cmd = [_sbin("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
               f"--log-file={self._log('munged')}", f"--pid-file={self.pidfiles['munged']}",
               f"--seed-file={os.path.join(self.root, 'munge', 'munged.seed')}"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {r.stderr.strip()}\n{_tail(self._log('munged'))}")

    def _write_conf(self) -> None:
        with open("/proc/meminfo") as f:
            mem_mb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) // 1024
        r = self.root
        lines = [
            "ClusterName=memltest", f"SlurmctldHost={self.host}", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={self.pidfiles['slurmctld']}", f"SlurmdPidFile={self.pidfiles['slurmd']}",
            f"SlurmctldLogFile={self._log('slurmctld')}", f"SlurmdLogFile={self._log('slurmd')}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU", "MpiDefault=none", "MailProg=/bin/true",
            "JobRequeue=1", "ReturnToService=2", "KillWait=10", "MinJobAge=600", "InactiveLimit=0",
            "SchedulerType=sched/builtin", "SlurmctldDebug=info", "SlurmdDebug=info",
            f"NodeName={self.host} CPUs={self.cpus} RealMemory={int(mem_mb * 0.8)} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _wait_idle(self, timeout: float) -> None:
        t0, out = time.time(), ""
        while time.time() - t0 < timeout:
            r = self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10)
            out = (r.stdout + r.stderr).strip()
            if r.returncode == 0 and out.split() and out.split()[0].rstrip("*") in ("idle", "mixed"):
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"node {self.host} not idle after {timeout:.0f} s (sinfo: {out!r})\n"
                               f"slurmctld: {_tail(self._log('slurmctld'))}\nslurmd: {_tail(self._log('slurmd'))}")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM each daemon by its pid file (slurmd, slurmctld, munged), SIGKILL after ``timeout`` s."""
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pid(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            t0 = time.time()
            while time.time() - t0 < timeout and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def _pid(self, name: str) -> Optional[int]:
        try:
            with open(self.pidfiles[name]) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    # -- jobs ------------------------------------------------------------------------------------------------
    def sbatch(self, script: str) -> int:
        r = self.run("sbatch", "--parsable", script)
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> Dict[str, str]:
        """``scontrol show job`` as a dict (JobState, RestartCnt, ExitCode, ...); {} when unknown."""
        r = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)

    def wait_job(self, job_id: int, states, timeout: float, restarts: Optional[int] = None) -> Dict[str, str]:
        """Poll until the job is in one of ``states`` (and has ``restarts`` restarts, when given)."""
        t0, info = time.time(), {}
        while time.time() - t0 < timeout:
            info = self.job(job_id)
            if info.get("JobState") in states and (restarts is None or int(info.get("Restarts", 0)) == restarts):
                return info
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} not in {states} (restarts={restarts}) after {timeout:.0f} s: "
                           f"{info.get('JobState')} restarts={info.get('Restarts')} reason={info.get('Reason')}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
