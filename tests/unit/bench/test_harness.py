"""megatron_meml.bench.harness: the interleaving order, warm-up rounds left out, the work count, per-round paired
ratios and their median, the pooled ratio; and the one peak-memory reader it uses (backend/runtime/memory.py)."""
import pytest
import torch

from megatron_meml.backend.runtime import memory
from megatron_meml.bench import harness
from megatron_meml.bench.harness import Rounds, interleaved


def test_interleaved_order_warmup_work_and_before():
    calls, before = [], []
    variants = {"a": lambda: calls.append("a") or 10, "b": lambda: calls.append("b") or 20,
                "c": lambda: calls.append("c")}
    r = interleaved(variants, rounds=3, warmup=1, alternate=True, before=before.append)
    # warm-up in order, then recorded rounds: in order, reversed, in order
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["c", "b", "a"] + ["a", "b", "c"]
    assert before == calls
    assert r.rounds == 3 and r.work == {"a": [10.0] * 3, "b": [20.0] * 3, "c": [1.0] * 3}  # None counts as 1
    assert all(s >= 0 for v in r.seconds.values() for s in v)
    assert r.last == {"a": 10, "b": 20, "c": None}


def test_interleaved_without_alternation_and_custom_work():
    calls = []
    r = interleaved({"x": lambda: calls.append("x") or "out-x", "y": lambda: calls.append("y") or "out-y"},
                    rounds=2, warmup=0, work=lambda name, res: len(res) * (2 if name == "y" else 1))
    assert calls == ["x", "y", "x", "y"]
    assert r.work == {"x": [5.0, 5.0], "y": [10.0, 10.0]}


def test_paired_ratios_headline_and_pooled():
    # round 2 is disturbed for both variants alike: its paired ratio stays 2, the rates do not
    r = Rounds(["base", "fast"], work={"base": [100, 100, 100], "fast": [100, 100, 100]},
               seconds={"base": [1.0, 4.0, 1.0], "fast": [0.5, 2.0, 0.4]})
    assert r.rates("base") == [100.0, 25.0, 100.0]
    assert r.paired("fast", "base") == pytest.approx([2.0, 2.0, 2.5])
    assert r.headline("fast", "base") == pytest.approx(2.0)                   # median of the paired ratios
    assert r.best_over_best("fast", "base") == pytest.approx(250.0 / 100.0)
    assert r.sum_ratio("fast", "base") == pytest.approx((300 / 2.9) / (300 / 6.0))
    line = harness.headline_line(r, "base", ["fast"], threads=2)
    assert line == "headline (torch threads 2, median paired ratio over 3 interleaved rounds, each / base): fast 2.000"
    assert harness.median_paired([(2.0, 1.0), (3.0, 1.0), (10.0, 1.0)]) == pytest.approx(3.0)


def test_set_threads_zero_keeps_the_default():
    n = torch.get_num_threads()
    assert harness.set_threads(0) == n
    try:
        assert harness.set_threads(1) == 1
    finally:
        torch.set_num_threads(n)


def test_peak_memory_sees_a_fresh_allocation():
    """After a reset, touching 256 MiB raises the peak by about that much (CPU: VmHWM)."""
    if torch.cuda.is_available():
        pytest.skip("the CPU reader is checked here; CUDA peaks are torch's own max_memory_allocated")
    if not harness.reset_peak():
        pytest.skip("this kernel does not let the process reset VmHWM (/proc/self/clear_refs not writable)")
    before = memory.proc_status_bytes("VmRSS")
    x = torch.ones(64 * 2 ** 20, dtype=torch.float32)   # 256 MiB, written, so resident
    grown = harness.peak_bytes() - before
    del x
    assert grown >= 200 * 2 ** 20, grown
    assert memory.cpu_peak_rss_bytes() == pytest.approx(harness.peak_bytes(), rel=0.05)
