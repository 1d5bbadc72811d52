"""The planner's training step time against published Megatron-core / NeMo pre-training runs on H100.

Sources (tokens/s/GPU is the measured quantity; step time = GBS · seq / (tokens/s/GPU · GPUs)):
  [N] NeMo Framework 24.09 performance summary, "Pretraining" table (FP8, NeMo 2.0 on Megatron-core; DGX-H100 --
      no system is named on that page, but its GPT3-175B 771 TFLOP/s/GPU is 39% of the H100's dense FP8 peak and
      NeMo's first B200 table came with 25.02):
      https://docs.nvidia.com/nemo-framework/user-guide/24.09/performance/performance_summary.html
      (the same rows are in the 24.12 page: .../user-guide/24.12/nemotoolkit/performance/performance_summary.html)
  [B] Megatron-Bridge performance summary archive, sections "26.02", "25.11" and "25.09 NeMo Container", System
      DGX-H100 (FP8): https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/main/docs/performance-summary-archive.md
      (rendered: https://docs.nvidia.com/nemo/megatron-bridge/latest/performance-summary-archive.html)
Every dense GPT / Llama row of those H100 tables without context parallelism or FSDP is here (the planner models
neither CP nor FSDP, so LLAMA3-8B/70B of [N] (CP 2), LLAMA3.1-405B (CP 2) and the FSDP LLAMA3_8B of [B] are left
out; MoE rows are out of its scope; the Nemotron rows of [N] use a squared-ReLU MLP and shapes this file does not
pin down). All of them are FP8 (TE, delayed / current scaling): NeMo publishes no BF16 dense H100 pre-training
table; the BF16 side rests on the owed GPU check (megatron_meml.gpu.scale_check's planner ratio).

How a published run maps onto the planner (``published_plan``): shape from the model's public config (GPT-3's
GeLU MLP 2·h·4h is written as the SwiGLU-equivalent ffn 8h/3, which has the same matmul FLOPs; its output layer is
tied); layout TP·PP·DP with the table's VP, sequence parallelism and TE's TP communication overlap whenever TP > 1
(the NeMo H100 recipes turn both on); Workload: GBS sequences of the table's length, its MBS, FP8 layers, the plain
output layer (no fused logprobs), distributed optimizer with overlap_grad_reduce (the recipes' defaults), fp32 grad
reduction; Hardware: the planner's H100 defaults, unchanged.
Criterion (issue 22): predicted step time within 1.25x of the published one, both ways. The table with the
numbers: benchmarks/planner_vs_published_h100_20261207.md.
"""
from dataclasses import dataclass

import pytest

from megatron_meml.planning import Hardware, Layout, ModelShape, Workload, train_terms

NEMO = "https://docs.nvidia.com/nemo-framework/user-guide/24.09/performance/performance_summary.html"
BRIDGE = "https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/main/docs/performance-summary-archive.md"


def gpt3(layers, hidden, heads):
    return ModelShape(layers, hidden, 8 * hidden // 3, heads, heads, hidden // heads, 51200, tied=True,
                      qkv_bias=False)


