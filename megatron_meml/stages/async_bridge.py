"""Process groups of asynchronous RIEL: one job split into a training world and a rollout world, and a bridge.

Why two worlds. megatron-core's ``parallel_state`` is process-global and is built over torch.distributed's *default*
group: ``initialize_model_parallel`` takes the default group's world size and cuts all of it into TP/PP/DP groups
(0.16 and 0.19 have no way to build them over a subset of ranks). Instead of teaching megatron about rollout ranks,
:func:`split_world` gives each process a default group that contains only its own role, before megatron is
initialised:

    global ranks 0 .. T-1      training world: megatron's TP/PP/DP from ``parallel.*`` over T ranks
    global ranks T .. T+R-1    rollout world: megatron's groups with TP = ``riel.rollout_tensor_parallel_size``,
                               PP = 1, DP = R / TP (independent generation replicas)

So each process still has exactly one ``parallel_state``, with its role's layout, and everything written for one
world (model build, the KV-cache engine, the layout-invariant gather/scatter of ``state.py``, checkpoints) runs
unchanged inside each world. (Alternatives weighed: megatron's groups over the training ranks plus plain torch
groups and a hand-written forward on the rollout ranks -- a second model implementation to keep exact; or GPTModel's
``pg_collection`` argument -- it covers the model's own layers but not ``parallel_state`` users such as the
engine, the state gather or the optimizer.) Both default groups come from one job-wide store (the ``env://``
rendezvous of torchrun / srun) under different key prefixes.

The bridge (members construct it; their rank inside the group in brackets):

    weights    training rank 0 [0] + every rollout rank [1 + k]     NCCL with CUDA, gloo otherwise: full tensors
    rollouts   rollout rank 0 [0] + every training rank [1 + j]     gloo: a step's pickled rollouts
    control    keys on the job store: commands, readiness, heartbeats, failure notices

The two groups are backend objects built directly on a prefixed store (``ProcessGroupGloo(store, rank, size,
timeout)`` / ``ProcessGroupNCCL``), outside torch's group registry: their ranks are not default-group ranks. A
collective on them starts only when the control plane says every member is ready, so it never waits on a peer that
is busy training or generating; waits happen on store keys, where they can be bounded and watched:

* every process bumps a heartbeat counter on the store once a second (a thread; counters, so no clock is compared
  across hosts);
* training rank 0 watches the rollout ranks' counters, rollout rank 0 watches training rank 0's; a counter that
  has not moved for ``min(riel.rollout_timeout_s, 60 s)`` (killed or stopped process) or a step whose rollouts have
  not arrived within ``riel.rollout_timeout_s`` (hung generation) stops the run with :class:`AsyncRolloutError`
  naming the rank, and the notice is posted on the store so every other rank stops too;
* the bridge collectives themselves carry the same timeout.
"""
from __future__ import annotations

import datetime
import os
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ..backend.runtime import cpu_runtime
from ..backend.runtime.parallel import env_rank_world

HEARTBEAT_S = 1.0        # heartbeat period
DEAD_AFTER_S = 60.0      # a heartbeat silent this long (capped by riel.rollout_timeout_s) means a dead/stopped rank
BUCKET_NUMEL = 64 << 20  # weight hand-off bucket: 64 Mi elements (256 MB in fp32)
_JOB_STORE = None
_SPLITS = 0


class AsyncRolloutError(RuntimeError):
    """The asynchronous pipeline cannot continue: a rank failed, died or hung (the message names it)."""


@dataclass
class Split:
    """This process's place in an async job."""

    role: str            # "train" | "rollout"
    rank: int            # global rank in the job
    train_ranks: int     # T
    rollout_ranks: int   # R
    store: Any           # control-plane store (prefixed per split)
    timeout_s: float

    @property
    def is_train(self) -> bool:
        return self.role == "train"

    @property
    def is_rollout(self) -> bool:
        return self.role == "rollout"

    @property
    def role_rank(self) -> int:
        return self.rank if self.is_train else self.rank - self.train_ranks

    @property
    def name(self) -> str:
        """``train<j>`` / ``rollout<k>``: how heartbeats and errors name this process."""
        return f"{self.role}{self.role_rank}"


def _job_store(rank: int, world: int, timeout: datetime.timedelta):
    """The job-wide store of the launcher's ``env://`` rendezvous (kept for the process's lifetime)."""
    global _JOB_STORE
    if _JOB_STORE is None:
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ValueError("config key `riel.async_rollout`: needs a multi-process launch (torchrun / srun with "
                             "MASTER_ADDR and MASTER_PORT set)")
        _JOB_STORE = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))[0]
    return _JOB_STORE


