"""Per-GPU memory and RIEL step-time model for choosing TP / PP / DP (used by ``python -m megatron_meml.plan_scaling``).

Plain Python on the config tree: no torch, no megatron. Units: bytes, seconds, FLOPs; tables print GiB (2^30 B).

Notation: L layers, h hidden, f SwiGLU ffn width, a query heads, g KV groups, d head dim, q = a·d, kv = g·d,
V padded vocab, s sequence length, b micro-batch size, t = TP, p = PP, n = DP.

**Parameters per GPU** (exact for our megatron-core GPT, checked against the built model):
  per layer  P_layer = h·(q + 2kv) [+ q + 2kv qkv bias] + q·h + 3·h·f  (TP-sharded)
             + 2h (RMSNorm weights, replicated)
  embedding  V·h / t on the first stage; output layer V·h / t on the last stage (untied, or tied with p > 1: the
             last stage then holds its own copy); final norm h on the last stage. The larger of the first and last
             stage is reported (the other stages hold only L/p layers).
**Static training state per parameter** (megatron DDP + distributed optimizer, measured on CPU to within 0.1%):
  bf16/fp16: 2 (params) + 4 (fp32 grad buffer; 2 when precision.grad_reduce_in_fp32=false)
             + (4 fp32 main params + 8 Adam moments) / n
  fp32:      4 (params) + 4 (grad buffer) + 8 (Adam moments) / n  (the fp32 params are the optimizer's own)
  Without the distributed optimizer the optimizer term is not divided by n.
**Activations** (Korthikanti et al. 2022, "Reducing Activation Recomputation", rederived for SwiGLU + GQA).
  Attention runs through SDPA / flash attention, which never materialises the a·s² score matrix, so the
  5·a·s²·b term of the paper is dropped; dropout is off (RL log-prob ratios must be deterministic), so no masks.
  Stored elements per token per layer depend on the layer implementation (``Workload.layer_spec``):
    te (Transformer Engine: fused norm + linear, fused SwiGLU MLP): 4h (2 norm inputs, 2 norm outputs) + q + 2kv
       (Q, K, V) + q (attention output) + 3f (gate, up, and SwiGLU output)
          A_layer = s·b·e·(4h / t_sp + (2q + 2kv + 3f) / t)    e = bytes per element, t_sp = t with sequence
                                                                parallelism, 1 without (h-sized tensors replicated)
       (not yet checked against a TE build: none is installable on the dev machines or the lent GPUs);
    local (megatron's local spec with torch norms and SDPA: the CPU path and GPU images without TE; measured with
       autograd's saved-tensor hooks, ``tests/unit/planning/test_activations_measured.py``, exact to the element):
       6h (per torch RMSNorm its input, x·rsqrt and the output) + 3q + 3kv (the fused QKV output, the RoPE'd Q
       and K, the attention output) + 5f (the fc1 output [gate | up], silu(gate), two f-sized SwiGLU products)
       + 4·a/t bytes of fp32 log-sum-exp:
          A_layer = s·b·(e·(6h + (3q + 3kv + 5f) / t) + 4a / t)     (no sequence parallelism without TE / apex)
       Sequence and RoPE tables (s·d per layer, independent of b) are left out.
  With full recomputation (model.recompute_activations) only each layer's input s·b·e·h / t_sp is kept, plus one
  layer's A_layer while it is recomputed in the backward pass. With 1F1B pipelining the first stage holds
  min(p, m) microbatches in flight (m = microbatches per DP rank per step), each through L/p layers.
  Output layer on the last stage (one microbatch), beyond the activations:
      fused (model.fused_output, default): the logits never exist; the Triton backward holds one dz chunk of
          min(512 MiB, s·b·V/t·e) and an fp32 dhidden s·b·h·4 (the forward keeps O(s·b) row statistics);
      logits path: s·b·V/t·e·2 -- the logits kept for the backward and their gradient, both in the model dtype
          (``meml_kernels.logprobs`` makes no fp32 [T, V] temporaries; GPTModel's [s b V] -> [b s V] copy is a
          transient of the same size during the forward).
**Rollout KV cache** per GPU: 2 (K, V) · (L/p) · max(g/t, 1) · d · token_budget · e (rollout.token_budget slots per
  generation batch on each DP rank). Training activations and the KV cache are never alive together:
  peak = state + max(activations + logits, KV cache) + fixed overhead (CUDA context, NCCL buffers); a layout fits
  when the peak stays under (1 − headroom) of the usable GPU memory (fragmentation, transient spikes).

**Step time** (one RIEL step: generate, then one optimizer step), an estimate at assumed efficiencies:
  train:   FLOPs = (6 + 2·[recompute]) · (N_mm + L · s · q) · T   (dense matmuls + causal attention; N_mm the
           weights used in matmuls: every layer and the output layer, not the input embedding lookup),
           + 2 · V · h · T with the fused output layer (its backward recomputes the logits tiles),
           T = training sequences · s (upper bound: every sequence at seq_length); sequences = questions · N_exp ·
           G (GRPO) + questions · max_kl_responses (inter-expert KL).
           compute = (F_layers / peak_l + (F_attn + F_out) / peak) / (GPUs · MFU): the transformer layers' linear
           GEMMs F_layers run at peak_l = the FP8 peak with precision.fp8 (Transformer Engine casts their inputs;
           1979 TFLOP/s dense on an H100 SXM), else at the bf16 peak; attention (FlashAttention, bf16) and the
           output layer (a non-TE linear) always at the bf16 peak.
           time = (compute + exposed TP comm) · (1 + (p − 1) / (v · m)) + exposed DP comm, where (1 + (p−1)/(v·m))
           is the 1F1B pipeline bubble with v virtual stages per rank (interleaved schedule; v = 1 plain 1F1B).
           TP comm: s·b·h·e bytes 4 times per layer per microbatch (6 with recompute; all-reduce, or all-gather +
           reduce-scatter with sequence parallelism: the same ring volume 2(t−1)/t) over NVLink; with
           ``Layout.tp_comm_overlap`` (TE userbuffers split each TP GEMM and pipeline its collective) only what the
           GEMMs cannot cover is exposed, max(0, comm − compute), else all of it.
           DP comm: the distributed optimizer reduce-scatters the grads (g = 4 B/param, 2 with
           grad_reduce_in_fp32=false) and all-gathers the params (e B/param), hierarchically: within a node over
           NVLink, between nodes each GPU sends its 1/k shard through its own NIC (``dp_collective_seconds``).
           With ``overlap_grad_reduce`` (megatron launches each bucket's reduce-scatter as soon as the LAST
           microbatch's backward has produced it, and gathers params during the first forward) only
           max(0, reduce-scatter − one microbatch's backward) + max(0, all-gather − one microbatch's forward) is
           exposed, else all of it. PP point-to-point traffic (s·b·h·e per microbatch and stage) is ignored.
           Checked against published Megatron-core / NeMo H100 runs (tests/unit/planning/test_published.py,
           benchmarks/planner_vs_published_h100_20261207.md): predicted step time within 1.25x.
  rollout: per DP replica, waves of B = token_budget // (prompt + new) sequences. Prefill is compute-bound
           (2·N·B·prompt FLOPs at MFU on the t·p GPUs). Each decode step is memory-bound: it streams the weights
           (N·e / t) and the KV cache read so far (2·L·max(g/t,1)·d·e·B·(prompt + new/2)) through HBM at
           bandwidth × efficiency (PP stages run one after the other for one decode step, so PP does not shorten
           it), plus 2·L TP all-reduce latencies when t > 1; a step is never faster than its FLOPs at MFU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

GiB = float(2 ** 30)

#: The models of ``examples/scaling/`` and the GPU count each is planned at (docs/scaling.md's table, the scaling
#: study).
SCALING_RUNS = {
    "llama3.2-1b": 8, "qwen2.5-1.5b": 8, "llama3.2-3b": 8, "qwen2.5-7b": 8, "llama3.1-8b": 8,
    "qwen2.5-14b": 16, "qwen2.5-32b": 32, "llama3.1-70b": 64, "qwen2.5-72b": 64,
}


@dataclass(frozen=True)
class ModelShape:
    """Transformer shape (from ``cfg.model``); ``vocab`` is the padded embedding row count."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    groups: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def of(cls, f) -> "ModelShape":
        """From a dict of ModelConfig fields (``checkpoint_io.model_fields`` / ``model_fields_from_hf`` style);
        ``vocab`` is the stored ``vocab_size`` as given."""
        hd = f.get("kv_channels") or int(f["hidden_size"]) // int(f["num_attention_heads"])
        return cls(layers=int(f["num_layers"]), hidden=int(f["hidden_size"]), ffn=int(f["ffn_hidden_size"]),
                   heads=int(f["num_attention_heads"]), groups=int(f["num_query_groups"]), head_dim=int(hd),
                   vocab=int(f["vocab_size"]), qkv_bias=bool(f["add_qkv_bias"]), tied=bool(f["tie_word_embeddings"]))

    @classmethod
    def from_config(cls, cfg, tp: int = 1) -> "ModelShape":
        m = cfg.model
        return cls(layers=m.num_layers, hidden=m.hidden_size, ffn=m.ffn_hidden_size, heads=m.num_attention_heads,
                   groups=m.num_query_groups, head_dim=m.kv_channels or m.hidden_size // m.num_attention_heads,
                   vocab=padded_vocab(cfg, tp), tied=m.tie_word_embeddings, qkv_bias=m.add_qkv_bias)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.groups * self.head_dim

    def layer_sharded(self) -> int:
        """TP-sharded parameters of one layer: QKV (+ bias), attention output, SwiGLU (gate, up, down)."""
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        bias = (q + 2 * kv) if self.qkv_bias else 0
        return h * (q + 2 * kv) + bias + q * h + 3 * h * self.ffn

    def params(self) -> int:
        """Total parameters (tied embeddings counted once)."""
        emb = self.vocab * self.hidden
        return self.layers * (self.layer_sharded() + 2 * self.hidden) + emb * (1 if self.tied else 2) + self.hidden

    def matmul_params(self) -> int:
        """Weights that take part in a matmul per token: every layer's and the output layer's (the input embedding
        is a lookup, norms and biases are elementwise)."""
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        return self.layers * (h * (q + 2 * kv) + q * h + 3 * h * self.ffn) + self.vocab * h

    def model_flops_per_token(self, seq_length: int) -> float:
        """Training model FLOPs per token at sequence length s (forward + backward, no recomputation): 6·N_mm plus
        causal attention 6·L·s·q (QK^T and PV, 2·q flops per query-key pair, s/2 keys per query on average). The
        numerator of MFU."""
        return 6.0 * self.matmul_params() + 6.0 * self.layers * seq_length * self.q_dim


