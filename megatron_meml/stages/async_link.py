"""The one-step-off protocol between training ranks and rollout ranks (transport and failure detection:
``stages/async_bridge.py``; the loop that uses it: ``stages/riel_async.py``).

Timeline (``T_s`` = training step s, ``G_s(v)`` = generating the rollouts ``R_s`` of step s with the weights
``W_v`` after v optimizer steps)::

    train:    request(W_0; 0, 1) | recv R_0 | T_0       | recv R_1 | request(W_1; 2) | T_1       | recv R_2 | ...
    rollout:  load W_0 | G_0(0)  | G_1(0) (overlaps T_0) | load W_1 | G_2(1) (overlaps T_1)       | load W_2 | ...

so ``R_s`` comes from ``W_{max(s-1, 0)}``: exactly one step stale after step 0. The training ranks never wait for
a weight transfer (it is sent in the background while ``T_{s}`` runs); they wait for ``R_{s+1}`` only when
generating it took longer than training step s.

Commands, posted by training rank 0 under ``cmd/<n>`` (n = 0, 1, ...) and executed in order by every rollout rank:

    {"op": "run", "version": v, "manifest": [(name, shape), ...] | None, "steps": [s, ...]}
        receive W_v when a manifest is given (bridge weight broadcast, then ``state.load_full_state_dict`` into
        this rank's TP shards), then generate R_s for each listed step, in order
    {"op": "stop"}

Handing over ``R_s``: rollout rank 0 posts ``ready/<s>`` (its generation stats) when ``R_s`` is generated,
training rank 0 posts ``want/<s>`` when the training ranks start receiving; both then enter the rollouts-group
broadcast, which therefore never waits on a peer that is still busy. Rollout ranks post ``status/<name>`` at each
phase (quoted in timeout errors) and ``bye/<k>`` when they stop; training rank 0 waits for the byes before its
process (which hosts the store) may exit.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..backend.train import state as bstate
from ..types import Rollout
from .async_bridge import AsyncRolloutError, Bridge, Control, Heartbeat, Split

GenerateFn = Callable[[int], Tuple[List[Rollout], Dict[str, float]]]


class RolloutClient:
    """The training ranks' side. Every training rank builds one; rank 0 posts the commands and sends the weights,
    every rank receives the rollouts (each needs the whole step: the scheduler is replicated)."""

    def __init__(self, split: Split, bridge: Bridge, heartbeat: Heartbeat, chunks: Sequence[torch.nn.Module],
                 num_layers: int):
        self.split, self.bridge, self.heartbeat = split, bridge, heartbeat
        self.chunks, self.num_layers = list(chunks), int(num_layers)
        self.leader = split.rank == 0
        watch = [f"rollout{k}" for k in range(split.rollout_ranks)] if self.leader else []
        self.control = Control(split, watch=watch)
        self.commands = 0
        self.closed = False

    def _post(self, cmd: Dict[str, Any]) -> None:
        if self.leader:
            self.control.post(f"cmd/{self.commands}", cmd)
        self.commands += 1

    def request(self, steps: Sequence[int], version: int) -> float:
        """Send the current weights as ``W_version`` and have the rollout ranks generate ``steps`` with them.
        Collective over the training world (the layout-invariant gather of ``state.full_state_dict``); returns the
        seconds this rank spent (gather + enqueueing the broadcast; the transfer itself runs in the background)."""
        t0 = time.perf_counter()
        full = bstate.full_state_dict(self.chunks, self.num_layers, dst=0)
        manifest = self.bridge.send_weights(full) if self.leader else None
        self._post({"op": "run", "version": int(version), "manifest": manifest, "steps": [int(s) for s in steps]})
        return time.perf_counter() - t0

    def receive(self, step: int) -> Dict[str, Any]:
        """The rollouts of ``step``: ``{"step", "rollouts", "stats", "wait_s"}``. Collective over the training
        world; raises :class:`AsyncRolloutError` after ``riel.rollout_timeout_s`` without them."""
        t0 = time.perf_counter()
        if self.leader:
            self.control.post(f"want/{step}", True)
        self.control.wait(f"ready/{step}", f"waiting for the rollouts of step {step}",
                          deadline_s=self.split.timeout_s, hint=self._rollout_status)
        payload = self.bridge.broadcast_rollouts()
        if payload["step"] != step:
            raise AsyncRolloutError(f"async RIEL: expected the rollouts of step {step}, got step {payload['step']}")
        payload["wait_s"] = time.perf_counter() - t0
        return payload

    def _rollout_status(self) -> str:
        names = [f"rollout{k}" for k in range(self.split.rollout_ranks)]
        return "; rollout ranks: " + ", ".join(f"{n}: {self.control.status(n)!r}" for n in names) + \
            " (a rollout rank hung: generation, or a collective inside the rollout world)"

    def fail(self, message: str) -> None:
        self.control.fail(message)

    def close(self, wait_s: float = 60.0, quiet: bool = False) -> None:
        """Stop the rollout ranks (idempotent). Rank 0 waits up to ``wait_s`` for their goodbyes. ``quiet``: on an
        error path, a failing transfer or store is ignored (the error being raised says more)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.bridge.wait_sent()
            self._post({"op": "stop"})
            if self.leader and not self.split.store.check(["failed"]):
                t0 = time.monotonic()
                keys = [f"bye/{k}" for k in range(self.split.rollout_ranks)]
                while not self.split.store.check(keys) and time.monotonic() - t0 < wait_s:
                    time.sleep(0.05)
        except Exception:
            if not quiet:
                raise
        finally:
            self.heartbeat.stop()
            self.bridge.close()