def split_world(rollout_ranks: int, timeout_s: float, backend: Optional[str] = None,
                timeout_minutes: int = 30) -> Split:
    """Initialise this process's *role* world as torch.distributed's default group (see the module docstring):
    the last ``rollout_ranks`` global ranks form the rollout world, the others the training world. Call it instead
    of ``init_process_group``; ``parallel.initialize`` then builds megatron's groups inside the role world."""
    global _SPLITS
    rank, world, local_rank = env_rank_world()
    if world < rollout_ranks + 1:
        raise ValueError(f"config key `riel.rollout_ranks`: {rollout_ranks} rollout rank(s) need a job of at least "
                         f"{rollout_ranks + 1} processes (training ranks too); this job has {world}")
    if dist.is_initialized():
        raise RuntimeError("split_world: torch.distributed is already initialised in this process")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    else:
        cpu_runtime.activate()
    pg_timeout = datetime.timedelta(minutes=timeout_minutes)
    store = _job_store(rank, world, pg_timeout)
    prefix = f"meml/split{_SPLITS}"  # a fresh namespace per split (tests split one set of processes repeatedly)
    _SPLITS += 1
    T = world - rollout_ranks
    role = "train" if rank < T else "rollout"
    role_rank, size = (rank, T) if role == "train" else (rank - T, rollout_ranks)
    dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"),
                            store=dist.PrefixStore(f"{prefix}/{role}", store), rank=role_rank, world_size=size,
                            timeout=pg_timeout)
    return Split(role, rank, T, rollout_ranks, dist.PrefixStore(f"{prefix}/bridge", store), float(timeout_s))


# ---------------------------------------------------------------------------------------------------- control plane
class Heartbeat:
    """A daemon thread that bumps ``hb/<name>`` on the store every :data:`HEARTBEAT_S` seconds."""

    def __init__(self, store, name: str):
        self.store, self.key = store, f"hb/{name}"
        self.store.add(self.key, 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"meml-heartbeat-{name}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.store.add(self.key, 1)
            except Exception:  # the store went away: the job is ending (or its host died; the peers notice)
                return

    def stop(self) -> None:
        self._stop.set()


class Control:
    """Store keys between the worlds. ``wait`` polls (``store.check``: a store-side ``wait`` with a timeout logs a
    socket warning on every expiry) with a back-off from 10 to 200 ms, and raises :class:`AsyncRolloutError` on a
    posted failure, on a silent watched heartbeat, or at the deadline."""

    def __init__(self, split: Split, watch: Sequence[str] = ()):
        self.split, self.store = split, split.store
        self.dead_after = min(split.timeout_s, DEAD_AFTER_S)
        self._seen: Dict[str, Tuple[int, float]] = {n: (-1, time.monotonic()) for n in watch}

    def post(self, key: str, obj: Any) -> None:
        self.store.set(key, pickle.dumps(obj))

    def fail(self, message: str) -> None:
        """Tell every rank of both worlds to stop (best effort: the store may be gone)."""
        try:
            if not self.store.check(["failed"]):
                self.store.set("failed", f"{self.split.name} (global rank {self.split.rank}): {message}")
        except Exception:
            pass

    def _check_peers(self, what: str) -> None:
        if self.store.check(["failed"]):
            raise AsyncRolloutError(f"async RIEL: stopping while {what}: {self.store.get('failed').decode()}")
        now = time.monotonic()
        for name, (count, since) in self._seen.items():
            c = self.store.add(f"hb/{name}", 0)
            if c != count:
                self._seen[name] = (c, now)
            elif now - since > self.dead_after:
                status = self.status(name)
                raise AsyncRolloutError(
                    f"async RIEL: {name} sent no heartbeat for {now - since:.0f}s while {what} (killed or stopped "
                    f"process; limit min(riel.rollout_timeout_s, {DEAD_AFTER_S:.0f}s) = {self.dead_after:.0f}s); "
                    f"its last status: {status!r}")

    def status(self, name: str) -> str:
        key = f"status/{name}"
        return self.store.get(key).decode() if self.store.check([key]) else "none posted"

    def set_status(self, text: str) -> None:
        self.store.set(f"status/{self.split.name}", text)

    def wait(self, key: str, what: str, deadline_s: Optional[float] = None,
             hint: Callable[[], str] = lambda: "") -> Any:
        """The object posted under ``key`` once it is there (``hint()`` is appended to a deadline error)."""
        t0 = time.monotonic()
        pause = 0.01
        self._check_peers(what)  # also when the key is already there: a peer may have failed after posting it
        while not self.store.check([key]):
            self._check_peers(what)
            waited = time.monotonic() - t0
            if deadline_s is not None and waited > deadline_s:
                raise AsyncRolloutError(f"async RIEL: {what}: nothing after {waited:.0f}s "
                                        f"(riel.rollout_timeout_s={self.split.timeout_s:g}){hint()}")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.2)
        return pickle.loads(self.store.get(key))


# ------------------------------------------------------------------------------------------------------ the bridge
RENDEZVOUS_TIMEOUT = datetime.timedelta(seconds=120)


def _group(store, name: str, rank: int, size: int, timeout: datetime.timedelta, nccl: bool):
    prefixed = dist.PrefixStore(name, store)
    if nccl:
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, size, opts)
    # the rendezvous waits for every member to start (seconds apart on a loaded machine); the transfers then use
    # riel.rollout_timeout_s
    pg = dist.ProcessGroupGloo(prefixed, rank, size, max(timeout, RENDEZVOUS_TIMEOUT))
    if hasattr(pg, "set_timeout"):
        pg.set_timeout(timeout)
    return pg


