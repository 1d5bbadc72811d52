"""The planner's activation, output-layer and FLOP terms against what megatron-core does on the CPU (the local layer
spec: torch RMSNorm, SDPA -- also what runs on a GPU image without Transformer Engine).

One spawned process builds small models (h=96, q=128, kv=64, f=200, a=4, V=1024 rows) and runs one SFT
forward-backward of 4 x 64 tokens each. Activations: the bytes of the distinct tensor storages autograd saves during
the forward (saved-tensor hooks; parameters excluded); the difference between a 2-layer and a 1-layer model is one
layer's A_layer. FLOPs: torch's FlopCounterMode over the whole forward + backward.
Measured (fp32): A_layer = 2222 elements per token at b=2/s=128 before RoPE tables were excluded; full recompute keeps
exactly h per token per layer; the logits path saves V per token more than the fused one.
"""
import pytest

from megatron_meml.config import load_config
from megatron_meml.planning import Layout, ModelShape, Workload, layer_activation_bytes
from tests.distributed.launcher import spawn
from tests.unit.planning.workers import ACT_SHAPE

B, S = 4, 64
CASES = {
    "l1": ["model.num_layers=1"], "l2": ["model.num_layers=2"],
    "l1-rc": ["model.num_layers=1", "model.recompute_activations=true"],
    "l2-rc": ["model.num_layers=2", "model.recompute_activations=true"],
    "l1-logits": ["model.num_layers=1", "model.fused_output=false"],
    "l2-unfused-attn": ["model.num_layers=2", "model.attention_impl=megatron"],
}


@pytest.fixture(scope="module")
def measured():
    return spawn("tests.unit.planning.workers:measure_activations", 1, cases=CASES, b=B, s=S)[0]


def _plan(case):
    cfg = load_config(None, ACT_SHAPE + CASES[case] + [f"data.seq_length={S}", f"data.micro_batch_size={B}"])
    work = Workload.from_config(cfg)
    work = Workload(**{**work.__dict__, "layer_spec": "local", "train_sequences": B})
    return ModelShape.from_config(cfg), work


def test_layer_activations_local_spec(measured):
    shape, work = _plan("l2")
    per_layer = measured["l2"]["saved"] - measured["l1"]["saved"]
    predicted = layer_activation_bytes(shape, Layout(1, 1, 1), work)
    rope_tables = 4 * S * shape.head_dim * 4   # cos / sin of q and k per layer, [s, d] fp32 each (not in the formula)
    assert per_layer - rope_tables == pytest.approx(predicted, rel=0.01), (per_layer, predicted)
    te = layer_activation_bytes(shape, Layout(1, 1, 1), Workload(**{**work.__dict__, "layer_spec": "te"}))
    assert per_layer > 1.25 * te  # why the local spec needs its own formula


def test_full_recompute_keeps_the_layer_input(measured):
    per_layer = measured["l2-rc"]["saved"] - measured["l1-rc"]["saved"]
    assert per_layer == B * S * 96 * 4


def test_logits_path_saves_the_logits(measured):
    shape, _ = _plan("l1")
    assert measured["l1-logits"]["saved"] - measured["l1"]["saved"] == pytest.approx(B * S * shape.vocab * 4, rel=0.01)


def test_matmul_flops(measured):
    """The logits path does 6·N_mm·T matmul FLOPs forward + backward (the planner's model FLOPs); megatron's unfused
    attention adds 12·L·s·q per token (non-causal QK^T and PV: twice the planner's causal 6·L·s·q). (The fused
    output layer's 8·V·h·T = 6 + 2 recomputed is not checked here: FlopCounterMode does not see its in-place
    addmm_ GEMMs.)"""
    one, _ = _plan("l1-logits")
    two, _ = _plan("l2")
    tokens = B * S
    assert measured["l1-logits"]["flops"] == pytest.approx(6 * one.matmul_params() * tokens, rel=1e-9)
    per_layer = measured["l2"]["flops"] - measured["l1"]["flops"]
    assert per_layer == pytest.approx(6 * (two.matmul_params() - one.matmul_params()) * tokens, rel=1e-9)
    attention = measured["l2-unfused-attn"]["flops"] - measured["l2"]["flops"]
    planner_attention = two.model_flops_per_token(S) * tokens - 6 * two.matmul_params() * tokens
    assert attention == pytest.approx(2 * planner_attention, rel=1e-9)
