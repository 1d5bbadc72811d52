"""Model weights from any checkpoint this project writes, behind the reader interface of :mod:`.checkpoint_io`, so
that ``python -m megatron_meml.convert_hf export`` and ``model.init_from`` take all of them:

  * a converted checkpoint folder (``meml_ckpt.json`` + safetensors shards, ``python -m megatron_meml.convert_hf
  import``);
  * a training checkpoint folder (``meta.json`` + ``rank_XXXXX.pt``, :mod:`.checkpoint`), e.g.
    ``runs/x/checkpoints/step_00000450``;
  * a training checkpoint root (``runs/x/checkpoints``, or the run directory that holds it): its newest complete
    checkpoint (:func:`.checkpoint.resolve`: sizes verified, a truncated or incomplete newest one falls back to the
    next older one with a warning).

A training checkpoint's rank files hold each rank's *local* model state (its TP slice of its pipeline stage, layers
numbered from 0 per stage); DP replicas are identical, so DP rank 0 of every (tp, pp) position is read. Files are
opened with ``torch.load(mmap=True)``: only the tensors that are read are paged in (optimizer state never is), so
memory stays ~one parameter at a time as for the safetensors format. Local names map to the global, canonical
(local-spec) names of the converted format by the stage's layer offset; ``_extra_state`` entries and the tied
``output_layer`` copy of the last stage are skipped. The model's shape comes from ``meta.json`` (written since
checkpoints record it) or else from the run's resolved ``config.yaml`` next to the checkpoint root.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ...config import ConfigError, load_config
from ..train.model import padded_vocab_size
from ..train.state import global_name
from . import checkpoint as tckpt
from . import checkpoint_io as io
from .checkpoint_io import CheckpointError

HF_CONFIG = "hf_config.json"  # the HF config.json a run's model came from, copied into its checkpoints


def _strip(name: str) -> str:
    while name.startswith("module."):
        name = name[len("module."):]
    return name


class TrainingShardReader(io.ShardReader):
    """:class:`.checkpoint_io.ShardReader` over a training checkpoint's rank files (see the module docstring)."""

    def __init__(self, meta: io.CheckpointMeta, files: Dict[Tuple[int, int], str], keys: Dict[str, str],
                 opened: Optional[Dict[str, Dict[str, torch.Tensor]]] = None):
        super().__init__(meta)
        self.files, self.keys = files, keys  # (tp, pp) -> rank file; global name -> local state-dict key
        self._open: Dict[str, Dict[str, torch.Tensor]] = dict(opened or {})

    def _state(self, fpath: str) -> Dict[str, torch.Tensor]:
        if fpath not in self._open:
            self._open[fpath] = _model_state(fpath)
        return self._open[fpath]

    def slice(self, name: str, tp_rank: int) -> torch.Tensor:
        stage = self.meta.stage_of(name)
        fpath = self.files[(tp_rank, stage)]
        t = self._state(fpath).get(self.keys[name])
        if not torch.is_tensor(t):
            raise CheckpointError(f"{fpath}: tensor {self.keys[name]} is missing")
        return t

    def dtype_and_shape(self, name: str) -> Tuple[torch.dtype, List[int]]:
        t = self.slice(name, 0)
        shape = list(t.shape)
        dim, _ = io.tp_layout(name)
        if dim is not None:
            shape[dim] *= self.meta.tp
        return t.dtype, shape


def _model_state(fpath: str) -> Dict[str, torch.Tensor]:
    """The (one) model chunk's state dict of a rank file, tensors memory-mapped."""
    model = tckpt.load_rank_file(fpath, mmap=True).get("model")
    if not isinstance(model, list) or len(model) != 1:
        raise CheckpointError(f"{fpath}: expected one model chunk per rank (no virtual pipeline), found "
                              f"{len(model) if isinstance(model, list) else 'none'}")
    return model[0]


