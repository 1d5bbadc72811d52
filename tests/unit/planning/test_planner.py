"""megatron_meml.planning: hand-computed memory terms, the step-time model's direction, layout enumeration."""
import math

import pytest

from megatron_meml.planning import (FUSED_BWD_CHUNK_BYTES, GiB, Hardware, Layout, ModelShape, Workload,
                                    activation_bytes, best_plan, candidate_layouts, evaluate, kv_cache_bytes,
                                    layout_errors, logits_bytes, params_per_gpu, rank_plans, rollout_seconds,
                                    state_bytes, train_seconds)

# Qwen2.5-7B-shaped
SHAPE = ModelShape(layers=28, hidden=3584, ffn=18944, heads=28, groups=4, head_dim=128, vocab=152064, tied=False,
                   qkv_bias=True)
WORK = Workload(seq_length=1536, micro_batch_size=2, rollouts=1536, train_sequences=1792, prompt_tokens=512,
                new_tokens=1024, token_budget=262144)


def test_parameter_count_by_hand():
    h, f, q, kv = 3584, 18944, 28 * 128, 4 * 128
    layer = h * (q + 2 * kv) + (q + 2 * kv) + q * h + 3 * h * f
    assert SHAPE.layer_sharded() == layer
    assert SHAPE.params() == 28 * (layer + 2 * h) + 2 * 152064 * h + h == 7_615_616_512


