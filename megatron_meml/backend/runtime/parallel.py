"""Process groups: torch.distributed from the torchrun/SLURM environment (or a single-process default), then
megatron-core's tensor/pipeline/data parallel groups and its model-parallel RNG seeds.

Backend: nccl with CUDA, gloo without (then :mod:`.cpu_runtime` is activated first).
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.distributed as dist

from ...versions import require_supported
from . import compat, cpu_runtime, hosts


@dataclass
class ParallelInfo:
    """Ranks and sizes of this process in every megatron group."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_logging_rank(self) -> bool:
        """Rank that prints and writes metrics: DP rank 0, TP rank 0, last pipeline stage."""
        return self.dp_rank == 0 and self.tp_rank == 0 and self.is_last_stage


def free_port() -> int:
    """A free TCP port for a local rendezvous, drawn *below* Linux's ephemeral range (32768-60999): a port the
    kernel handed out with bind(0) can be taken by any process's outgoing connection (gloo opens many) before the
    rendezvous server binds it, which shows up as EADDRINUSE under load."""
    import random

    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free TCP port found in 20000-32000 for the local rendezvous")


def env_rank_world():
    """(rank, world_size, local_rank) from torchrun or SLURM variables; (0, 1, 0) when neither is set."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and "MASTER_ADDR" in os.environ:
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def initialize(tp: int = 1, pp: int = 1, seed: int = 1234, backend: Optional[str] = None,
               timeout_minutes: float = 30) -> ParallelInfo:
    """Initialise torch.distributed (if needed) and megatron's parallel state; seed every RNG. ``timeout_minutes``
    (fractions allowed) bounds how long any collective waits for another rank before it raises.

    Raises ValueError naming ``parallel.tensor_model_parallel_size`` when TP*PP does not divide the world size.
    """
    require_supported()  # every tool that builds a model passes here: an unsupported version stops it in one line
    compat.quiet_library_notes()  # before megatron's modules import (their fallback notes fire at import)
    from megatron.core import parallel_state, tensor_parallel

    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        cpu_runtime.activate()
    backend = backend or ("nccl" if use_cuda else "gloo")
    rank, world, local_rank = env_rank_world()
    if dist.is_initialized():  # a caller set up this process's world (the async split: backend/async_bridge.py)
        rank, world = dist.get_rank(), dist.get_world_size()
    if world % (tp * pp) != 0:
        raise ValueError(f"config key `parallel.tensor_model_parallel_size`: TP*PP={tp * pp} "
                         f"does not divide the world size {world}")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = "127.0.0.1"
            os.environ["MASTER_PORT"] = str(free_port())
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    hosts.record()  # rank -> host, so that a lost-rank error can name the lost node (backend/runtime/hosts.py)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             distributed_timeout_minutes=timeout_minutes)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return info()


def info() -> ParallelInfo:
    from megatron.core import parallel_state as ps

    return ParallelInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(), tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(), pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size())


_COMM_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "connection refused", "broken pipe",
                 "timed out", "timeout", "socket", "tcpstore", "processgroup", "peer")


def is_comm_failure(e: BaseException) -> bool:
    """True when ``e`` says another rank is gone or unresponsive: torch's distributed errors (DistError and
    subclasses), or a backend RuntimeError about closed connections / timeouts (gloo raises plain RuntimeErrors)."""
    if isinstance(e, dist.DistError):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _COMM_MARKERS)


def destroy() -> None:
    """Tear down megatron's groups and the default process group (tests call this between runs)."""
    import sys

    from megatron.core import parallel_state

    vllm_engine = sys.modules.get("megatron_meml.rollout.vllm_engine")
    if vllm_engine is not None:  # rollout.engine=vllm: its process groups live in our world; release them first
        vllm_engine.shutdown_all()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def reduce_metrics(results: Sequence[Dict[str, float]], keys: Sequence[str]) -> Dict[str, float]:
    """Sum per-microbatch metrics over microbatches and DP ranks (valid on the last pipeline stage)."""
    from megatron.core import parallel_state as ps

    vec = torch.tensor([sum(r.get(k, 0.0) for r in results) for k in keys], dtype=torch.float64)
    if ps.is_pipeline_last_stage() and ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(vec, group=ps.get_data_parallel_group())
    return dict(zip(keys, vec.tolist()))


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
