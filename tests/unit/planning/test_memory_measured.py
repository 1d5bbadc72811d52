"""The planner's parameter / gradient / optimizer memory against what megatron-core actually allocates on the CPU.

Each case builds a small model with ``backend.train.model.build_model`` + ``backend.train.optimizer.build_optimizer``
in fresh
processes (tests/distributed/launcher.spawn), takes one optimizer step and sums the storage bytes of (a) the
parameters, (b) the DDP grad buffers, (c) the optimizer's own tensors (fp32 main params, Adam moments), and (d) every
live tensor storage the garbage collector can reach (the whole static state after the step, activations freed).
Storage sums are exact and deterministic; an RSS delta would mix in allocator caching, the Python heap and
megatron's import-time tensors, so it is not used. The planner must agree within 10% with (d) and with each part.
Measured on this machine (B/param): fp32 4 + 4 + 8; bf16 2 + 4 + 12; bf16 with DP=2 2 + 4 + 6 per rank.
"""
import pytest

from megatron_meml.config import load_config
from megatron_meml.planning import Layout, ModelShape, Workload, params_per_gpu, state_bytes
from tests.distributed.launcher import spawn

SMALL = ["model.num_layers=4", "model.hidden_size=256", "model.ffn_hidden_size=704", "model.num_attention_heads=8",
         "model.num_query_groups=2", "model.vocab_size=2048", "data.seq_length=64", "data.micro_batch_size=2",
         "data.global_batch_size=4"]


CASES = {  # id -> (world size, overrides)
    "fp32": (1, ["precision.dtype=fp32"]),
    "bf16": (1, ["precision.dtype=bf16"]),
    "bf16-dp2": (2, ["precision.dtype=bf16"]),                                         # optimizer state halves
    "bf16-tp2": (2, ["precision.dtype=bf16", "parallel.tensor_model_parallel_size=2"]),
    "bf16-pp2-tied": (2, ["precision.dtype=bf16", "parallel.pipeline_model_parallel_size=2",
                          "model.tie_word_embeddings=true"]),                         # both ends hold the embedding
}


@pytest.fixture(scope="module")
def measured():
    """Two spawns (one per world size), the cases of each measured one after the other in the same processes."""
    out = {}
    for world in (1, 2):
        ids = [k for k, (w, _) in CASES.items() if w == world]
        per_rank = spawn("tests.unit.planning.workers:measure_many", world,
                         cases=[SMALL + CASES[k][1] for k in ids])
        for i, k in enumerate(ids):
            out[k] = [rank[i] for rank in per_rank]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_planner_state_memory_matches_megatron(case, measured):
    world, extra = CASES[case]
    overrides = SMALL + extra
    cfg = load_config(None, overrides)
    tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
    layout = Layout(tp=tp, pp=pp, dp=world // (tp * pp))
    shape, work = ModelShape.from_config(cfg, tp), Workload.from_config(cfg)
    predicted = state_bytes(shape, layout, work)
    # the most loaded rank is what the planner predicts (all ranks are equal except with PP)
    m = max(measured[case], key=lambda r: r["live_bytes"])
    assert m["updated"]
    assert m["params"] == params_per_gpu(shape, layout)
    for key, got in (("params", m["param_bytes"]), ("grads", m["grad_bytes"]), ("optimizer", m["optimizer_bytes"])):
        assert abs(predicted[key] - got) <= 0.10 * got, (key, predicted[key], got)
    total = sum(predicted.values())
    assert abs(total - m["live_bytes"]) <= 0.10 * m["live_bytes"], (total, m)
