"""HF (Qwen2/Qwen2.5, Llama-3/3.2) <-> megatron-core weights: the name mapping, streaming import to a sharded
checkpoint (:mod:`.checkpoint_io` format) for any TP/PP, export back to HF safetensors + config.json, and loading an
HF directory straight into a live model (``model.init_from_hf``).

Name mapping (H hidden, F ffn, nh heads, ng query groups, hd head dim, V vocab, Vpad padded vocab; layer i)::

    HF                                              megatron-core (global, local spec)          transform
    model.embed_tokens.weight           [V, H]      embedding.word_embeddings.weight [Vpad, H]  rows zero-padded
    model.layers.i.input_layernorm.weight [H]       decoder.layers.i.input_layernorm.weight      identity (TE spec:
                                                        ...self_attention.linear_qkv.layer_norm_weight)
    model.layers.i.self_attn.q_proj.weight [nh*hd, H]
    model.layers.i.self_attn.k_proj.weight [ng*hd, H]   decoder.layers.i.self_attention.linear_qkv.weight
    model.layers.i.self_attn.v_proj.weight [ng*hd, H]       [ng*(nh/ng+2)*hd, H], per group g:
                                                            [q heads of g (nh/ng*hd rows); k_g (hd); v_g (hd)]
    model.layers.i.self_attn.{q,k,v}_proj.bias      decoder.layers.i.self_attention.linear_qkv.bias (Qwen2), same
    model.layers.i.self_attn.o_proj.weight [H, nh*hd]   decoder.layers.i.self_attention.linear_proj.weight identity
    model.layers.i.post_attention_layernorm.weight  decoder.layers.i.pre_mlp_layernorm.weight    identity (TE spec:
                                                        ...mlp.linear_fc1.layer_norm_weight)
    model.layers.i.mlp.gate_proj.weight [F, H]      decoder.layers.i.mlp.linear_fc1.weight       [gate; up] [2F, H]
    model.layers.i.mlp.up_proj.weight   [F, H]
    model.layers.i.mlp.down_proj.weight [H, F]      decoder.layers.i.mlp.linear_fc2.weight       identity
    model.norm.weight                   [H]         decoder.final_layernorm.weight               identity
    lm_head.weight (untied only)        [V, H]      output_layer.weight [Vpad, H]                rows zero-padded

Config (read by ``config.loader.model_fields_from_hf``, written back on export): rope_theta (or transformers 5's
``rope_parameters.rope_theta``) -> rotary_base; llama3 rope scaling -> rope_scaling + factors; rms_norm_eps ->
norm_epsilon; tie_word_embeddings; vocab_size (real rows; padding is removed on export).
Not supported (clear error): Llama ``attention_bias`` / ``mlp_bias`` (o_proj / MLP biases), Qwen2 sliding window,
rope types other than default / llama3, activations other than silu.

Memory: every path streams one parameter at a time (``safe_open`` reads one tensor; shard files are written
incrementally by :class:`.checkpoint_io.SafetensorsWriter`): peak ~ the largest full tensor (the embedding) x 2.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...config.loader import model_fields_from_hf
from ...config.schema import Config, ConfigError, ModelConfig, ParallelConfig
from ...planning import ModelShape
from ..train.step import model_logits
from . import checkpoint_io as io
from .checkpoint_io import CheckpointError
from .checkpoint_source import find, load_checkpoint_weights, open_checkpoint

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# megatron per-layer suffix -> HF per-layer suffixes (concatenated / grouped by the transform of the suffix)
LAYER_MAP: Dict[str, Tuple[str, ...]] = {
    "input_layernorm.weight": ("input_layernorm.weight",),
    "self_attention.linear_qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                         "self_attn.v_proj.weight"),
    "self_attention.linear_qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "self_attention.linear_proj.weight": ("self_attn.o_proj.weight",),
    "pre_mlp_layernorm.weight": ("post_attention_layernorm.weight",),
    "mlp.linear_fc1.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.linear_fc2.weight": ("mlp.down_proj.weight",),
}
GLOBAL_MAP: Dict[str, str] = {"embedding.word_embeddings.weight": "model.embed_tokens.weight",
                              "decoder.final_layernorm.weight": "model.norm.weight",
                              "output_layer.weight": "lm_head.weight"}


# The shape facts the mapping needs (from a ModelConfig or the stored checkpoint fields): the planner's shape.
Shape = ModelShape


def megatron_names(s: Shape, stage: int = 0, pp: int = 1) -> List[str]:
    """Canonical global megatron names held by pipeline ``stage`` of ``pp`` (all of them for pp=1), in order."""
    if s.layers % pp:
        raise CheckpointError(f"PP={pp} does not divide num_layers={s.layers}")
    per = s.layers // pp
    names = ["embedding.word_embeddings.weight"] if stage == 0 else []
    for i in range(stage * per, (stage + 1) * per):
        names += [f"decoder.layers.{i}.{k}" for k in LAYER_MAP if s.qkv_bias or not k.endswith("linear_qkv.bias")]
    if stage == pp - 1:
        names.append("decoder.final_layernorm.weight")
        if not s.tied:
            names.append("output_layer.weight")
    return names


def hf_sources(name: str) -> List[str]:
    """HF tensor names that make up megatron parameter ``name``."""
    m = _LAYER.match(name)
    if m:
        return [f"model.layers.{m.group(1)}.{x}" for x in LAYER_MAP[m.group(2)]]
    return [GLOBAL_MAP[name]]


def hf_shape(hf_name: str, s: Shape) -> List[int]:
    """Expected shape of an HF tensor."""
    q, kv = s.heads * s.head_dim, s.groups * s.head_dim
    table = {"q_proj.weight": [q, s.hidden], "k_proj.weight": [kv, s.hidden], "v_proj.weight": [kv, s.hidden],
             "q_proj.bias": [q], "k_proj.bias": [kv], "v_proj.bias": [kv], "o_proj.weight": [s.hidden, q],
             "gate_proj.weight": [s.ffn, s.hidden], "up_proj.weight": [s.ffn, s.hidden],
             "down_proj.weight": [s.hidden, s.ffn], "embed_tokens.weight": [s.vocab, s.hidden],
             "lm_head.weight": [s.vocab, s.hidden]}
    for suffix, shape in table.items():
        if hf_name.endswith(suffix):
            return shape
    return [s.hidden]  # the RMSNorm weights


def megatron_shape(name: str, s: Shape, padded: int) -> List[int]:
    """Full (unsharded) shape of a megatron parameter; vocab rows padded to ``padded``."""
    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        return [padded, s.hidden]
    shapes = [hf_shape(h, s) for h in hf_sources(name)]
    return [sum(x[0] for x in shapes)] + shapes[0][1:]


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: Shape) -> torch.Tensor:
    """HF q [nh*hd(, H)], k/v [ng*hd(, H)] -> megatron grouped qkv [ng*(nh/ng+2)*hd(, H)] (weights or biases)."""
    per = s.heads // s.groups
    rest = tuple(q.shape[1:])
    qg = q.reshape((s.groups, per * s.head_dim) + rest)
    kg = k.reshape((s.groups, s.head_dim) + rest)
    vg = v.reshape((s.groups, s.head_dim) + rest)
    return torch.cat([qg, kg, vg], dim=1).reshape((-1,) + rest)


def split_qkv(qkv: torch.Tensor, s: Shape) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`merge_qkv`."""
    per = s.heads // s.groups
    rest = tuple(qkv.shape[1:])
    g = qkv.reshape((s.groups, (per + 2) * s.head_dim) + rest)
    q, k, v = g.split([per * s.head_dim, s.head_dim, s.head_dim], dim=1)
    return (q.reshape((-1,) + rest).contiguous(), k.reshape((-1,) + rest).contiguous(),
            v.reshape((-1,) + rest).contiguous())


