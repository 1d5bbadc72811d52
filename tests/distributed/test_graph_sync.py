"""CUDA graphs at TP >= 2: what the continuous engine captures per decode bucket (``SlotModel._graph_body``) must
not force a host sync. Checked on the CPU at TP=2 (gloo, 2 processes) with a dispatch mode that records
sync-forcing ops (tests/distributed/sync_ops.py). megatron's ``VocabParallelEmbedding`` writes through boolean
masks (``index_put_`` with a bool index -> ``nonzero``): the slot model's sync-free embedding gives the same
logits with none."""
import torch

from .launcher import spawn


def test_tp2_decode_step_has_no_sync_ops_and_same_logits():
    ranks = spawn("tests.distributed.graph_workers:decode_step_sync_ops", 2, tp=2)
    for r in ranks:
        assert r["fast_layers"]
        before = [op for op, _ in r["megatron"]["ops"]]
        assert before and all("index_put" in op for op in before), r["megatron"]["ops"]   # the bug, still there
        assert r["sync_free"]["ops"] == [], r["sync_free"]["ops"]
        torch.testing.assert_close(r["sync_free"]["logits"], r["megatron"]["logits"], rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["sync_free"]["logits"], ranks[1]["sync_free"]["logits"], rtol=0, atol=0)
