"""The on-disk format of converted checkpoints (``python -m megatron_meml.convert_hf import``), a streaming safetensors
writer, and the name-based TP sharding arithmetic that lets one process shard a model for any TP/PP layout.

Format (version 1), one directory::

    CKPT/meml_ckpt.json                      {"format": "meml-ckpt", "version": 1, "tp": N, "pp": M,
                                              "model": {ModelConfig shape fields}, "vocab_size": V,
                                              "padded_vocab_size": Vpad, "shards": [{"tp_rank", "pp_rank",
                                              "file", "tensors": [global names]}], "source": {...}}
    CKPT/model_tp{t:02d}_pp{p:02d}.safetensors   rank (t, p)'s *local* tensors (its TP slice of its stage's
                                              parameters) under *global* megatron names (local-spec names,
                                              layers numbered 0..L-1 across stages); embedding / output rows
                                              padded with zeros from V to Vpad; tied output_layer not stored
    CKPT/hf_config.json                      the original HF config.json when imported from HF (export reuses it)

TP rules by parameter kind (same as megatron's ``partition_dim`` / ``partition_stride`` and :mod:`.state`):

    =======================================  ==============  ======
    name ends with                           partition dim   stride
    =======================================  ==============  ======
    word_embeddings.weight, output_layer     0 (vocab rows)  1
    linear_qkv.weight / .bias                0               1 (grouped per query group, plain split)
    linear_fc1.weight ([gate; up])           0               2 (rank r holds [gate_r; up_r])
    linear_proj.weight, linear_fc2.weight    1               1
    norms (*layernorm*.weight, *norm*)       replicated      -
    =======================================  ==============  ======

:func:`.checkpoint_source.load_checkpoint_weights` loads a checkpoint into a live model at any run TP/PP: when the
layouts agree each
rank reads exactly its own slice; otherwise each parameter's full tensor is reassembled from the checkpoint's TP
slices (one parameter at a time) and re-sharded.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from ..train import state
from ..train.model import padded_vocab_size
from ..train.state import unwrap

FORMAT, VERSION, META = "meml-ckpt", 1, "meml_ckpt.json"

# ModelConfig fields stored in meml_ckpt.json; the first group must match the run's config to load the weights.
SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "kv_channels", "add_qkv_bias", "tie_word_embeddings")
OTHER_FIELDS = ("arch", "vocab_size", "max_position_embeddings", "rotary_base", "rope_scaling", "rope_scaling_factor",
                "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_position", "norm_epsilon")

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file or tensor."""


def shard_file(tp_rank: int, pp_rank: int) -> str:
    return f"model_tp{tp_rank:02d}_pp{pp_rank:02d}.safetensors"


def padded_vocab(vocab: int, tp: int, multiple: int = 64) -> int:
    """Embedding rows for TP: ``vocab`` itself when TP divides it (Qwen2.5's 151936, Llama-3's 128256), else
    rounded up to a multiple of ``multiple * tp`` (megatron's rule). Padded rows are zero."""
    if vocab % tp == 0:
        return vocab
    m = multiple * tp
    return (vocab + m - 1) // m * m


# ----------------------------------------------------------------------------------------------- TP arithmetic
def tp_layout(name: str) -> Tuple[Optional[int], int]:
    """(partition_dim or None when replicated, stride) of a megatron parameter from its name (table above)."""
    if name.endswith("word_embeddings.weight") or name == "output_layer.weight":
        return 0, 1
    if ".linear_qkv." in name and not name.endswith("layer_norm_weight"):
        return 0, 1
    if name.endswith("linear_fc1.weight"):
        return 0, 2
    if name.endswith("linear_proj.weight") or name.endswith("linear_fc2.weight"):
        return 1, 1
    return None, 1