class RolloutServer:
    """The rollout ranks' side: executes the commands of training rank 0 until it says stop.

    ``generate(step)`` is a collective over the rollout world that returns every rollout of the step (each rollout
    rank gets all of them) and its stats; the engine behind it is whatever ``rollout.engine`` builds."""

    def __init__(self, split: Split, bridge: Bridge, heartbeat: Heartbeat, chunks: Sequence[torch.nn.Module],
                 num_layers: int, generate: GenerateFn):
        self.split, self.bridge, self.heartbeat = split, bridge, heartbeat
        self.chunks, self.num_layers = list(chunks), int(num_layers)
        self.generate = generate
        self.leader = split.role_rank == 0
        self.control = Control(split, watch=["train0"] if self.leader else [])
        self.version: Optional[int] = None
        self.steps_served = 0

    def _status(self, text: str) -> None:
        self.control.set_status(text)

    def close(self, quiet: bool = False) -> None:
        """Stop the heartbeat and drop the bridge (idempotent; :meth:`serve` does it when it returns). ``quiet`` is
        accepted for symmetry with the training side's close (nothing here can fail loudly)."""
        self.heartbeat.stop()
        self.bridge.close()

    def serve(self) -> int:
        """Run until the stop command; returns the number of steps generated."""
        n = 0
        try:
            while True:
                self._status(f"waiting for command {n}")
                cmd = self.control.wait(f"cmd/{n}", f"waiting for command {n} from train0")
                n += 1
                if cmd["op"] == "stop":
                    break
                if cmd["manifest"] is not None:
                    self._status(f"receiving weights v{cmd['version']}")
                    t0 = time.perf_counter()
                    full = self.bridge.recv_weights(cmd["manifest"])
                    bstate.load_full_state_dict(self.chunks, full, self.num_layers)
                    self.version, load_s = cmd["version"], time.perf_counter() - t0
                else:
                    load_s = 0.0
                for step in cmd["steps"]:
                    self._status(f"generating step {step} (weights v{self.version})")
                    rollouts, stats = self.generate(step)
                    stats = dict(stats, version=float(self.version), weights_s=load_s)
                    load_s = 0.0
                    self.steps_served += 1
                    if self.leader:
                        self._status(f"handing over step {step}")
                        self.control.post(f"ready/{step}", stats)
                        self.control.wait(f"want/{step}", f"waiting for train0 to take the rollouts of step {step}")
                        self.bridge.broadcast_rollouts({"step": step, "rollouts": rollouts, "stats": stats})
        except BaseException as e:
            self.control.fail(f"{type(e).__name__}: {e}")
            raise
        finally:
            try:
                self.split.store.set(f"bye/{self.split.role_rank}", b"1")
            except Exception:
                pass
            self.heartbeat.stop()
            self.bridge.close()
        return self.steps_served
