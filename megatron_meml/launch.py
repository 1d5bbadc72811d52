"""Write (and optionally submit) an sbatch script that trains megatron_meml on a SLURM cluster.

    python -m megatron_meml.launch CONFIG.yaml [section.key=value ...] --cluster examples/slurm/cluster.yaml \
        [--nodes 8 --gpus-per-node 8 --partition batch --account proj --time 04:00:00 \
         --container-image IMG --container-mounts SRC:DST,...] [--dry-run | --submit] [--script PATH]
    python -m megatron_meml.launch CONFIG.yaml ... --cpu --nproc-per-node 2 --submit     # gloo, no GPU gres
    python -m megatron_meml.launch CONFIG.yaml ... --nodes 4 --rollout-nodes 1 [riel.rollout_tensor_parallel_size=2]
                                                                  # async RIEL: 3 nodes train, 1 node generates

The job: one ``srun`` task per node runs ``torchrun --nnodes $SLURM_NNODES --nproc-per-node G`` with a c10d
rendezvous on the first node of the allocation; per-rank logs go to ``<log_dir>/ranks/restart-<n>/`` (torchrun
``--log-dir`` + ``--tee``) and the job log to ``<log_dir>/slurm-<jobid>.out``. Preemption: ``#SBATCH
--signal=B:USR1@<secs>`` plus ``--requeue``; the batch shell traps USR1 and forwards it to the job steps, where
torchrun ignores it (it is started under ``trap "" USR1``) and the training ranks checkpoint at the next step
boundary and exit 0 (``megatron_meml/checkpointing.py``); then the shell runs ``scontrol requeue $SLURM_JOB_ID``.
The rerun (``SLURM_RESTART_COUNT`` > 0, logged) uses the same ``logging.run_dir`` and resumes from its latest
checkpoint (``checkpoint.resume=true``). ``scontrol requeue`` works on SLURM 22.05 without cluster settings
(``RequeueExit`` would need slurm.conf access). A requeued job is eligible again after SLURM's requeue delay
(~120 s in 22.05); ``scontrol update JobId=<id> StartTime=now`` starts it at once.

Asynchronous RIEL (``riel.async_rollout``, ``stages/riel_async.py``): the last ``riel.rollout_ranks`` global
ranks generate, the others train. torchrun numbers ranks node-major (node rank x nproc_per_node + local rank), so
``--rollout-nodes k`` (= ``riel.rollout_ranks`` k x nproc_per_node) gives generation k whole nodes and training the
rest; which physical nodes they are follows the c10d rendezvous order (all nodes of a job are alike).
``--rollout-ranks n`` places n ranks instead (e.g. within one CPU node). The rollout TP degree must divide
nproc_per_node, so that rollout TP groups never cross nodes; the training layout is checked against the remaining
ranks.

Cluster options (YAML, see examples/slurm/cluster.yaml) are :class:`ClusterOptions` fields; command-line flags
override them. The run config is loaded and validated here (layout vs. world size) before anything is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, List, Optional, Sequence

from megatron_meml.config import load_config
from megatron_meml.paths import REPO

#: The sbatch template (package data: megatron_meml/job.sbatch.in, listed in setup.py package_data).
TEMPLATE = "job.sbatch.in"


@dataclass
class ClusterOptions:
    """Where and how the job runs. Every field can be set in the cluster YAML or with ``--field-name``."""

    nodes: int = 1                      # SLURM nodes; world size = nodes * nproc_per_node
    gpus_per_node: int = 8              # GPUs (= ranks) per node; --gres=gpu:<n>
    cpu: bool = False                   # CPU mode: gloo, no GPU gres, nproc_per_node processes per node
    nproc_per_node: Optional[int] = None  # ranks per node; default gpus_per_node (GPU) or 2 (CPU)
    cpus_per_task: Optional[int] = None   # CPUs of the one task per node; default: SLURM's default (GPU), nproc (CPU)
    mem: Optional[str] = None           # --mem (e.g. "0" = all memory of the node)
    exclusive: bool = False             # --exclusive
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: Optional[str] = None          # --time, e.g. "04:00:00"
    job_name: str = "megatron_meml"
    container_image: Optional[str] = None   # pyxis/enroot image (e.g. a .sqsh built from the Dockerfile)
    container_mounts: Optional[str] = None  # pyxis --container-mounts SRC:DST[,SRC:DST...]
    container_workdir: Optional[str] = None  # working directory inside the container (default: workdir; mount the
    #                                          checkout there so relative run/log paths agree inside and outside)
    workdir: Optional[str] = None       # repository root on the cluster (default: this checkout)
    python: str = "python"              # interpreter with megatron_meml installed (inside the container if any)
    log_dir: Optional[str] = None       # default <run_dir>/slurm
    signal_seconds: int = 300           # USR1 this many seconds before the time limit
    shutdown_timeout: int = 600         # when SLURM itself SIGTERMs torchrun (scancel, preemption): seconds it
    #                                     lets the ranks checkpoint before SIGKILL (TORCH_ELASTIC_SHUTDOWN_TIMEOUT)
    rdzv_port: Optional[int] = None     # c10d port on the first node; default 29500 + SLURM_JOB_ID % 1000
    rollout_nodes: int = 0              # async RIEL: whole nodes given to generation (riel.rollout_ranks =
    #                                     rollout_nodes * nproc_per_node; turns riel.async_rollout on)
    rollout_ranks: Optional[int] = None  # async RIEL: the last N ranks generate (instead of rollout_nodes)
    omp_num_threads: int = 1
    nccl_socket_ifname: Optional[str] = None  # e.g. "ib0" or "^lo,docker"
    gloo_socket_ifname: Optional[str] = None  # e.g. "eth0"; for gloo (CPU mode, checkpoint barriers)
    env: Dict[str, str] = field(default_factory=dict)         # extra exports (NCCL_IB_HCA, HF_HOME, ...)
    sbatch_extra: List[str] = field(default_factory=list)     # extra "#SBATCH ..." options, e.g. "--constraint=h100"
    srun_extra: List[str] = field(default_factory=list)       # extra srun options

    def __post_init__(self):
        if self.nodes < 1:
            raise ValueError(f"cluster option `nodes` must be >= 1, got {self.nodes}")
        if self.nproc_per_node is None:
            self.nproc_per_node = 2 if self.cpu else self.gpus_per_node
        if self.nproc_per_node < 1:
            raise ValueError(f"cluster option `nproc_per_node` must be >= 1, got {self.nproc_per_node}")
        if self.signal_seconds < 1 or self.signal_seconds > 65535:
            raise ValueError("cluster option `signal_seconds` must be in [1, 65535] (SLURM's limit)")
        if self.rollout_nodes and self.rollout_ranks:
            raise ValueError("cluster options `rollout_nodes` and `rollout_ranks`: set at most one")
        if self.rollout_nodes < 0 or self.rollout_nodes >= self.nodes:
            raise ValueError(f"cluster option `rollout_nodes` must be in [0, nodes) = [0, {self.nodes}), got "
                             f"{self.rollout_nodes} (training needs at least one node)")

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    def async_overrides(self, overrides: Sequence[str]) -> List[str]:
        """Run-config overrides that place the rollout ranks (none without rollout_nodes / rollout_ranks)."""
        n = self.rollout_ranks or self.rollout_nodes * self.nproc_per_node
        if not n:
            return []
        out = [o for o in ("riel.async_rollout=true", f"riel.rollout_ranks={n}")
               if not any(x.startswith(o.split("=")[0] + "=") for x in overrides)]
        return out


def check_async_layout(cfg, opts: ClusterOptions) -> str:
    """Validate the training / rollout split of an async run against the job; returns the job-log line that
    states it ('' for a synchronous run)."""
    world = opts.world_size
    if not cfg.riel.async_rollout:
        cfg.validate_layout(world)
        return ""
    R, rtp = cfg.riel.rollout_ranks, cfg.riel.rollout_tensor_parallel_size
    if R >= world:
        raise ValueError(f"config key `riel.rollout_ranks`: {R} rollout ranks leave no training rank in a job of "
                         f"{world} ranks")
    if opts.nproc_per_node % rtp:
        raise ValueError(f"config key `riel.rollout_tensor_parallel_size`: {rtp} does not divide nproc_per_node="
                         f"{opts.nproc_per_node} (a rollout TP group would cross nodes)")
    cfg.validate_layout(world - R)
    return (f'echo "[launch] async RIEL: global ranks 0-{world - R - 1} train, {world - R}-{world - 1} generate '
            f'(rollout TP {rtp})"')


def load_cluster(path: Optional[str], overrides: Dict[str, object]) -> ClusterOptions:
    """Cluster YAML (optional) with command-line values over it; unknown keys are an error naming the key."""
    import yaml

    data: Dict[str, object] = {}
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    names = {f.name for f in dataclasses.fields(ClusterOptions)}
    for k in list(data) + list(overrides):
        if k not in names:
            raise ValueError(f"unknown cluster option `{k}`; valid: {', '.join(sorted(names))}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return ClusterOptions(**data)


def _q(value) -> str:
    return shlex.quote(str(value))


def _rel_to(path: str, base: str) -> str:
    """``path`` relative to ``base`` when it lies inside it (it then also resolves in the job's working directory,
    inside a container that mounts the repository elsewhere too); absolute otherwise."""
    ab = os.path.abspath(path)
    rel = os.path.relpath(ab, base)
    return ab if rel.startswith("..") else rel


def host_log_dir(config: str, overrides: Sequence[str], opts: ClusterOptions) -> str:
    """Absolute path (on the submitting host) of the job's log directory: ``log_dir`` or ``<run_dir>/slurm``,
    relative paths taken from the job's working directory."""
    log_dir = opts.log_dir or os.path.join(load_config(config, list(overrides)).logging.run_dir, "slurm")
    return os.path.join(os.path.abspath(opts.workdir or REPO), log_dir)


