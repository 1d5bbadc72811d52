"""Build a megatron-core GPTModel for the Qwen2/Qwen2.5 and Llama-3/3.2 families from the config tree.

Architecture mapping (HF name -> megatron-core):
  RMSNorm(eps)                      -> normalization="RMSNorm", layernorm_epsilon
  SwiGLU MLP (gate, up, down)       -> gated_linear_unit=True, activation_func=silu, add_bias_linear=False
  GQA (num_key_value_heads)         -> num_query_groups
  qkv bias (Qwen2)                  -> add_qkv_bias
  rope_theta                        -> rotary_base;  llama3 rope_scaling -> rope_scaling + inv_freq recomputed with
                                       the config's factor / low / high / original context (megatron passes only
                                       `factor` through and assumes 1 / 4 / 8192 for the rest)
  tie_word_embeddings               -> share_embeddings_and_output_weights
  vocab                             -> padded to a multiple of make_vocab_size_divisible_by * TP (or the exact
                                       padded_vocab_size, e.g. Qwen2.5's 151936); the logits of padded ids are
                                       masked at the output layer (:func:`mask_padded_vocab`), so they carry no
                                       probability mass: the model is the same function at any TP
Layer spec: megatron's local spec on CPU (torch norms; core attention through torch SDPA,
``backend/train/attention.py``,
unless ``model.attention_impl=megatron``); the Transformer Engine spec when TE is importable and CUDA is present
(required for FP8).
"""
from __future__ import annotations

import contextlib
from typing import List

import torch
import torch.nn.functional as F

from ...config.schema import Config, ConfigError
from ..runtime import compat
from . import state
from .attention import SDPAttention, enable_explicit_positions
from .output_layer import OutputOptions, set_options
from .state import unwrap  # noqa: F401  (re-exported: callers use backend.model.unwrap)


def padded_vocab_size(cfg: Config) -> int:
    """Embedding rows: ``model.padded_vocab_size`` when set (must divide by TP), else vocab rounded up to a multiple
    of ``make_vocab_size_divisible_by * TP``."""
    m, tp = cfg.model, cfg.parallel.tensor_model_parallel_size
    if m.padded_vocab_size is not None:
        if m.padded_vocab_size < m.vocab_size or m.padded_vocab_size % tp:
            raise ConfigError(f"config key `model.padded_vocab_size`: {m.padded_vocab_size} must be >= "
                              f"model.vocab_size={m.vocab_size} and divisible by TP={tp}")
        return m.padded_vocab_size
    mult = m.make_vocab_size_divisible_by * tp
    return ((m.vocab_size + mult - 1) // mult) * mult


def real_vocab_size(cfg: Config) -> int:
    """The real vocabulary ``model.vocab_size``: ids at or above it are embedding padding (TP divisibility) and get
    no probability mass anywhere (training log-probs and loss, sampling, eval). The one place that says where the
    padding starts; fused paths that skip the output layer's logits must apply the same limit."""
    return cfg.model.vocab_size


def padded_logit_value(dtype: torch.dtype) -> float:
    """The logit given to padded vocab ids: large and negative, so ``exp`` underflows to exactly 0 at any sampling
    temperature up to ~1e5 (fp32/fp64), yet finite, so ``p * log p`` and ``z - max z`` stay finite (-inf would
    give NaN entropies). fp16 cannot hold -1e9; it gets half its largest value."""
    return -min(1e9, torch.finfo(dtype).max / 2)


def mask_padded_vocab_(logits: torch.Tensor, real_vocab: int, padded_vocab: int, vocab_start: int) -> torch.Tensor:
    """In place: set the columns of global id >= ``real_vocab`` of ``logits`` [..., V_local] (this rank's vocab
    shard, global ids ``[vocab_start, vocab_start + V_local)``) to :func:`padded_logit_value`. The fill is a
    differentiable in-place op, so those columns pass exactly zero gradient back to the output layer."""
    first = max(real_vocab - vocab_start, 0)
    if first < logits.shape[-1]:
        logits.narrow(-1, first, logits.shape[-1] - first).fill_(padded_logit_value(logits.dtype))
    return logits


def _install_vocab_mask(model, cfg: Config) -> None:
    """Forward hook on ``model.output_layer``: every logit it produces (training forward, log-prob scoring,
    generation; TP-local shards or, with ``runtime_gather_output``, the gathered padded vocabulary) has its padded
    columns masked by :func:`mask_padded_vocab_`. The real limit is also ``model.meml_real_vocab_size``."""
    real, padded = real_vocab_size(cfg), padded_vocab_size(cfg)
    model.meml_real_vocab_size = real
    out_layer = getattr(model, "output_layer", None)
    if out_layer is None or real >= padded:
        return
    tp = cfg.parallel.tensor_model_parallel_size

    def hook(module, args, output):
        logits = output[0] if isinstance(output, tuple) else output
        local = logits.shape[-1]
        if local == padded:  # gathered over TP (inference) or TP=1
            start = 0
        else:
            from megatron.core import parallel_state as ps

            start = ps.get_tensor_model_parallel_rank() * local
            assert local * tp == padded, f"output layer gave {local} vocab columns; padded vocab {padded}, TP={tp}"
        mask_padded_vocab_(logits, real, padded, start)
        return output

    out_layer.register_forward_hook(hook)


def params_dtype(cfg: Config) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision.dtype]