def to_megatron(name: str, parts: Sequence[torch.Tensor], s: Shape, padded: int) -> torch.Tensor:
    """The full megatron tensor of ``name`` from its HF parts (in :func:`hf_sources` order)."""
    if name.endswith("linear_qkv.weight") or name.endswith("linear_qkv.bias"):
        return merge_qkv(parts[0], parts[1], parts[2], s)
    if name.endswith("linear_fc1.weight"):
        return torch.cat([parts[0], parts[1]], dim=0)
    return io.fit_vocab(parts[0], name, s.vocab, padded)


def to_hf(name: str, full: torch.Tensor, s: Shape) -> List[Tuple[str, torch.Tensor]]:
    """HF (name, tensor) pairs of megatron parameter ``name``; vocab padding removed."""
    srcs = hf_sources(name)
    if name.endswith("linear_qkv.weight") or name.endswith("linear_qkv.bias"):
        return list(zip(srcs, split_qkv(full, s)))
    if name.endswith("linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return [(srcs[0], gate.contiguous()), (srcs[1], up.contiguous())]
    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        full = full[: s.vocab]
    return [(srcs[0], full.contiguous())]


# ----------------------------------------------------------------------------------------------- HF reader
def read_hf_config(config_path: str) -> Tuple[Dict[str, object], Dict[str, object]]:
    """(config.json as a dict, the ModelConfig fields it implies); refuses what the mapping cannot represent."""
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{config_path}: not found (an HF model directory needs config.json)")
    with open(config_path) as f:
        try:
            c = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    bad = [f"missing key {k!r}" for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                           "num_attention_heads", "vocab_size") if k not in c]
    if c.get("model_type") == "llama" and (c.get("attention_bias") or c.get("mlp_bias")):
        bad.append("attention_bias/mlp_bias (o_proj / MLP biases have no megatron counterpart here)")
    if c.get("use_sliding_window"):
        bad.append("use_sliding_window=true")
    if c.get("hidden_act", "silu") != "silu":
        bad.append(f"hidden_act={c.get('hidden_act')!r} (only silu)")
    rope = c.get("rope_scaling") or c.get("rope_parameters") or {}
    rtype = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rtype not in ("default", "llama3"):
        bad.append(f"rope type {rtype!r} (only default and llama3)")
    if bad and c.get("model_type") in ("qwen2", "llama"):
        raise CheckpointError(f"{config_path}: unsupported: {'; '.join(bad)}")
    try:
        fields = model_fields_from_hf(config_path)
    except ConfigError as e:  # drop the `model.hf_config` key prefix: here the file is the input, not a key
        raise CheckpointError(str(e).replace("config key `model.hf_config`: ", "")) from None
    return c, fields


