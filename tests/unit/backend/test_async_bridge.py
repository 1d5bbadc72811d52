"""The control plane of async RIEL (backend/async_bridge.py) in one process, on a real TCPStore: deadlines,
failure notices and heartbeat silence each stop a wait with an error naming the rank; weight buckets."""
import datetime
import time

import pytest
import torch.distributed as dist

from megatron_meml.stages import async_bridge as B
from megatron_meml.backend.runtime.parallel import free_port


@pytest.fixture
def store():
    return dist.TCPStore("127.0.0.1", free_port(), 1, True, timeout=datetime.timedelta(seconds=10))


def _split(store, timeout_s=30.0, rank=0):
    return B.Split("train" if rank < 2 else "rollout", rank, 2, 1, dist.PrefixStore("t", store), timeout_s)


def test_wait_returns_the_posted_object(store):
    c = B.Control(_split(store))
    c.post("ready/3", {"seconds": 1.5})
    assert c.wait("ready/3", "waiting") == {"seconds": 1.5}


def test_deadline_names_the_key_the_timeout_and_the_hint(store):
    c = B.Control(_split(store, timeout_s=0.3))
    t0 = time.monotonic()
    with pytest.raises(B.AsyncRolloutError, match=r"rollouts of step 4: nothing after 0s \(riel.rollout_timeout_s=0.3\)"
                                                  r"; rollout0: 'generating'"):
        c.wait("ready/4", "waiting for the rollouts of step 4", deadline_s=0.3, hint=lambda: "; rollout0: 'generating'")
    assert time.monotonic() - t0 < 2.0


def test_a_posted_failure_stops_every_waiter(store):
    mine, other = B.Control(_split(store, rank=2)), B.Control(_split(store, rank=0))
    mine.fail("ValueError: boom")
    mine.fail("second notice is ignored")
    with pytest.raises(B.AsyncRolloutError, match=r"stopping while waiting for command 0: rollout0 \(global rank 2\): "
                                                  r"ValueError: boom"):
        other.wait("cmd/0", "waiting for command 0")


def test_silent_heartbeat_is_detected_and_named(store, monkeypatch):
    monkeypatch.setattr(B, "HEARTBEAT_S", 0.05)
    split = _split(store, timeout_s=0.5)
    hb = B.Heartbeat(split.store, "rollout0")
    c = B.Control(split, watch=["rollout0"])
    c.set_status("generating step 1")
    with pytest.raises(B.AsyncRolloutError):  # the key never comes; a live heartbeat only hits the deadline
        c.wait("never", "waiting", deadline_s=0.8)
    hb.stop()  # a killed or SIGSTOPped rank: its counter stops moving
    time.sleep(0.1)
    c2 = B.Control(split, watch=["rollout0"])
    dist.PrefixStore("t", store).set("status/rollout0", "generating step 7")
    with pytest.raises(B.AsyncRolloutError, match=r"rollout0 sent no heartbeat for \d+s while waiting .* last status: "
                                                  r"'generating step 7'"):
        c2.wait("never", "waiting")  # no deadline: only the heartbeat can end it


def test_split_world_needs_a_training_rank():
    with pytest.raises(ValueError, match="riel.rollout_ranks"):
        B.split_world(1, 10.0)  # a single process: nothing left to train


def test_buckets_cover_the_manifest_in_order(monkeypatch):
    monkeypatch.setattr(B, "BUCKET_NUMEL", 100)
    manifest = [("a", (10, 5)), ("b", (40,)), ("c", (300,)), ("d", (7,)), ("e", (2, 2))]
    assert B.Bridge.buckets(manifest) == [[0, 1], [2], [3, 4]]