class Bridge:
    """The two bridge groups of this process (None where it is not a member) and their transfers."""

    def __init__(self, split: Split):
        T, R = split.train_ranks, split.rollout_ranks
        self.split = split
        self.timeout = datetime.timedelta(seconds=split.timeout_s)
        self.nccl = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.nccl else torch.device("cpu")
        self.w_rank = 0 if split.rank == 0 else (1 + split.rank - T if split.is_rollout else None)
        self.r_rank = 1 + split.rank if split.is_train else (0 if split.rank == T else None)
        self.weights = (_group(split.store, "weights", self.w_rank, 1 + R, self.timeout, self.nccl)
                        if self.w_rank is not None else None)
        self.rollouts = (_group(split.store, "rollouts", self.r_rank, 1 + T, self.timeout, False)
                         if self.r_rank is not None else None)
        self._pending: List[Tuple[Any, torch.Tensor]] = []

    def _members(self, what: str) -> str:
        T, R = self.split.train_ranks, self.split.rollout_ranks
        if what.startswith("weight"):
            return f"train0 -> rollout0..rollout{R - 1}"
        return f"rollout0 -> train0..train{T - 1}"

    def _error(self, what: str, e: Exception) -> AsyncRolloutError:
        return AsyncRolloutError(f"async RIEL: {what} ({self._members(what)}) failed: a member died, hung past "
                                 f"riel.rollout_timeout_s={self.split.timeout_s:g} or stopped: {e}")

    def _broadcast(self, pg, tensor: torch.Tensor, root: int, what: str):
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor, opts.timeout = root, 0, self.timeout
        try:
            return pg.broadcast([tensor], opts)
        except RuntimeError as e:
            raise self._error(what, e) from e

    def _wait(self, work, what: str) -> None:
        try:
            work.wait()
        except RuntimeError as e:
            raise self._error(what, e) from e

    # rollouts: rollout rank 0 -> every training rank ----------------------------------------------------------
    def broadcast_rollouts(self, obj: Any = None) -> Any:
        """Collective over the rollouts group: rollout rank 0 passes ``obj``, training ranks get it."""
        root = self.r_rank == 0
        if root:
            data = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
            n = torch.tensor([data.numel()], dtype=torch.int64)
        else:
            n = torch.zeros(1, dtype=torch.int64)
        self._wait(self._broadcast(self.rollouts, n, 0, "rollout size broadcast"), "rollout size broadcast")
        if not root:
            data = torch.empty(int(n.item()), dtype=torch.uint8)
        self._wait(self._broadcast(self.rollouts, data, 0, "rollout broadcast"), "rollout broadcast")
        return obj if root else pickle.loads(data.numpy().tobytes())

    # weights: training rank 0 -> every rollout rank -------------------------------------------------------------
    @staticmethod
    def buckets(manifest: Sequence[Tuple[str, Tuple[int, ...]]]) -> List[List[int]]:
        """Manifest indices cut into consecutive buckets of at most :data:`BUCKET_NUMEL` elements (a larger tensor
        is a bucket of its own)."""
        out: List[List[int]] = []
        size = 0
        for i, (_, shape) in enumerate(manifest):
            n = int(torch.Size(shape).numel())
            if out and size + n <= BUCKET_NUMEL:
                out[-1].append(i)
                size += n
            else:
                out.append([i])
                size = n
        return out

    def send_weights(self, full: Dict[str, torch.Tensor]) -> List[Tuple[str, Tuple[int, ...]]]:
        """Training rank 0: start broadcasting the full fp32 tensors (sorted by name, in buckets); returns the
        manifest the rollout ranks need to receive them. The transfer runs in the background until
        :meth:`wait_sent` (the caller may train meanwhile: the buckets are copies)."""
        self.wait_sent()
        manifest = [(k, tuple(full[k].shape)) for k in sorted(full)]
        for idx in self.buckets(manifest):
            flat = torch.cat([full[manifest[i][0]].reshape(-1).float() for i in idx]).to(self.device)
            self._pending.append((self._broadcast(self.weights, flat, 0, "weight broadcast"), flat))
        return manifest

    def wait_sent(self) -> None:
        pending, self._pending = self._pending, []
        for work, _ in pending:
            self._wait(work, "weight broadcast")

    def recv_weights(self, manifest: Sequence[Tuple[str, Tuple[int, ...]]]) -> Dict[str, torch.Tensor]:
        """Rollout ranks: the full tensors of :meth:`send_weights` (CPU fp32, keyed by global name)."""
        out: Dict[str, torch.Tensor] = {}
        for idx in self.buckets(manifest):
            shapes = [torch.Size(manifest[i][1]) for i in idx]
            flat = torch.empty(sum(s.numel() for s in shapes), dtype=torch.float32, device=self.device)
            self._wait(self._broadcast(self.weights, flat, 0, "weight broadcast"), "weight broadcast")
            flat = flat.cpu()
            for i, part in zip(idx, flat.split([s.numel() for s in shapes])):
                out[manifest[i][0]] = part.view(manifest[i][1])
        return out

    def close(self) -> None:
        self.wait_sent()
        self.weights = self.rollouts = None