def transformer_config(cfg: Config, perform_initialization: bool = True):
    """The megatron ``TransformerConfig`` for this run (dropout off: RL log-prob ratios must be deterministic)."""
    from megatron.core.transformer import TransformerConfig

    m, p, pr = cfg.model, cfg.parallel, cfg.precision
    dtype = params_dtype(cfg)
    cpu = not torch.cuda.is_available()
    if p.sequence_parallel and cpu:
        raise ConfigError("config key `parallel.sequence_parallel`: needs Transformer Engine or apex norms (GPU)")
    kw = dict(
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads, num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels, normalization="RMSNorm", layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=m.add_qkv_bias,
        hidden_dropout=0.0, attention_dropout=0.0, init_method_std=m.init_method_std,
        use_cpu_initialization=cpu, perform_initialization=perform_initialization,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size, sequence_parallel=p.sequence_parallel,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        attention_softmax_in_fp32=True, variable_seq_lengths=p.pipeline_model_parallel_size > 1,
        deallocate_pipeline_outputs=False,
        moe_token_dispatcher_type="alltoall",  # the allgather default refuses variable_seq_lengths (no MoE here)
    )
    if m.recompute_activations:
        kw.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    kw.update(compat.fp8_kwargs(pr))
    return TransformerConfig(**kw)


def layer_spec(cfg: Config):
    """TE spec on GPU when TE imports (mandatory for FP8); the local (pure torch) spec otherwise, with
    ``model.attention_impl`` choosing its core attention."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if torch.cuda.is_available() and compat.have_te():
        return specs.get_gpt_layer_with_transformer_engine_spec()
    if cfg.precision.fp8:
        raise ConfigError("config key `precision.fp8`: FP8 needs Transformer Engine, which is not importable here "
                          "(use the NGC image from the Dockerfile, or set precision.fp8=null)")
    spec = specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    if cfg.model.attention_impl == "sdpa":
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def _apply_llama3_rope(model, cfg: Config) -> None:
    """Recompute RoPE inverse frequencies with the config's llama3 scaling parameters."""
    m = cfg.model
    rope = getattr(model, "rotary_pos_emb", None)
    if rope is None or m.rope_scaling != "llama3":
        return
    dim = rope.inv_freq.numel() * 2
    base = 1.0 / (m.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=rope.inv_freq.device) / dim))
    rope.inv_freq = rope._apply_scaling(base, factor=m.rope_scaling_factor, low_freq_factor=m.rope_low_freq_factor,
                                        high_freq_factor=m.rope_high_freq_factor,
                                        original_max_position_embeddings=m.rope_original_max_position)


def build_gpt(cfg: Config, pre_process: bool = True, post_process: bool = True, init: bool = True,
              meta: bool = False):
    """One GPTModel stage (no DDP wrapper). ``meta=True`` builds on the meta device without initialisation (used to
    count parameters of large shapes)."""
    from megatron.core.models.gpt import GPTModel

    tcfg = transformer_config(cfg, perform_initialization=init and not meta)
    if meta:
        tcfg.use_cpu_initialization = False
    ctx = torch.device("meta") if meta else contextlib.nullcontext()
    with ctx:
        model = GPTModel(
            config=tcfg, transformer_layer_spec=layer_spec(cfg), vocab_size=padded_vocab_size(cfg),
            max_sequence_length=cfg.model.max_position_embeddings, pre_process=pre_process,
            post_process=post_process, parallel_output=True,
            share_embeddings_and_output_weights=cfg.model.tie_word_embeddings, position_embedding_type="rope",
            rotary_base=cfg.model.rotary_base, rope_scaling=cfg.model.rope_scaling == "llama3",
            rope_scaling_factor=cfg.model.rope_scaling_factor)

    set_options(model, OutputOptions(fused=cfg.model.fused_output, vocab_limit=real_vocab_size(cfg)))
    if not meta:
        _apply_llama3_rope(model, cfg)
        _install_vocab_mask(model, cfg)

        enable_explicit_positions(model)  # per-slot RoPE positions for prompt-sharing rows
    return model


def build_model(cfg: Config) -> List[torch.nn.Module]:
    """The model chunks of this pipeline stage, wrapped in megatron DDP (grad buffers for the distributed
    optimizer). One chunk per rank (no virtual pipeline). Weights come from :func:`state.init_layout_invariant`,
    so a run starts from the same model at any TP/PP layout."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    # megatron's own init must run: it is what tags tensor-parallel attributes (partition_dim, stride) on params.
    model = build_gpt(cfg, pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage())
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    state.init_layout_invariant(model, cfg.model.num_layers, cfg.model.init_method_std, cfg.seed)
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=cfg.precision.grad_reduce_in_fp32,
        overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer)
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_cfg, module=model)
    # What megatron's training loop wires in: DP grad reduce (+ tied-embedding and layernorm all-reduces across
    # stages) after the last microbatch, and no grad sync before it.
    from megatron.core.distributed import finalize_model_grads

    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.no_sync_func = ddp.no_sync
    if cfg.parallel.overlap_grad_reduce:
        model.config.grad_sync_func = ddp.start_grad_sync
    return [ddp]


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def set_recompute(chunks: List[torch.nn.Module], on: bool) -> None:
    """Full per-layer activation recomputation on or off from the next forward on (what
    ``model.recompute_activations`` sets at build time); megatron's TransformerBlock reads these TransformerConfig
    fields at every forward (0.16 and 0.19). Used to measure what recomputation costs on one model."""
    for chunk in chunks:
        c = unwrap(chunk).config
        c.recompute_granularity, c.recompute_method, c.recompute_num_layers = \
            ("full", "uniform", 1) if on else (None, None, None)