class HFCheckpoint:
    """An HF model directory: config.json + model.safetensors or model-*-of-*.safetensors with
    model.safetensors.index.json. Reads one tensor at a time."""

    def __init__(self, hf_dir: str):
        self.dir = hf_dir
        self.config_path = os.path.join(hf_dir, "config.json")
        self.config, self.fields = read_hf_config(self.config_path)
        self.shape = Shape.of(self.fields)
        self.files = self._weight_map()

    def _weight_map(self) -> Dict[str, str]:
        index = os.path.join(self.dir, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                try:
                    wm = json.load(f)
                except json.JSONDecodeError as e:
                    raise CheckpointError(f"{index}:{e.lineno}: invalid JSON ({e.msg})") from None
            wm = wm.get("weight_map") if isinstance(wm, dict) else None
            if not isinstance(wm, dict):
                raise CheckpointError(f"{index}: no weight_map")
            return {k: os.path.join(self.dir, v) for k, v in wm.items()}
        single = os.path.join(self.dir, "model.safetensors")
        files = [single] if os.path.isfile(single) else sorted(
            os.path.join(self.dir, x) for x in os.listdir(self.dir) if x.endswith(".safetensors"))
        if not files:
            raise CheckpointError(f"{self.dir}: no *.safetensors weights (only safetensors checkpoints are supported)")
        out = {}
        for path in files:
            with io.open_safetensors(path) as f:
                out.update({k: path for k in f.keys()})
        return out

    def get(self, name: str) -> torch.Tensor:
        """HF tensor ``name``, checked against the shape the config implies."""
        if name not in self.files:
            raise CheckpointError(f"{self.dir}: tensor {name} is missing from the safetensors files")
        path = self.files[name]
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: listed in the index for {name} but not found")
        with io.open_safetensors(path) as f:
            t = f.get_tensor(name)
        want = hf_shape(name, self.shape)
        if list(t.shape) != want:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(t.shape)}, config.json implies {want}")
        return t

    def dtype(self, name: str) -> torch.dtype:
        """Stored dtype of the (first) HF source of megatron parameter ``name``, without reading data."""
        src = hf_sources(name)[0]
        if src not in self.files:
            raise CheckpointError(f"{self.dir}: tensor {src} is missing from the safetensors files")
        with io.open_safetensors(self.files[src]) as f:
            code = f.get_slice(src).get_dtype()
        if code not in _ST_DTYPES:
            raise CheckpointError(f"{self.files[src]}: tensor {src} has dtype {code}, expected F32/BF16/F16")
        return _ST_DTYPES[code]

    def megatron_tensor(self, name: str, padded: int) -> torch.Tensor:
        return to_megatron(name, [self.get(h) for h in hf_sources(name)], self.shape, padded)


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