def render(config: str, overrides: Sequence[str], opts: ClusterOptions) -> str:
    """The sbatch script text. Loads ``config`` + ``overrides`` to validate them and to find ``logging.run_dir``."""
    overrides = list(overrides) + opts.async_overrides(overrides)
    cfg = load_config(config, overrides)
    placement = check_async_layout(cfg, opts)
    host_workdir = os.path.abspath(opts.workdir or REPO)
    workdir = opts.container_workdir or host_workdir
    run_dir = cfg.logging.run_dir
    # run_dir is pinned explicitly so every restart of the job writes to (and resumes from) the same directory
    train_args = [_rel_to(config, REPO), *overrides]  # the cluster's checkout (workdir) mirrors this one
    if not any(o.startswith("logging.run_dir=") for o in overrides):
        train_args.append(f"logging.run_dir={run_dir}")
    if not any(o.startswith("logging.progress_bar=") for o in overrides):
        train_args.append("logging.progress_bar=false")  # a progress bar in a log file is noise
    log_dir = opts.log_dir or os.path.join(run_dir, "slurm")

    res = []
    if not opts.cpu:
        res.append(f"--gres=gpu:{opts.gpus_per_node}")
    cpt = opts.cpus_per_task or (opts.nproc_per_node if opts.cpu else None)
    if cpt:
        res.append(f"--cpus-per-task={cpt}")
    for flag, value in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos),
                        ("time", opts.time), ("mem", opts.mem)):
        if value is not None:
            res.append(f"--{flag}={value}")
    if opts.exclusive:
        res.append("--exclusive")

    env = {"OMP_NUM_THREADS": opts.omp_num_threads, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": opts.shutdown_timeout,
           "PYTHONUNBUFFERED": 1}
    if opts.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even where GPUs are visible
    else:
        env.update(CUDA_DEVICE_MAX_CONNECTIONS=1, NCCL_ASYNC_ERROR_HANDLING=1, TORCH_NCCL_ASYNC_ERROR_HANDLING=1)
    if opts.nccl_socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = opts.nccl_socket_ifname
    if opts.gloo_socket_ifname:
        env["GLOO_SOCKET_IFNAME"] = opts.gloo_socket_ifname
    env.update(opts.env)

    srun = ["--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    if opts.container_image:
        srun.append(f"--container-image={_q(opts.container_image)}")
        if opts.container_mounts:
            srun.append(f"--container-mounts={_q(opts.container_mounts)}")
        srun.append(f"--container-workdir={_q(workdir)}")
    srun += [_q(a) for a in opts.srun_extra]

    values = {
        "job_name": opts.job_name, "nodes": opts.nodes, "signal_seconds": opts.signal_seconds,
        "workdir": _q(host_workdir), "run_dir": _q(run_dir), "log_dir": log_dir,
        "sbatch_resources": "\n".join(f"#SBATCH {r}" for r in res),
        "sbatch_extra": "\n".join(f"#SBATCH {s}" for s in opts.sbatch_extra),
        "env_exports": "\n".join(f"export {k}={_q(v)}" for k, v in env.items()),
        "rdzv_port": opts.rdzv_port if opts.rdzv_port else "$((29500 + SLURM_JOB_ID % 1000))",
        "srun_args": " ".join(srun), "python": _q(opts.python), "nproc_per_node": opts.nproc_per_node,
        "train_args": " ".join(_q(a) for a in train_args), "placement": placement,
    }
    if " " in log_dir:
        raise ValueError(f"log_dir {log_dir!r}: #SBATCH --output cannot hold spaces")
    text = resources.files("megatron_meml").joinpath(TEMPLATE).read_text()

    def fill(m: "re.Match") -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder {{{{{m.group(1)}}}}} has no value")
        return str(values[m.group(1)])

    text = re.sub(r"\{\{(\w+)\}\}", fill, text)
    return re.sub(r"\n{3,}", "\n\n", text)


def submit(script_path: str, env: Optional[Dict[str, str]] = None, timeout: float = 60) -> int:
    """``sbatch --parsable SCRIPT`` -> job id."""
    r = subprocess.run(["sbatch", "--parsable", script_path], capture_output=True, text=True, timeout=timeout,
                       env=env)
    if r.returncode != 0:
        raise RuntimeError(f"sbatch failed (exit {r.returncode}): {r.stderr.strip()}")
    return int(r.stdout.strip().split(";")[0])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the run config")
    p.add_argument("--cluster", help="cluster options YAML (examples/slurm/cluster.yaml)")
    p.add_argument("--script", help="where to write the sbatch script (default <log_dir>/job.sbatch)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the script, write and submit nothing")
    mode.add_argument("--submit", action="store_true", help="write the script and sbatch it")
    for f in dataclasses.fields(ClusterOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action="store_true", default=None)
        elif f.name in ("env", "sbatch_extra", "srun_extra"):
            p.add_argument(flag, dest=f.name, action="append", default=None,
                           help="KEY=VALUE (repeatable)" if f.name == "env" else "repeatable")
        else:
            typ = int if "int" in str(f.type) else str
            p.add_argument(flag, dest=f.name, type=typ, default=None)
    return p.parse_intermixed_args(argv)  # run-config overrides may follow the launcher flags


def main(argv=None) -> int:
    args = parse_args(argv)
    over = {f.name: getattr(args, f.name) for f in dataclasses.fields(ClusterOptions)
            if getattr(args, f.name) is not None}
    if "env" in over:
        over["env"] = dict(kv.split("=", 1) for kv in over["env"])
    try:
        opts = load_cluster(args.cluster, over)
        text = render(args.config, args.overrides, opts)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(text, end="")
        return 0
    log_dir = host_log_dir(args.config, args.overrides, opts)
    os.makedirs(log_dir, exist_ok=True)  # SLURM does not create the directory of --output
    script = args.script or os.path.join(log_dir, "job.sbatch")
    with open(script, "w") as f:
        f.write(text)
    os.chmod(script, 0o755)
    print(f"wrote {script}")
    if args.submit:
        try:
            print(f"submitted job {submit(script)}")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