def tp_shard(full: torch.Tensor, name: str, tp: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s slice of ``full`` (a view where possible). Stride 2: ``[piece_r; piece_{tp+r}]``."""
    dim, stride = tp_layout(name)
    if tp == 1 or dim is None:
        return full
    if full.shape[dim] % (tp * stride):
        raise CheckpointError(f"tensor {name}: dim {dim} of shape {tuple(full.shape)} is not divisible by "
                              f"TP={tp} x stride {stride}")
    pieces = full.chunk(stride * tp, dim=dim)
    if stride == 1:
        return pieces[rank]
    return torch.cat([pieces[s * tp + rank] for s in range(stride)], dim=dim)


def tp_unshard(parts: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """Inverse of :func:`tp_shard`: the full tensor from all TP ranks' slices (in rank order)."""
    dim, stride = tp_layout(name)
    if len(parts) == 1 or dim is None:
        return parts[0]
    if stride == 1:
        return torch.cat(list(parts), dim=dim)
    chunks = [p.chunk(stride, dim=dim) for p in parts]
    return torch.cat([chunks[r][s] for s in range(stride) for r in range(len(parts))], dim=dim)


def local_shape(full_shape: Sequence[int], name: str, tp: int) -> List[int]:
    dim, _ = tp_layout(name)
    shape = list(full_shape)
    if dim is not None and tp > 1:
        shape[dim] //= tp
    return shape


# ------------------------------------------------------------------------------------- streaming safetensors
class SafetensorsWriter:
    """Writes a safetensors file one tensor at a time: the header is computed from ``specs`` [(name, dtype, shape)]
    up front, then :meth:`write` must be called once per tensor in the same order. Memory: one tensor.

    File layout: u64 little-endian header length N, N bytes of JSON header (space-padded to a multiple of 8),
    then the tensors' bytes back to back (``data_offsets`` relative to the end of the header)."""

    def __init__(self, path: str, specs: Sequence[Tuple[str, torch.dtype, Sequence[int]]],
                 metadata: Optional[Dict[str, str]] = None):
        header: Dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        self._order: List[Tuple[str, torch.dtype, Tuple[int, ...], int]] = []
        offset = 0
        for name, dtype, shape in specs:
            if dtype not in _DTYPES:
                raise CheckpointError(f"tensor {name}: dtype {dtype} cannot be written to safetensors")
            nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPES[dtype], "shape": [int(s) for s in shape],
                            "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, dtype, tuple(int(s) for s in shape), nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path = path
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order):
            raise CheckpointError(f"{self.path}: unexpected extra tensor {name}")
        want, dtype, shape, nbytes = self._order[self._next]
        if name != want:
            raise CheckpointError(f"{self.path}: expected tensor {want} next, got {name}")
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise CheckpointError(f"{self.path}: tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, header says "
                                  f"{shape} {dtype}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        self._f.write(memoryview(data.numpy()))
        self._next += 1

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.close()
        if self._next != len(self._order):
            raise CheckpointError(f"{self.path}: only {self._next} of {len(self._order)} tensors were written")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self._f.close()


@contextlib.contextmanager
def open_safetensors(path: str) -> Iterator[object]:
    """``safetensors.safe_open(path)`` whose failures (missing, truncated, corrupt header or data) raise
    :class:`CheckpointError` naming ``path`` (safetensors' own errors do not name the file)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not found")
    try:
        f = safe_open(path, framework="pt")
    except Exception as e:  # safetensors_rust.SafetensorError and friends
        raise CheckpointError(f"{path}: unreadable safetensors file, truncated or corrupt "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    with f:
        try:
            yield f
        except CheckpointError:
            raise
        except Exception as e:
            if isinstance(e, (KeyboardInterrupt, AssertionError)):
                raise
            raise CheckpointError(f"{path}: unreadable tensor data ({str(e).splitlines()[0] if str(e) else e!r})") \
                from None


def read_tensor(path: str, name: str) -> torch.Tensor:
    """One tensor from a safetensors file (memory: that tensor only)."""
    with open_safetensors(path) as f:
        if name not in f.keys():
            raise CheckpointError(f"{path}: tensor {name} is missing")
        return f.get_tensor(name)


# ------------------------------------------------------------------------------------------ checkpoint meta
@dataclass
class CheckpointMeta:
    """Parsed ``meml_ckpt.json``."""

    path: str
    tp: int
    pp: int
    model: Dict[str, object]
    vocab_size: int
    padded_vocab_size: int
    shards: List[Dict[str, object]]
    source: Dict[str, object]

    def shard(self, tp_rank: int, pp_rank: int) -> Dict[str, object]:
        for s in self.shards:
            if s["tp_rank"] == tp_rank and s["pp_rank"] == pp_rank:
                return s
        raise CheckpointError(f"{os.path.join(self.path, META)}: no shard for tp_rank={tp_rank} pp_rank={pp_rank}")

    def stage_of(self, name: str) -> int:
        """The checkpoint pipeline stage that stores global parameter ``name``."""
        for s in self.shards:
            if s["tp_rank"] == 0 and name in s["tensors"]:
                return int(s["pp_rank"])
        raise CheckpointError(f"{self.path}: tensor {name} is not in the checkpoint")

    def names(self) -> List[str]:
        """Every stored global name, in stage order."""
        return [n for p in range(self.pp) for n in self.shard(0, p)["tensors"]]


def write_meta(ckpt_dir: str, tp: int, pp: int, model: Dict[str, object], vocab_size: int, padded: int,
               shards: List[Dict[str, object]], source: Dict[str, object]) -> None:
    meta = {"format": FORMAT, "version": VERSION, "tp": tp, "pp": pp, "model": model, "vocab_size": vocab_size,
            "padded_vocab_size": padded, "shards": shards, "source": source}
    with open(os.path.join(ckpt_dir, META), "w") as f:
        json.dump(meta, f, indent=1)


def read_meta(ckpt_dir: str) -> CheckpointMeta:
    path = os.path.join(ckpt_dir, META)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not found (is {ckpt_dir} a converted checkpoint directory?)")
    try:
        with open(path) as f:
            m = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise CheckpointError(f"{path}: format {m.get('format')!r} version {m.get('version')!r}, expected "
                              f"{FORMAT!r} version {VERSION}")
    return CheckpointMeta(path=ckpt_dir, tp=m["tp"], pp=m["pp"], model=m["model"], vocab_size=m["vocab_size"],
                          padded_vocab_size=m["padded_vocab_size"], shards=m["shards"], source=m.get("source", {}))


def model_fields(m) -> Dict[str, object]:
    """The stored model fields of a ``ModelConfig`` (kv_channels resolved to the head dim)."""
    out = {k: getattr(m, k) for k in SHAPE_FIELDS + OTHER_FIELDS}
    out["kv_channels"] = m.kv_channels or m.hidden_size // m.num_attention_heads
    return out


def check_model_matches(stored: Dict[str, object], m, where: str) -> None:
    """Raise naming the first shape field where the checkpoint and the run's ``cfg.model`` disagree."""
    run = model_fields(m)
    for k in SHAPE_FIELDS:
        if stored.get(k) != run[k]:
            raise CheckpointError(f"{where}: model.{k}={stored.get(k)!r} in the checkpoint but the run's config "
                                  f"has model.{k}={run[k]!r}")


def fit_vocab(full: torch.Tensor, name: str, vocab: int, padded: int) -> torch.Tensor:
    """Embedding / output rows: keep the ``vocab`` real rows, zero-pad to ``padded`` rows (other tensors as is)."""
    if not (name.endswith("word_embeddings.weight") or name == "output_layer.weight"):
        return full
    if padded < vocab:
        raise CheckpointError(f"tensor {name}: the model has {padded} vocab rows, the checkpoint {vocab} real ones")
    if full.shape[0] == padded:
        return full
    out = full.new_zeros((padded,) + tuple(full.shape[1:]))
    out[:vocab] = full[:vocab]
    return out


class ShardReader:
    """Reads checkpoint tensors: a rank's own slice, or a full tensor reassembled from all TP slices."""

    def __init__(self, meta: CheckpointMeta):
        self.meta = meta

    def slice(self, name: str, tp_rank: int) -> torch.Tensor:
        stage = self.meta.stage_of(name)
        return read_tensor(os.path.join(self.meta.path, self.meta.shard(tp_rank, stage)["file"]), name)

    def full(self, name: str) -> torch.Tensor:
        return tp_unshard([self.slice(name, r) for r in range(self.meta.tp)], name)

    def dtype_and_shape(self, name: str) -> Tuple[torch.dtype, List[int]]:
        """Full (unsharded) dtype and shape of ``name`` without reading data."""
        stage = self.meta.stage_of(name)
        with open_safetensors(os.path.join(self.meta.path, self.meta.shard(0, stage)["file"])) as f:
            sl = f.get_slice(name)
            shape, dt = list(sl.get_shape()), sl.get_dtype()
        dtype = {v: k for k, v in _DTYPES.items()}[dt]
        dim, _ = tp_layout(name)
        if dim is not None:
            shape[dim] *= self.meta.tp
        return dtype, shape


def iter_shard_specs(names: Iterable[str], shapes: Dict[str, Sequence[int]], dtypes: Dict[str, torch.dtype],
                     tp: int) -> List[Tuple[str, torch.dtype, List[int]]]:
    """(name, dtype, local shape) of every tensor in one TP rank's shard file, in write order."""
    return [(n, dtypes[n], local_shape(shapes[n], n, tp)) for n in names]


# ------------------------------------------------------------------------------------ loading into a live model
# Transformer Engine fuses the RMSNorms into the following linear; the checkpoint always uses the local-spec names.
TE_TO_LOCAL = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
               "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}


def canonical_name(name: str) -> str:
    """Local-spec global name of a (global) parameter name from either the local or the TE layer spec."""
    for te, local in TE_TO_LOCAL.items():
        if name.endswith("." + te):
            return name[: -len(te)] + local
    return name


def live_parameters(chunks) -> List[Tuple[str, torch.nn.Parameter, bool]]:
    """(canonical global name, parameter, is_tied_output) for every parameter of this rank's model chunks. A tied
    ``output_layer.weight`` (last stage with PP > 1) is loaded from the embedding."""
    out = []
    for chunk in chunks:
        model = unwrap(chunk)
        num_layers = model.config.num_layers
        offset = state.layer_offset(num_layers)
        tied = getattr(model, "share_embeddings_and_output_weights", False)
        for name, p in model.named_parameters():
            gname = canonical_name(state.global_name(state._strip(name), offset))
            out.append((gname, p, tied and gname == "output_layer.weight"))
    return out


def _check_layout(name: str, p: torch.nn.Parameter) -> None:
    """The name rule of :func:`tp_layout` must agree with megatron's own tags on the live parameter."""
    dim, stride = tp_layout(name)
    live = (p.partition_dim, getattr(p, "partition_stride", 1)) if getattr(p, "tensor_model_parallel", False) \
        else (None, 1)
    if live != (dim, stride):
        raise CheckpointError(f"parameter {name}: megatron shards it as (dim, stride)={live}, the checkpoint name "
                              f"rule says {(dim, stride)}")


def load_params(chunks, fetch_full, vocab: int, where: str, fetch_slice=None) -> int:
    """Copy weights into this rank's shards. ``fetch_full(name)`` returns the full tensor of a canonical global
    name (vocab rows: ``vocab`` real ones, any padding); ``fetch_slice(name)``, when given, returns this rank's
    slice directly (same TP and padding as the model). Returns the number of parameters loaded."""
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    n = 0
    for name, p, tied_out in live_parameters(chunks):
        src = "embedding.word_embeddings.weight" if tied_out else name
        _check_layout(name, p)
        if fetch_slice is not None:
            shard = fetch_slice(src)
        else:
            full = fetch_full(src)
            dim, _ = tp_layout(name)
            padded = p.shape[0] * (tp if dim == 0 else 1)
            shard = state._tp_shard(fit_vocab(full, name, vocab, padded), p)
        if tuple(shard.shape) != tuple(p.shape):
            raise CheckpointError(f"{where}: tensor {src} gives a shard of shape {tuple(shard.shape)} for parameter "
                                  f"{name} of shape {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(shard.to(device=p.device, dtype=p.dtype))
        n += 1
    return n


def save_converted_checkpoint(chunks, cfg, ckpt_dir: str, source: Optional[Dict[str, object]] = None) -> None:
    """Collective: write the live model in this format (e.g. a trained model, for ``python -m megatron_meml.convert_hf
    export``). DP rank 0 of every (TP, PP) position writes its own slices under global names; global rank 0 writes
    the meta last. The tied ``output_layer`` copy on the last stage is not stored."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    t, p = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    mine = None
    if ps.get_data_parallel_rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        params = [(n, q) for n, q, tied_out in live_parameters(chunks) if not tied_out]
        with SafetensorsWriter(os.path.join(ckpt_dir, shard_file(t, p)), [(n, q.dtype, q.shape) for n, q in params],
                               {"format": "pt", "tp_rank": str(t), "pp_rank": str(p)}) as w:
            for n, q in params:
                w.write(n, q.detach())
        mine = {"tp_rank": t, "pp_rank": p, "file": shard_file(t, p), "tensors": [n for n, _ in params]}
    shards: List[Optional[Dict[str, object]]] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, mine)
    if dist.get_rank() == 0:
        shards = sorted((s for s in shards if s is not None), key=lambda s: (s["pp_rank"], s["tp_rank"]))
        write_meta(ckpt_dir, tp, pp, model_fields(cfg.model), cfg.model.vocab_size, padded_vocab_size(cfg), shards,
                   dict(source or {}))
    dist.barrier()
