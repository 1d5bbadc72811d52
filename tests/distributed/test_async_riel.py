"""One-step-off asynchronous RIEL on gloo (3 processes, every phase in one spawn: ``async_workers.all_phases``):
async off is today's loop bit for bit; the weight hand-off is exact across TP layouts (train TP2 -> rollout TP1,
train TP1 -> rollout TP2); a stale step evaluates the documented objective (``algo/async_objective.py``) by hand;
resuming from a checkpoint reproduces the later steps exactly; a hung rollout rank stops the run in time."""
import re

import pytest
import torch

from .launcher import spawn


@pytest.fixture(scope="module")
def phases(tmp_path_factory):
    res = spawn("tests.distributed.async_workers:all_phases", 3, tmp=str(tmp_path_factory.mktemp("async")))
    return {name: [r[i] for r in res] for i, name in enumerate(["sync", "h21", "h12", "async", "resume", "hang", "keys"])}


def test_async_off_is_todays_loop_bit_for_bit(phases):
    r0 = phases["sync"][0]
    assert all(r["async_used"] == [False] for r in phases["sync"])  # no rollout link, no async metrics
    assert r0["logged"] == r0["plain"]  # loss and grad norm of both steps, exactly
    assert r0["weights_equal"]


@pytest.mark.parametrize("phase", ["h21", "h12"])
def test_weight_handoff_exact_across_tp_layouts(phases, phase):
    """h21: training TP=2 (ranks 0-1) -> rollout TP=1 (rank 2); h12: training TP=1 (rank 0) -> rollout TP=2
    (ranks 1-2). The rollout side's full state dict equals the trainer's bit for bit, and it generates the
    trainer's own rollouts from them."""
    ranks = phases[phase]
    train = ranks[0]
    rollout = next(r for r in ranks if r["role"] == "rollout" and r["full"] is not None)
    assert sorted(train["full"]) == sorted(rollout["full"])
    for k, v in train["full"].items():
        assert torch.equal(v, rollout["full"][k]), k
    assert rollout["served"] == 1 and train["version"] == 7
    assert [ids for ids, _ in train["remote"]] == [ids for ids, _ in train["local"]]
    err = max(abs(a - b) for (_, la), (_, lb) in zip(train["remote"], train["local"]) for a, b in zip(la, lb))
    assert err < 1e-4


def test_stale_step_is_the_documented_objective(phases):
    """Step 1 trains on rollouts generated with W_0 while its weights are W_1: the behaviour log-probs are W_0's,
    the loss is sum(-w A) + KL(refreshed P+ teacher) + SFT recomputed by hand, and the KL teacher is W_1's."""
    checks = [r["check"] for r in phases["async"] if r["role"] == "train"]
    assert len(checks) == 2
    for c in checks:  # each DP rank's own microbatches
        assert c["kernel"] == pytest.approx(c["hand"], rel=1e-5, abs=1e-6)
        if c["grpo_tokens"]:
            assert c["behaviour_vs_w0"] < 1e-4   # the rollouts of step 1 came from W_0 ...
            assert c["behaviour_vs_current"] > 1e-3  # ... which differ from W_1: the staleness is real
    assert sum(c["grpo_tokens"] for c in checks) > 0
    c = checks[0]
    assert c["kl_pairs"] > 0
    assert c["teacher_vs_current"] < 1e-4 and c["rollout_p_plus_vs_current"] > 1e-3
    m = phases["async"][0]["metrics"]
    assert [m[s]["async/staleness"] for s in range(4)] == [0.0, 1.0, 1.0, 1.0]
    assert [m[s]["async/behavior_version"] for s in range(4)] == [0.0, 0.0, 1.0, 2.0]


def test_resume_reproduces_later_steps_exactly(phases):
    ref, got = phases["async"][0]["metrics"], phases["resume"][0]["metrics"]
    assert sorted(got) == [2, 3]
    for s in (2, 3):
        for k in ("loss", "grad_norm", "reward/mean", "tokens/grpo", "tokens/kl", "buffer/size", "sft/fired",
                  "async/weight", "loss/kl"):
            assert got[s][k] == ref[s][k], (s, k, got[s][k], ref[s][k])
    assert any(ref[s]["tokens/kl"] > 0 for s in (2, 3)) and any(ref[s]["count/grpo"] > 0 for s in (2, 3))


def test_sync_and_async_log_the_same_metrics(phases):
    """One step core (stages/riel_core.py): on the same config both modes log the same RIEL metric keys at every
    step, apart from the documented mode-only keys, and write the same summary fields."""
    from megatron_meml.stages.riel_core import ASYNC_ONLY_PREFIXES, SYNC_ONLY_KEYS

    sync, asyn = phases["sync"][0]["keys"], phases["keys"][0]
    assert sorted(sync["keys"]) == sorted(asyn["keys"]) == [0, 1]
    for step in (0, 1):
        s = set(sync["keys"][step]) - SYNC_ONLY_KEYS
        a = {k for k in asyn["keys"][step] if not k.startswith(ASYNC_ONLY_PREFIXES)}
        assert s == a, (step, sorted(s - a), sorted(a - s))
        assert SYNC_ONLY_KEYS <= set(sync["keys"][step])
        assert {"heldout/expert0", "heldout/oracle", "heldout/majority_vote", "grad_norm/grpo", "grad_norm/kl",
                "time/train", "time/step", "reward/mean"} <= a
    assert sync["summary"] == asyn["summary"]
    assert {"riel_steps", "reward_first10", "reward_last10"} <= set(sync["summary"])


def test_hung_rollout_rank_stops_the_run_within_the_timeout(phases):
    train = [r for r in phases["hang"] if r["role"] == "train"]
    rollout = [r for r in phases["hang"] if r["role"] == "rollout"]
    for r in train:
        assert r["error"] is not None and "rollouts of step 1" in r["error"]
        assert "generating step 1" in r["error"] and "riel.rollout_timeout_s=2" in r["error"]
        waited = float(re.search(r"nothing after (\d+)s", r["error"]).group(1))
        assert 2 <= waited <= 4
    assert rollout[0]["error"] is not None and "stopping while" in rollout[0]["error"]