# --------------------------------------------------------------------------------------------- import / export
def import_hf(hf_dir: str, out_dir: str, tp: int = 1, pp: int = 1, dtype: Optional[torch.dtype] = None,
              log: Callable[[str], None] = lambda s: None) -> io.CheckpointMeta:
    """Convert an HF directory into a checkpoint sharded for (tp, pp), in one process, streaming: per pipeline
    stage one shard file per TP rank is open, and each parameter's full tensor is built once and its TP slices
    appended to those files. Tensors keep the HF dtype unless ``dtype`` is given."""
    import shutil

    hf = HFCheckpoint(hf_dir)
    s = hf.shape
    for what, n in (("num_attention_heads", s.heads), ("num_query_groups", s.groups), ("ffn_hidden_size", s.ffn)):
        if n % tp:
            raise CheckpointError(f"{hf.config_path}: TP={tp} does not divide {what}={n}")
    if s.layers % pp:
        raise CheckpointError(f"{hf.config_path}: PP={pp} does not divide num_layers={s.layers}")
    padded = io.padded_vocab(s.vocab, tp)
    os.makedirs(out_dir, exist_ok=True)
    shards = []
    for stage in range(pp):
        names = megatron_names(s, stage, pp)
        shapes = {n: megatron_shape(n, s, padded) for n in names}
        dtypes = {n: dtype or hf.dtype(n) for n in names}
        writers = [io.SafetensorsWriter(os.path.join(out_dir, io.shard_file(t, stage)),
                                        io.iter_shard_specs(names, shapes, dtypes, tp),
                                        {"format": "pt", "tp_rank": str(t), "pp_rank": str(stage)})
                   for t in range(tp)]
        for n in names:
            full = hf.megatron_tensor(n, padded).to(dtypes[n])
            for t, w in enumerate(writers):
                w.write(n, io.tp_shard(full, n, tp, t).contiguous())
            del full
        for w in writers:
            w.close()
        shards += [{"tp_rank": t, "pp_rank": stage, "file": io.shard_file(t, stage), "tensors": names}
                   for t in range(tp)]
        log(f"stage {stage}: wrote {tp} shard file(s), {len(names)} tensors")
    shutil.copyfile(hf.config_path, os.path.join(out_dir, "hf_config.json"))
    fields = {k: hf.fields.get(k) for k in io.SHAPE_FIELDS + io.OTHER_FIELDS}
    fields.update(kv_channels=s.head_dim, vocab_size=s.vocab)
    io.write_meta(out_dir, tp, pp, _with_defaults(fields), s.vocab, padded, shards,
                  {"hf_dir": os.path.abspath(hf_dir), "hf_config": "hf_config.json"})
    return io.read_meta(out_dir)


def _with_defaults(fields: Dict[str, object]) -> Dict[str, object]:
    """Fill fields the HF config left out with the ModelConfig defaults (e.g. rope factors without scaling)."""
    base = io.model_fields(ModelConfig(**{k: v for k, v in fields.items() if v is not None}))
    base.update({k: v for k, v in fields.items() if v is not None})
    return base


def export_config(meta: io.CheckpointMeta, dtype: torch.dtype) -> Dict[str, object]:
    """The HF config.json of a checkpoint: the imported original (when present) with every model field written
    back from ``meml_ckpt.json``; otherwise synthesized (legacy ``rope_theta`` / ``rope_scaling`` keys, which
    transformers 4 and 5 both read)."""
    m = meta.model
    src = os.path.join(meta.path, str(meta.source.get("hf_config", "hf_config.json")))
    base: Dict[str, object] = {}
    if os.path.isfile(src):
        with open(src) as f:
            base = json.load(f)
    arch = m["arch"]
    if arch == "llama" and m["add_qkv_bias"]:
        raise CheckpointError(f"{meta.path}: a llama model with qkv bias has no HF Llama equivalent")
    base.update({
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"], "model_type": arch,
        "hidden_size": m["hidden_size"], "intermediate_size": m["ffn_hidden_size"],
        "num_hidden_layers": m["num_layers"], "num_attention_heads": m["num_attention_heads"],
        "num_key_value_heads": m["num_query_groups"], "vocab_size": meta.vocab_size,
        "max_position_embeddings": m["max_position_embeddings"], "rms_norm_eps": m["norm_epsilon"],
        "tie_word_embeddings": m["tie_word_embeddings"], "hidden_act": "silu"})
    if arch == "llama" or "head_dim" in base:
        base["head_dim"] = m["kv_channels"]
    if arch == "llama":
        base["attention_bias"] = False
    base["torch_dtype" if "torch_dtype" in base else "dtype"] = str(dtype).replace("torch.", "")
    scaling = None
    if m["rope_scaling"] == "llama3":
        scaling = {"rope_type": "llama3", "factor": m["rope_scaling_factor"],
                   "low_freq_factor": m["rope_low_freq_factor"], "high_freq_factor": m["rope_high_freq_factor"],
                   "original_max_position_embeddings": m["rope_original_max_position"]}
    if isinstance(base.get("rope_parameters"), dict):
        base["rope_parameters"] = dict(scaling or {"rope_type": "default"}, rope_theta=m["rotary_base"])
    else:
        base["rope_theta"] = m["rotary_base"]
        base["rope_scaling"] = scaling
    return base