def test_params_per_gpu_splits_layers_tp_and_pipeline_ends():
    one = params_per_gpu(SHAPE, Layout(1, 1, 8))
    assert one == SHAPE.params()
    tp2 = params_per_gpu(SHAPE, Layout(2, 1, 4))
    assert tp2 == 28 * (SHAPE.layer_sharded() // 2 + 2 * 3584) + 2 * 152064 * 3584 // 2 + 3584
    pp2 = params_per_gpu(SHAPE, Layout(1, 2, 4))
    body = 14 * (SHAPE.layer_sharded() + 2 * 3584)
    assert pp2 == body + 152064 * 3584 + 3584  # the last stage: output layer + final norm
    tied = ModelShape(**{**SHAPE.__dict__, "tied": True})
    # tied with PP=1: one matrix; with PP>1 the last stage keeps its own copy of the embedding
    assert params_per_gpu(tied, Layout(1, 1, 1)) == tied.params()
    assert params_per_gpu(tied, Layout(1, 2, 1)) == body + 152064 * 3584 + 3584


@pytest.mark.parametrize("dtype, dist, dp, per_param", [
    ("bf16", True, 1, 2 + 4 + 12), ("bf16", True, 4, 2 + 4 + 3), ("bf16", False, 4, 2 + 4 + 12),
    ("fp32", True, 2, 4 + 4 + 4)])
def test_state_bytes_per_parameter(dtype, dist, dp, per_param):
    w = Workload(**{**WORK.__dict__, "dtype": dtype, "distributed_optimizer": dist})
    lay = Layout(1, 1, dp)
    assert sum(state_bytes(SHAPE, lay, w).values()) == pytest.approx(per_param * SHAPE.params())


def test_activation_formula_and_recompute():
    lay = Layout(2, 1, 4, recompute=False, sequence_parallel=True)
    s, b, h, q, kv, f = 1536, 2, 3584, 3584, 512, 18944
    per_layer = s * b * 2 * (4 * h / 2 + (2 * q + 2 * kv + 3 * f) / 2)
    assert activation_bytes(SHAPE, lay, WORK) == pytest.approx(28 * per_layer)
    rc = Layout(2, 1, 4, recompute=True, sequence_parallel=True)
    assert activation_bytes(SHAPE, rc, WORK) == pytest.approx(28 * s * b * 2 * h / 2 + per_layer)
    no_sp = Layout(2, 1, 4, recompute=False, sequence_parallel=False)
    assert activation_bytes(SHAPE, no_sp, WORK) > activation_bytes(SHAPE, lay, WORK)
    # 1F1B: the first of 4 stages holds 4 microbatches in flight through 7 layers = the same 28 layer-microbatches
    pp4 = Layout(1, 4, 2)
    assert activation_bytes(SHAPE, pp4, WORK) == pytest.approx(activation_bytes(SHAPE, Layout(1, 1, 8), WORK))


def test_kv_cache_formula():
    # 2 (K, V) x 28 layers x 4 kv heads x 128 x 262144 tokens x 2 bytes, split over TP=2 (2 heads each)
    assert kv_cache_bytes(SHAPE, Layout(2, 1, 4), WORK) == 2 * 28 * 2 * 128 * 262144 * 2
    # TP beyond the KV heads replicates them (one head per GPU)
    assert kv_cache_bytes(SHAPE, Layout(8, 1, 1), WORK) == 2 * 28 * 1 * 128 * 262144 * 2


def test_time_model_directions():
    hw = Hardware()
    base = Layout(2, 1, 4)
    assert train_seconds(SHAPE, Layout(2, 1, 4, recompute=True), WORK, hw) > train_seconds(SHAPE, base, WORK, hw)
    assert train_seconds(SHAPE, Layout(2, 1, 8), WORK, hw) < train_seconds(SHAPE, base, WORK, hw)
    slow_hbm = Hardware(hbm_tbps=1.0)
    assert rollout_seconds(SHAPE, base, WORK, slow_hbm) > rollout_seconds(SHAPE, base, WORK, hw)
    # train FLOPs at MFU, by hand (TP=1, PP=1, DP=1: no communication): matmul weights (the layers without the qkv
    # bias, and the output layer; not the input embedding lookup), causal attention, the fused output layer's
    # recomputed logits
    tokens = 1792 * 1536
    h, f, q, kv, v = 3584, 18944, 28 * 128, 4 * 128, 152064
    n_mm = 28 * (h * (q + 2 * kv) + q * h + 3 * h * f) + v * h
    assert SHAPE.matmul_params() == n_mm
    flops = 6 * n_mm * tokens + 6 * 28 * 1536 * q * tokens + 2 * v * h * tokens
    assert train_seconds(SHAPE, Layout(1, 1, 1), WORK, hw) == pytest.approx(flops / (989e12 * hw.mfu))
    logits_path = Workload(**{**WORK.__dict__, "fused_output": False})
    assert train_seconds(SHAPE, Layout(1, 1, 1), logits_path, hw) == \
        pytest.approx((flops - 2 * v * h * tokens) / (989e12 * hw.mfu))


def test_layout_errors_and_candidates():
    assert layout_errors(SHAPE, Layout(8, 1, 1)) == ["TP=8 does not divide heads=28",
                                                     "TP=8 does not divide KV groups=4"]
    assert layout_errors(SHAPE, Layout(4, 2, 1)) == []
    assert "PP=3 does not divide layers=28" in layout_errors(SHAPE, Layout(1, 3, 1))
    lays = candidate_layouts(SHAPE, 8)
    assert all(lay.gpus == 8 and lay.tp <= 4 and 28 % lay.pp == 0 for lay in lays)
    assert {(lay.tp, lay.pp, lay.dp) for lay in lays} >= {(1, 1, 8), (2, 1, 4), (4, 1, 2), (1, 2, 4), (4, 2, 1)}


def test_ranking_puts_feasible_fastest_first_and_reports_no_fit():
    plans = rank_plans(SHAPE, WORK, 8)
    fits = [pl.fits for pl in plans]
    assert fits == sorted(fits, reverse=True)
    feasible = [pl for pl in plans if pl.fits]
    assert [pl.step_s for pl in feasible] == sorted(pl.step_s for pl in feasible)
    assert best_plan(SHAPE, WORK, 8).layout == feasible[0].layout
    assert best_plan(SHAPE, WORK, 1, Hardware(memory_gib=16)) is None


def test_peak_takes_the_larger_of_training_and_rollout():
    pl = evaluate(SHAPE, Layout(2, 1, 4), WORK)
    assert pl.peak == pytest.approx(pl.state_total + max(pl.activations + pl.logits, pl.kv_cache) + 4 * GiB)
    big_kv = Workload(**{**WORK.__dict__, "token_budget": 4 * 262144})
    pl2 = evaluate(SHAPE, Layout(2, 1, 4), big_kv)
    assert pl2.peak == pytest.approx(pl2.state_total + pl2.kv_cache + 4 * GiB) and math.isfinite(pl2.step_s)


def test_output_layer_memory_fused_vs_logits():
    """Fused: one Triton backward chunk (<= 512 MiB) + fp32 dhidden; logits path: bf16 logits + their gradient."""
    lay = Layout(2, 1, 4)
    tokens, v_local = 1536 * 2, 152064 / 2
    assert logits_bytes(SHAPE, lay, WORK) == pytest.approx(tokens * v_local * 2 + tokens * 3584 * 4)  # < 512 MiB
    big = Workload(**{**WORK.__dict__, "micro_batch_size": 8})
    assert logits_bytes(SHAPE, lay, big) == pytest.approx(FUSED_BWD_CHUNK_BYTES + 4 * tokens * 3584 * 4)
    logits_path = Workload(**{**WORK.__dict__, "fused_output": False})
    assert logits_bytes(SHAPE, lay, logits_path) == pytest.approx(2 * tokens * v_local * 2)


def test_local_layer_spec_has_no_sequence_parallel_and_more_activations():
    local = Workload(**{**WORK.__dict__, "layer_spec": "local"})
    assert not any(lay.layout.sequence_parallel for lay in rank_plans(SHAPE, local, 8))
    assert any(lay.layout.sequence_parallel for lay in rank_plans(SHAPE, WORK, 8))
    lay = Layout(2, 1, 4)
    assert activation_bytes(SHAPE, lay, local) > activation_bytes(SHAPE, lay, WORK)
    with pytest.raises(ValueError, match="layer_spec"):
        Workload(**{**WORK.__dict__, "layer_spec": "fast"})


def test_train_terms_by_hand_fp8_bubble_and_overlaps():
    """FP8 runs only the layers' GEMMs at the FP8 peak; VP divides the bubble; TP overlap hides what compute
    covers; DP collectives are hierarchical (NVLink inside a node, one 1/k shard per NIC between nodes)."""
    from megatron_meml.planning import dp_collective_seconds, train_flops_split, train_terms
    hw = Hardware()
    w8 = Workload(**{**WORK.__dict__, "fp8": True, "fused_output": False})
    f = train_flops_split(SHAPE, Layout(1, 1, 1), w8)
    assert f["out"] == 6 * 152064 * 3584 * 1792 * 1536
    t = train_terms(SHAPE, Layout(1, 1, 1), w8, hw)
    assert t["compute"] == pytest.approx((f["layers"] / 1979 + (f["attn"] + f["out"]) / 989) / (1e12 * hw.mfu))
    lay = Layout(2, 4, 1)
    m = train_terms(SHAPE, lay, WORK, hw)["microbatches"]
    assert train_terms(SHAPE, lay, WORK, hw)["bubble"] == pytest.approx(1 + 3 / m)
    assert train_terms(SHAPE, Layout(2, 4, 1, vp=7), WORK, hw)["bubble"] == pytest.approx(1 + 3 / (7 * m))
    plain = train_terms(SHAPE, Layout(2, 1, 4), WORK, hw)
    hidden = train_terms(SHAPE, Layout(2, 1, 4, tp_comm_overlap=True), WORK, hw)
    assert plain["tp_exposed"] == plain["tp_comm"] > 0 and hidden["tp_exposed"] == 0.0
    # DP 16 at TP 2: 4 ranks per node, 4 nodes
    n = 1e9
    assert dp_collective_seconds(n, Layout(2, 1, 16), hw) == pytest.approx(
        n * 3 / 4 / 300e9 + n / 4 * 3 / 4 / 40e9)
    assert dp_collective_seconds(n, Layout(1, 1, 8), hw) == pytest.approx(n * 7 / 8 / 300e9)   # one node
    assert dp_collective_seconds(n, Layout(8, 1, 1), hw) == 0.0