def _rank_positions(meta: Dict[str, object]) -> List[Dict[str, int]]:
    """(file, tp_rank, pp_rank, dp_rank) of every rank file: recorded at save time, or else megatron's default
    rank order (tp fastest, then dp, then pp) for checkpoints written before it was recorded."""
    if meta.get("ranks"):
        return list(meta["ranks"])
    world, tp, pp = int(meta["world_size"]), int(meta["tp"]), int(meta["pp"])
    dp = world // (tp * pp)
    return [{"file": f"rank_{r:05d}.pt", "tp_rank": r % tp, "dp_rank": (r // tp) % dp, "pp_rank": r // (tp * dp)}
            for r in range(world)]


def _model_fields(path: str, meta: Dict[str, object]) -> Dict[str, object]:
    """The model section of a training checkpoint: meta.json, or the run's resolved config.yaml (older saves)."""
    if isinstance(meta.get("model"), dict):
        return dict(meta["model"], vocab_size=meta["vocab_size"])
    run_cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "config.yaml")
    if not os.path.isfile(run_cfg):
        raise CheckpointError(f"{os.path.join(path, 'meta.json')}: no model fields recorded and no run config.yaml "
                              f"at {run_cfg} to take them from")

    try:
        cfg = load_config(run_cfg)
    except ConfigError as e:
        raise CheckpointError(f"{run_cfg}: {e}") from None
    return dict(io.model_fields(cfg.model))


def read_training_checkpoint(path: str) -> Tuple[io.CheckpointMeta, TrainingShardReader]:
    """Meta (in the converted format's terms) and reader of one training checkpoint folder."""
    raw = tckpt.read_meta(path)
    problem = tckpt.verify(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is incomplete: {problem}")
    fields = _model_fields(path, raw)
    tp, pp = int(raw["tp"]), int(raw["pp"])
    layers = int(fields["num_layers"])
    files = {(int(r["tp_rank"]), int(r["pp_rank"])): os.path.join(path, r["file"])
             for r in _rank_positions(raw) if int(r["dp_rank"]) == 0}
    shards, keys, opened = [], {}, {}
    for stage in range(pp):
        for t in range(tp):
            fpath = files.get((t, stage))
            if fpath is None:
                raise CheckpointError(f"{os.path.join(path, 'meta.json')}: no rank file for tp_rank={t} "
                                      f"pp_rank={stage}")
            opened[fpath] = _model_state(fpath)
            names = []
            for key, v in opened[fpath].items():
                local = _strip(key)
                if not torch.is_tensor(v) or local.endswith("_extra_state"):
                    continue
                if local == "output_layer.weight" and fields.get("tie_word_embeddings") and stage > 0:
                    continue  # the last stage's copy of the tied embedding
                gname = io.canonical_name(global_name(local, stage * (layers // pp)))
                names.append(gname)
                keys[gname] = key
            shards.append({"tp_rank": t, "pp_rank": stage, "file": os.path.basename(fpath), "tensors": names})
    padded = int(raw.get("padded_vocab_size") or 0)
    if not padded:  # older saves: the embedding's rows x TP
        emb = TrainingShardReader(io.CheckpointMeta(path, tp, pp, fields, 0, 0, shards, {}), files, keys, opened)
        padded = emb.dtype_and_shape("embedding.word_embeddings.weight")[1][0]
    source = {"hf_config": HF_CONFIG} if os.path.isfile(os.path.join(path, HF_CONFIG)) else {}
    source.update(training_checkpoint=os.path.abspath(path), stage=raw.get("stage"), step=raw.get("step"))
    meta = io.CheckpointMeta(path=path, tp=tp, pp=pp, model=fields, vocab_size=int(fields["vocab_size"]),
                             padded_vocab_size=padded, shards=shards, source=source)
    return meta, TrainingShardReader(meta, files, keys, opened)


def find(path: str, warn: Callable[[str], None] = lambda msg: None) -> str:
    """The checkpoint folder ``path`` designates: itself when it is a converted or training checkpoint folder; the
    newest complete checkpoint when it is a training checkpoint root (or a run directory with ``checkpoints/``).
    CheckpointError naming ``path`` otherwise."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: not found")
    if os.path.isfile(os.path.join(path, io.META)) or os.path.isfile(os.path.join(path, "meta.json")):
        return path
    for root in (path, os.path.join(path, "checkpoints")):
        if tckpt.candidates(root) or os.path.isfile(os.path.join(root, "latest")):
            found = tckpt.resolve(root, warn=warn)
            if found is None:
                raise CheckpointError(f"{root}: no complete checkpoint")
            return found
    raise CheckpointError(f"{path}: not a checkpoint (no {io.META}, no meta.json, no step_* folders or `latest`)")


def open_checkpoint(path: str, warn: Callable[[str], None] = lambda msg: None
                    ) -> Tuple[io.CheckpointMeta, io.ShardReader]:
    """(meta, reader) of any checkpoint :func:`find` accepts."""
    folder = find(path, warn)
    if os.path.isfile(os.path.join(folder, io.META)):
        meta = io.read_meta(folder)
        return meta, io.ShardReader(meta)
    return read_training_checkpoint(folder)


def load_checkpoint_weights(chunks, ckpt_dir: str, cfg, warn=lambda msg: None) -> int:
    """Load a checkpoint's model weights into this rank's model chunks (the trainer's ``model.init_from``): a
    converted checkpoint, a training checkpoint folder or a training checkpoint root (its newest complete one; see
    :mod:`.checkpoint_source`). Works at any run TP/PP: with the checkpoint's TP and vocab padding each rank reads
    its own slices; otherwise every parameter is reassembled from the checkpoint's TP slices and re-sharded.
    Raises :class:`CheckpointError` naming the field or tensor when the checkpoint does not fit ``cfg.model``.
    Returns the number of parameters loaded."""
    from megatron.core import parallel_state as ps

    meta, reader = open_checkpoint(ckpt_dir, warn)
    where = os.path.join(meta.path, io.META if os.path.isfile(os.path.join(meta.path, io.META)) else "meta.json")
    io.check_model_matches(meta.model, cfg.model, where)
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    same = meta.tp == tp and meta.padded_vocab_size == padded_vocab_size(cfg)
    fetch_slice = (lambda name: reader.slice(name, rank)) if same else None
    return io.load_params(chunks, reader.full, meta.vocab_size, where, fetch_slice=fetch_slice)


def hf_config_source(cfg) -> Optional[str]:
    """The HF config.json the run's model came from (``model.hf_config``, ``model.init_from_hf``'s config.json, or
    the one recorded in the ``model.init_from`` checkpoint), to be copied into its checkpoints; None when there is
    none. HF export starts from it, so tokenizer ids and other non-shape fields survive training. Relative paths
    are relative to the working directory (the one path rule, config/schema.py)."""
    m = cfg.model
    paths = []
    if m.hf_config:
        paths.append(os.path.expanduser(m.hf_config))
    if m.init_from_hf:
        paths.append(os.path.join(os.path.expanduser(m.init_from_hf), "config.json"))
    if m.init_from:
        try:
            paths.append(os.path.join(find(os.path.expanduser(m.init_from)), HF_CONFIG))
        except CheckpointError:
            pass
    return next((p for p in paths if os.path.isfile(p)), None)