def write_hf_safetensors(out_dir: str, specs: Sequence[Tuple[str, torch.dtype, Sequence[int]]],
                         get: Callable[[str], torch.Tensor], max_shard_bytes: int = 5 * 2 ** 30,
                         log: Callable[[str], None] = lambda s: None) -> List[str]:
    """Write HF weight files the way ``save_pretrained`` lays them out: ``model.safetensors``, or
    ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json`` when the total exceeds
    ``max_shard_bytes``. ``get(name)`` produces each tensor when its turn comes (in ``specs`` order), so only one
    file is open and one tensor is in memory at a time. Returns the weight files."""
    nbytes = [int(torch.Size(sh).numel()) * torch.empty((), dtype=dt).element_size() for _, dt, sh in specs]
    files: List[List[int]] = [[]]
    size = 0
    for i, b in enumerate(nbytes):
        if files[-1] and size + b > max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append(i)
        size += b
    fnames = ["model.safetensors"] if len(files) == 1 else \
        [f"model-{k + 1:05d}-of-{len(files):05d}.safetensors" for k in range(len(files))]
    os.makedirs(out_dir, exist_ok=True)
    for k, idx in enumerate(files):
        with io.SafetensorsWriter(os.path.join(out_dir, fnames[k]), [specs[i] for i in idx]) as w:
            for i in idx:
                w.write(specs[i][0], get(specs[i][0]))
        log(f"wrote {fnames[k]} ({len(idx)} tensors)")
    if len(files) > 1:
        weight_map = {specs[i][0]: fnames[k] for k, idx in enumerate(files) for i in idx}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(nbytes)}, "weight_map": weight_map}, f, indent=2)
    return [os.path.join(out_dir, x) for x in fnames]


def export_hf(ckpt_dir: str, out_dir: str, max_shard_bytes: int = 5 * 2 ** 30,
              log: Callable[[str], None] = lambda s: None) -> List[str]:
    """Write a checkpoint (converted, a training checkpoint folder, or a run's checkpoint root: see
    :mod:`.checkpoint_source`) back as HF safetensors (:func:`write_hf_safetensors`) and config.json. Streams one
    parameter at a time: each is reassembled from its TP slices, split into HF tensors and appended to the open
    file. Returns the written weight files."""
    meta, reader = open_checkpoint(ckpt_dir, warn=log)
    s = Shape.of(dict(meta.model, vocab_size=meta.vocab_size))
    specs, source = [], {}  # (hf name, dtype, shape); hf name -> megatron name
    for n in meta.names():
        dtype, _ = reader.dtype_and_shape(n)
        for h in hf_sources(n):
            specs.append((h, dtype, hf_shape(h, s)))
            source[h] = n
    pending: Dict[str, torch.Tensor] = {}  # HF tensors of the current megatron parameter not yet written

    def get(hname: str) -> torch.Tensor:
        if hname not in pending:
            pending.update(to_hf(source[hname], reader.full(source[hname]), s))
        return pending.pop(hname)

    files = write_hf_safetensors(out_dir, specs, get, max_shard_bytes, log)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(export_config(meta, specs[0][1]), f, indent=2)
    return files


def write_random_hf(config_path: str, out_dir: str, dtype: torch.dtype = torch.float32, seed: int = 0,
                    max_shard_bytes: int = 2 ** 30, log: Callable[[str], None] = lambda s: None) -> int:
    """A random HF model of the shapes in ``config_path`` (e.g. Qwen2.5-1.5B's), generated and written one tensor
    at a time (memory: one tensor), HF-sharded. Weights ~ N(0, 0.02), norm weights 1 + N(0, 0.02). For memory
    measurements of the converter without a model hub. Returns the number of parameters written."""
    import shutil

    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(config_path, os.path.join(out_dir, "config.json"))
    s = Shape.of(read_hf_config(config_path)[1])
    specs = [(h, dtype, hf_shape(h, s)) for n in megatron_names(s) for h in hf_sources(n)]
    g = torch.Generator().manual_seed(seed)

    def get(name: str) -> torch.Tensor:
        shape = hf_shape(name, s)
        t = torch.randn(shape, generator=g, dtype=torch.float32).mul_(0.02)
        if name.endswith("norm.weight"):
            t.add_(1.0)
        return t.to(dtype)

    write_hf_safetensors(out_dir, specs, get, max_shard_bytes, log)
    return sum(int(torch.Size(sh).numel()) for _, _, sh in specs)