def padded_vocab(cfg, tp: int = 1) -> int:
    """Embedding rows: ``model.padded_vocab_size`` or vocab rounded up to make_vocab_size_divisible_by · TP (the
    rule of ``backend.train.model.padded_vocab_size``, repeated here so planning needs neither torch nor megatron)."""
    m = cfg.model
    if m.padded_vocab_size is not None:
        return m.padded_vocab_size
    mult = m.make_vocab_size_divisible_by * tp
    return -(-m.vocab_size // mult) * mult


@dataclass(frozen=True)
class Layout:
    """TP · PP · DP, full recomputation, sequence parallelism; ``vp``: virtual pipeline stages per PP rank
    (interleaved 1F1B, megatron's virtual_pipeline_model_parallel_size; 1 = plain 1F1B); ``tp_comm_overlap``: TE's
    userbuffer overlap of the TP collectives with the GEMMs (the planner's candidates leave both at their
    defaults: our runs use neither yet; published recipes do)."""

    tp: int
    pp: int
    dp: int
    recompute: bool = False
    sequence_parallel: bool = False
    vp: int = 1
    tp_comm_overlap: bool = False

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp


LAYER_SPECS = ("te", "local")


@dataclass(frozen=True)
class Workload:
    """What one RIEL step does (from the run config)."""

    seq_length: int
    micro_batch_size: int
    rollouts: int               # questions · experts · G sequences generated per step
    train_sequences: int        # rollouts + inter-expert KL sequences trained on per step
    prompt_tokens: int
    new_tokens: int
    token_budget: int
    dtype: str = "bf16"
    grad_reduce_in_fp32: bool = True
    distributed_optimizer: bool = True
    fused_output: bool = True   # model.fused_output: no [T, V] logits in training
    layer_spec: str = "te"      # "te" (Transformer Engine layers) or "local" (megatron's local spec, torch norms)
    fp8: bool = False           # precision.fp8 set: the layers' linear GEMMs in FP8 (Transformer Engine)
    overlap_grad_reduce: bool = False   # parallel.overlap_grad_reduce: DP collectives overlap the first/last mb

    def __post_init__(self):
        if self.layer_spec not in LAYER_SPECS:
            raise ValueError(f"layer_spec must be one of {LAYER_SPECS}, got {self.layer_spec!r}")

    @classmethod
    def from_config(cls, cfg) -> "Workload":
        r, new = cfg.riel, cfg.rollout.max_new_tokens
        rollouts = r.questions_per_step * cfg.experts.num_experts * r.group_size
        kl = r.questions_per_step * r.max_kl_responses if r.inter_expert_kl and cfg.experts.num_experts > 1 else 0
        return cls(seq_length=cfg.data.seq_length, micro_batch_size=cfg.data.micro_batch_size, rollouts=rollouts,
                   train_sequences=rollouts + kl, prompt_tokens=max(cfg.data.seq_length - new, 1), new_tokens=new,
                   token_budget=cfg.rollout.token_budget, dtype=cfg.precision.dtype,
                   grad_reduce_in_fp32=cfg.precision.grad_reduce_in_fp32,
                   distributed_optimizer=cfg.parallel.use_distributed_optimizer,
                   fused_output=cfg.model.fused_output, fp8=cfg.precision.fp8 is not None,
                   overlap_grad_reduce=cfg.parallel.overlap_grad_reduce)

    @property
    def elem_bytes(self) -> int:
        return 4 if self.dtype == "fp32" else 2


@dataclass(frozen=True)
class Hardware:
    """Assumed accelerator (defaults: H100 SXM 80 GB)."""

    memory_gib: float = 79.0         # what torch reports usable on an H100 80 GB (79.1 GiB)
    headroom: float = 0.10           # keep this fraction free (allocator fragmentation, transient spikes)
    overhead_gib: float = 4.0        # CUDA context + NCCL buffers
    peak_tflops: float = 989.0       # dense bf16
    fp8_peak_tflops: float = 1979.0  # dense FP8 (the transformer layers' GEMMs with precision.fp8)
    # achieved fraction of peak for training / prefill. 0.40: the published Megatron-core H100 runs of
    # tests/unit/planning/test_published.py come out at 0.98-1.17x of the predicted step time with it (0.35
    # over-predicted them by 1.12-1.33x); Megatron-LM's README reports 41-47% MFU on H100 for 2B-462B GPTs.
    mfu: float = 0.40
    hbm_tbps: float = 3.35           # HBM bandwidth
    hbm_efficiency: float = 0.7      # achieved fraction of the bandwidth in decode
    tp_allreduce_us: float = 8.0     # latency of one small TP all-reduce (decode)
    nvlink_gbps: float = 300.0       # achieved collective bus bandwidth inside a node, GB/s
    network_gbps: float = 40.0       # achieved per-GPU inter-node bandwidth (400 Gb/s NDR), GB/s
    gpus_per_node: int = 8           # TP stays inside a node


# ---- memory -------------------------------------------------------------------------------------------------------
def params_per_gpu(shape: ModelShape, layout: Layout) -> int:
    """Parameters held by the most loaded GPU (first or last pipeline stage)."""
    t, p = layout.tp, layout.pp
    per_layer = shape.layer_sharded() // t + 2 * shape.hidden
    body = (shape.layers // p) * per_layer
    emb = shape.vocab * shape.hidden // t
    out_layer = emb if (not shape.tied or p > 1) else 0
    if p == 1:
        return body + emb + out_layer + shape.hidden
    return max(body + emb, body + out_layer + shape.hidden)


def state_bytes(shape: ModelShape, layout: Layout, work: Workload) -> dict:
    """{params, grads, optimizer} bytes on the most loaded GPU."""
    n = params_per_gpu(shape, layout)
    mixed = work.dtype != "fp32"
    grad = 4 if (work.grad_reduce_in_fp32 or not mixed) else 2
    opt = (4 if mixed else 0) + 8
    shard = layout.dp if work.distributed_optimizer else 1
    return {"params": n * work.elem_bytes, "grads": n * grad, "optimizer": n * opt / shard}


def microbatches_per_rank(layout: Layout, work: Workload) -> int:
    return max(1, math.ceil(work.train_sequences / (layout.dp * work.micro_batch_size)))


def layer_activation_bytes(shape: ModelShape, layout: Layout, work: Workload) -> float:
    """A_layer: bytes one layer keeps for the backward for one microbatch (module docstring)."""
    t, e = layout.tp, work.elem_bytes
    t_sp = t if layout.sequence_parallel else 1
    tokens = work.seq_length * work.micro_batch_size
    h, q, kv, f = shape.hidden, shape.q_dim, shape.kv_dim, shape.ffn
    if work.layer_spec == "local":
        return tokens * (e * (6 * h / t_sp + (3 * q + 3 * kv + 5 * f) / t) + 4.0 * shape.heads / t)
    return tokens * e * (4 * h / t_sp + (2 * q + 2 * kv + 3 * f) / t)


def activation_bytes(shape: ModelShape, layout: Layout, work: Workload) -> float:
    """Activations kept by the first pipeline stage (see the module docstring)."""
    t, e = layout.tp, work.elem_bytes
    t_sp = t if layout.sequence_parallel else 1
    tokens = work.seq_length * work.micro_batch_size
    full_layer = layer_activation_bytes(shape, layout, work)
    per_layer = tokens * e * shape.hidden / t_sp if layout.recompute else full_layer
    in_flight = min(layout.pp, microbatches_per_rank(layout, work))
    return in_flight * (shape.layers // layout.pp) * per_layer + (full_layer if layout.recompute else 0.0)


FUSED_BWD_CHUNK_BYTES = 512 * 2 ** 20   # meml_kernels/linear_logprobs/triton_impl.BWD_CHUNK_BYTES


def logits_bytes(shape: ModelShape, layout: Layout, work: Workload) -> float:
    """Output-layer memory of one microbatch on the last stage (module docstring)."""
    tokens = work.seq_length * work.micro_batch_size
    logits = tokens * shape.vocab / layout.tp * work.elem_bytes
    if work.fused_output:
        return min(float(FUSED_BWD_CHUNK_BYTES), logits) + tokens * shape.hidden * 4.0
    return 2.0 * logits


def kv_cache_bytes(shape: ModelShape, layout: Layout, work: Workload) -> float:
    kv_heads = max(shape.groups // layout.tp, 1)
    return 2.0 * (shape.layers // layout.pp) * kv_heads * shape.head_dim * work.token_budget * work.elem_bytes


# ---- time ---------------------------------------------------------------------------------------------------------
def train_flops_split(shape: ModelShape, layout: Layout, work: Workload) -> dict:
    """FLOPs of one training step by where they run: ``layers`` (the transformer layers' linear GEMMs), ``attn``
    (QK^T and PV, causal), ``out`` (the output layer, plus the fused kernel's logits recompute); recomputation
    included (k = 8 instead of 6)."""
    tokens = work.train_sequences * work.seq_length
    k = 8 if layout.recompute else 6
    out = k * shape.vocab * shape.hidden * tokens + (2.0 * shape.vocab * shape.hidden * tokens
                                                     if work.fused_output else 0.0)
    return {"layers": k * (shape.matmul_params() - shape.vocab * shape.hidden) * tokens,
            "attn": k * shape.layers * work.seq_length * shape.q_dim * tokens, "out": out}


def train_flops(shape: ModelShape, layout: Layout, work: Workload) -> float:
    """FLOPs the GPUs execute for one training step (recomputation and the fused kernel's logits recompute
    included): the module docstring's train formula."""
    return sum(train_flops_split(shape, layout, work).values())


def dp_collective_seconds(elements: float, layout: Layout, hw: Hardware) -> float:
    """Seconds per byte-per-element of a DP reduce-scatter (or all-gather) of ``elements`` per GPU, hierarchical as
    NCCL runs it: megatron orders ranks TP-fastest, so a node holds k = min(n, gpus_per_node // t) ranks of one DP
    group; the ring inside the node moves (k−1)/k of the data over NVLink, and between the N = n / k nodes each of
    the k GPUs sends its 1/k shard, (N−1)/N of it, through its own NIC. One node (N = 1): NVLink only."""
    n = layout.dp
    if n <= 1:
        return 0.0
    k = max(1, min(n, hw.gpus_per_node // layout.tp))
    nodes = math.ceil(n / k)
    intra = elements * (k - 1) / k / (hw.nvlink_gbps * 1e9)
    inter = elements / k * (nodes - 1) / nodes / (hw.network_gbps * 1e9)
    return intra + inter


def train_terms(shape: ModelShape, layout: Layout, work: Workload, hw: Hardware) -> dict:
    """The parts of the train time (module docstring), seconds: compute, tp_comm / dp_comm (all of it) and
    their exposed parts, the bubble factor, and the total ``train_s``."""
    f = train_flops_split(shape, layout, work)
    m = microbatches_per_rank(layout, work)
    peak_layers = hw.fp8_peak_tflops if work.fp8 else hw.peak_tflops
    compute = (f["layers"] / peak_layers + (f["attn"] + f["out"]) / hw.peak_tflops) / \
        (layout.gpus * 1e12 * hw.mfu)
    t, n, e = layout.tp, layout.dp, work.elem_bytes
    tp_comm = 0.0
    if t > 1:
        volume = (6 if layout.recompute else 4) * 2 * (t - 1) / t * work.seq_length * work.micro_batch_size * \
            shape.hidden * e
        tp_comm = m * (shape.layers // layout.pp) * volume / (hw.nvlink_gbps * 1e9)
    tp_exposed = max(0.0, tp_comm - compute) if layout.tp_comm_overlap else tp_comm
    grad = 4 if (work.grad_reduce_in_fp32 or work.dtype == "fp32") else 2
    share = dp_collective_seconds(params_per_gpu(shape, layout), layout, hw)
    reduce_scatter, all_gather = grad * share, e * share
    if work.overlap_grad_reduce:     # hidden behind the last microbatch's backward / the first one's forward
        per_mb = compute / m
        dp_exposed = max(0.0, reduce_scatter - per_mb * 2 / 3) + max(0.0, all_gather - per_mb / 3)
    else:
        dp_exposed = reduce_scatter + all_gather
    bubble = 1 + (layout.pp - 1) / (layout.vp * m)
    return dict(compute=compute, tp_comm=tp_comm, tp_exposed=tp_exposed, dp_comm=reduce_scatter + all_gather,
                dp_exposed=dp_exposed, bubble=bubble, microbatches=m,
                train_s=(compute + tp_exposed) * bubble + dp_exposed)


def train_seconds(shape: ModelShape, layout: Layout, work: Workload, hw: Hardware) -> float:
    return train_terms(shape, layout, work, hw)["train_s"]


def rollout_seconds(shape: ModelShape, layout: Layout, work: Workload, hw: Hardware) -> float:
    slot = work.prompt_tokens + work.new_tokens
    rows = max(1, work.token_budget // slot)
    waves = math.ceil(math.ceil(work.rollouts / layout.dp) / rows)
    replica_gpus = layout.tp * layout.pp
    flops_rate = replica_gpus * hw.peak_tflops * 1e12 * hw.mfu
    n = shape.matmul_params()
    prefill = 2.0 * n * rows * work.prompt_tokens / flops_rate
    e, bw = work.elem_bytes, hw.hbm_tbps * 1e12 * hw.hbm_efficiency
    kv_heads = max(shape.groups // layout.tp, 1)
    kv_read = 2.0 * shape.layers * kv_heads * shape.head_dim * e * rows * (work.prompt_tokens + work.new_tokens / 2)
    memory_time = (n * e / layout.tp + kv_read) / bw
    latency = (2 * shape.layers * hw.tp_allreduce_us * 1e-6) if layout.tp > 1 else 0.0
    step = max(memory_time + latency, 2.0 * n * rows / flops_rate)
    return waves * (prefill + work.new_tokens * step)


# ---- plans --------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    layout: Layout
    params_per_gpu: int
    state: dict
    activations: float
    logits: float
    kv_cache: float
    overhead: float
    rollout_s: float
    train_s: float
    memory_limit: float
    notes: List[str] = field(default_factory=list)

    @property
    def state_total(self) -> float:
        return sum(self.state.values())

    @property
    def peak(self) -> float:
        return self.state_total + max(self.activations + self.logits, self.kv_cache) + self.overhead

    @property
    def fits(self) -> bool:
        return self.peak <= self.memory_limit

    @property
    def step_s(self) -> float:
        return self.rollout_s + self.train_s


def evaluate(shape: ModelShape, layout: Layout, work: Workload, hw: Hardware = Hardware()) -> Plan:
    return Plan(layout=layout, params_per_gpu=params_per_gpu(shape, layout), state=state_bytes(shape, layout, work),
                activations=activation_bytes(shape, layout, work), logits=logits_bytes(shape, layout, work),
                kv_cache=kv_cache_bytes(shape, layout, work), overhead=hw.overhead_gib * GiB,
                rollout_s=rollout_seconds(shape, layout, work, hw), train_s=train_seconds(shape, layout, work, hw),
                memory_limit=hw.memory_gib * (1 - hw.headroom) * GiB)


def layout_errors(shape: ModelShape, layout: Layout) -> List[str]:
    """Why megatron cannot run this layout (empty when it can): the same checks as ``Config.validate_layout``."""
    t, p = layout.tp, layout.pp
    errs = []
    for what, value in (("heads", shape.heads), ("KV groups", shape.groups), ("ffn", shape.ffn),
                        ("padded vocab", shape.vocab)):
        if value % t:
            errs.append(f"TP={t} does not divide {what}={value}")
    if shape.layers % p:
        errs.append(f"PP={p} does not divide layers={shape.layers}")
    return errs


def candidate_layouts(shape: ModelShape, gpus: int, gpus_per_node: int = 8,
                      recompute: Iterable[bool] = (False, True), sequence_parallel: bool = True) -> List[Layout]:
    """Every TP (a power of two within one node) × PP × DP = ``gpus`` layout megatron accepts, with and without full
    recomputation; sequence parallelism on whenever TP > 1 and ``sequence_parallel`` (it needs TE or apex norms)."""
    out = []
    t = 1
    while t <= min(gpus_per_node, gpus):
        for p in range(1, gpus // t + 1):
            if gpus % (t * p):
                continue
            for rc in recompute:
                lay = Layout(tp=t, pp=p, dp=gpus // (t * p), recompute=rc,
                             sequence_parallel=t > 1 and sequence_parallel)
                if not layout_errors(shape, lay):
                    out.append(lay)
        t *= 2
    return out


def rank_plans(shape: ModelShape, work: Workload, gpus: int, hw: Hardware = Hardware()) -> List[Plan]:
    """All candidate layouts, feasible ones first, each group by estimated step time (then peak memory)."""
    plans = [evaluate(shape, lay, work, hw) for lay in candidate_layouts(shape, gpus, hw.gpus_per_node,
                                                                       sequence_parallel=work.layer_spec == "te")]
    return sorted(plans, key=lambda pl: (not pl.fits, pl.step_s, pl.peak))


def best_plan(shape: ModelShape, work: Workload, gpus: int, hw: Hardware = Hardware()) -> Optional[Plan]:
    plans = rank_plans(shape, work, gpus, hw)
    return plans[0] if plans and plans[0].fits else None