def llama(layers, hidden, ffn, heads, groups, vocab):
    return ModelShape(layers, hidden, ffn, heads, groups, hidden // heads, vocab, tied=False, qkv_bias=False)


@dataclass(frozen=True)
class Published:
    name: str
    source: str
    shape: ModelShape
    gpus: int
    tp: int
    pp: int
    vp: int
    gbs: int
    mbs: int
    seq: int
    tokens_per_gpu_s: float       # measured, as published
    tflops_per_gpu: float         # as published (NeMo's FLOP formula: non-causal attention)

    @property
    def step_s(self) -> float:
        return self.gbs * self.seq / (self.tokens_per_gpu_s * self.gpus)


PUBLISHED = [
    Published("GPT3-5B", NEMO, gpt3(24, 4096, 32), 64, 1, 1, 1, 2048, 4, 2048, 23406, 765),
    Published("GPT3-20B", NEMO, gpt3(44, 6144, 48), 64, 2, 1, 1, 256, 2, 2048, 5851, 750),
    Published("GPT3-175B", NEMO, gpt3(96, 12288, 96), 128, 4, 8, 6, 256, 1, 2048, 716, 771),
    Published("GPT3-175B", NEMO, gpt3(96, 12288, 96), 512, 4, 8, 6, 2048, 2, 2048, 825, 888),
    Published("LLAMA2-7B", NEMO, llama(32, 4096, 11008, 32, 32, 32000), 8, 1, 1, 1, 128, 1, 4096, 16934, 780),
    Published("LLAMA2-13B", NEMO, llama(40, 5120, 13824, 40, 40, 32000), 16, 1, 4, 10, 128, 1, 4096, 8715, 760),
    Published("LLAMA2-70B", NEMO, llama(80, 8192, 28672, 64, 8, 32000), 64, 4, 4, 20, 128, 1, 4096, 1728, 768),
    Published("LLAMA3-70B 25.09", BRIDGE, llama(80, 8192, 28672, 64, 8, 128256), 64, 4, 8, 5, 128, 1, 8192, 1619,
              727),
    Published("LLAMA3-70B 25.11", BRIDGE, llama(80, 8192, 28672, 64, 8, 128256), 64, 4, 8, 5, 128, 1, 8192, 1602,
              719),
    Published("LLAMA3-70B 26.02", BRIDGE, llama(80, 8192, 28672, 64, 8, 128256), 64, 4, 8, 5, 256, 1, 8192, 1621,
              728),
]


def published_plan(p: Published, hw: Hardware = Hardware()) -> dict:
    """The planner's train-time terms for a published run (mapping: the module docstring)."""
    lay = Layout(p.tp, p.pp, p.gpus // (p.tp * p.pp), sequence_parallel=p.tp > 1, vp=p.vp,
                 tp_comm_overlap=p.tp > 1)
    work = Workload(seq_length=p.seq, micro_batch_size=p.mbs, rollouts=0, train_sequences=p.gbs, prompt_tokens=1,
                    new_tokens=0, token_budget=1, fused_output=False, fp8=True, overlap_grad_reduce=True)
    return train_terms(p.shape, lay, work, hw)


def test_every_published_run_is_within_1_25x():
    ratios = {}
    for p in PUBLISHED:
        t = published_plan(p)["train_s"]
        ratios[f"{p.name}/{p.gpus}"] = t / p.step_s
    bad = {k: round(v, 3) for k, v in ratios.items() if not 1 / 1.25 <= v <= 1.25}
    assert not bad, f"predicted/published step time outside 1.25x: {bad} (all: {ratios})"


def test_mapping_is_the_published_configuration():
    """The shapes are the public models' (parameter counts) and the layouts multiply out to the GPU counts."""
    params = {p.name: p.shape.params() / 1e9 for p in PUBLISHED}
    assert params["LLAMA2-7B"] == pytest.approx(6.74, abs=0.01)
    assert params["LLAMA2-13B"] == pytest.approx(13.0, abs=0.05)
    assert params["LLAMA2-70B"] == pytest.approx(69.0, abs=0.1)
    assert params["LLAMA3-70B 25.09"] == pytest.approx(70.6, abs=0.1)
    assert params["GPT3-175B"] == pytest.approx(174.6, abs=0.5)   # GPT-3's 175B, tied embeddings
    for p in PUBLISHED:
        assert p.gpus % (p.tp * p.pp) == 0 and p.gbs % (p.mbs * p.gpus // (p.tp * p.pp)) == 0, p


@pytest.mark.parametrize("knob", ["fp8", "vp", "dp_overlap"])
def test_each_model_term_matters_where_the_runs_use_it(knob):
    """What the published runs use and the planner now models -- FP8 GEMMs, interleaved pipelining, overlapped DP
    collectives -- each moves a prediction in the right direction when switched off."""
    p = next(r for r in PUBLISHED if r.name == "GPT3-175B" and r.gpus == 128)
    base = published_plan(p)
    lay = Layout(p.tp, p.pp, p.gpus // (p.tp * p.pp), sequence_parallel=True, vp=1 if knob == "vp" else p.vp,
                 tp_comm_overlap=True)
    work = Workload(seq_length=p.seq, micro_batch_size=p.mbs, rollouts=0, train_sequences=p.gbs, prompt_tokens=1,
                    new_tokens=0, token_budget=1, fused_output=False, fp8=knob != "fp8",
                    overlap_grad_reduce=knob != "dp_overlap")
    off = train_terms(p.shape, lay, work, Hardware())
    assert off["train_s"] > base["train_s"]