# ------------------------------------------------------------------------------------------ live model loading
def config_for(fields: Dict[str, object], tp: int = 1, pp: int = 1):
    """A run config whose model matches stored checkpoint fields, padded for ``tp`` (used by ``check``)."""
    m = ModelConfig(**{k: v for k, v in fields.items() if k in io.SHAPE_FIELDS + io.OTHER_FIELDS},
                    padded_vocab_size=io.padded_vocab(int(fields["vocab_size"]), tp))
    return Config(model=m, parallel=ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp))


def load_hf_weights(chunks, hf_dir: str, cfg) -> int:
    """Stream an HF directory's weights into this rank's shards (each rank reads only the tensors of its own
    stage). The run's ``cfg.model`` must match config.json in every shape field. Returns parameters loaded."""
    hf = HFCheckpoint(hf_dir)
    stored = _with_defaults({k: hf.fields.get(k) for k in io.SHAPE_FIELDS + io.OTHER_FIELDS})
    stored["kv_channels"] = hf.shape.head_dim
    try:
        io.check_model_matches(stored, cfg.model, hf.config_path)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (set model.hf_config={hf.config_path} to take the shapes from it)") from None
    return io.load_params(chunks, lambda name: hf.megatron_tensor(name, hf.shape.vocab), hf.shape.vocab,
                          hf.config_path)


def init_model_weights(chunks, cfg) -> Optional[str]:
    """Load the start weights the config names, after ``build_model``: ``model.init_from`` (a converted
    checkpoint directory, a training checkpoint folder or a run's checkpoint root) or ``model.init_from_hf`` (an
    HF directory, converted on the fly). Returns a short description of the source ("checkpoint DIR (N parameter
    tensors)"), or None when neither is set (the layout-invariant random init stays)."""
    import torch.distributed as dist

    m = cfg.model
    if m.init_from:
        quiet = dist.is_initialized() and dist.get_rank() != 0
        folder = find(m.init_from, warn=(lambda msg: None) if quiet else (lambda msg: print(msg, flush=True)))
        n = load_checkpoint_weights(chunks, folder, cfg)
        where = m.init_from if os.path.abspath(folder) == os.path.abspath(m.init_from) else f"{m.init_from} ({folder})"
        return f"checkpoint {where} ({n} parameter tensors)"
    if m.init_from_hf:
        n = load_hf_weights(chunks, m.init_from_hf, cfg)
        return f"HF directory {m.init_from_hf} ({n} parameter tensors)"
    return None


@torch.no_grad()
def full_logits(chunks, tokens: torch.Tensor, vocab: int) -> Optional[torch.Tensor]:
    """Logits [B, S, vocab] (fp32, on the CPU, padded vocab columns dropped) of ``tokens`` [B, S] through the
    pipeline; returned on the last stage (every TP rank, after an all-gather of the vocab shards), None elsewhere."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    store: List[torch.Tensor] = []

    def loss_func(logits: torch.Tensor):
        store.append(logits.detach().float())
        return logits.sum() * 0.0, {}

    def forward_step(data_iterator, model):
        return model_logits(model, next(data_iterator)), loss_func

    tokens = tokens.to(next(chunks[0].parameters()).device)
    was_training = [c.training for c in chunks]
    for c in chunks:
        c.eval()
    try:
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([tokens]), model=chunks,
                                    num_microbatches=1, seq_length=tokens.shape[1],
                                    micro_batch_size=tokens.shape[0], forward_only=True)
    finally:
        for c, t in zip(chunks, was_training):
            c.train(t)
    if not ps.is_pipeline_last_stage():
        return None
    local = store[0].contiguous()
    tp = ps.get_tensor_model_parallel_world_size()
    if tp > 1:
        parts = [torch.empty_like(local) for _ in range(tp)]
        dist.all_gather(parts, local, group=ps.get_tensor_model_parallel_group())
        local = torch.cat(parts, dim=-1)
    return local[..., :vocab].cpu()
