"""Pre-tokenized MEF shards: the rendered MEF rows of a run, in the run's order, as numpy files plus an index.

Written by ``python -m megatron_meml.pretokenize``, read by the DALI loader (data/dali_loader.py,
``data.loader=dali``). Layout of a shard folder::

    index.json                 {"format": 1, "rows": N, "shards": [{"tokens", "mask", "offsets", "rows"}, ...],
                                "experts": {"0": n0, ...}, "meta": {...}}
    shard-00000.tokens.npy     int32 [T0]      the token ids of the shard's rows, concatenated
    shard-00000.mask.npy       uint8 [T0]      loss mask (1 = assistant token), aligned with tokens
    shard-00000.offsets.npy    int64 [R0 + 1]  row r is tokens[offsets[r]:offsets[r + 1]]
    shard-00000.experts.npy    int16 [R0]      the expert of each row

Row ``g`` of the run (``g = step * global_batch_size + i`` modulo N, the MEF loop's order) is row ``g - first`` of
the shard whose range holds it. ``meta`` records what the tokens depend on (tokenizer name and size, chat template,
the expert prompts' sha256, dataset, split, seed, the trace file's sha256) so a run refuses shards written for a
different setup (:func:`check_meta`, one line naming ``data.shards``). Files are written to a temporary name and
renamed; ``index.json`` is written last, so a folder with an index is complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..config.schema import ConfigError

FORMAT = 1
INDEX = "index.json"
META_KEYS = ("tokenizer", "vocab_size", "chat_template", "prompts_sha256", "data", "train_split", "seed",
             "traces_sha256", "num_experts")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_meta(cfg, tokenizer, prompts: Sequence[str]) -> Dict[str, object]:
    """What a run's MEF tokens depend on (compared by :func:`check_meta`)."""
    d = cfg.data
    traces = cfg.mef.traces
    return {"tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__), "vocab_size": tokenizer.vocab_size,
            "chat_template": d.chat_template, "prompts_sha256": sha256_text(json.dumps(list(prompts))),
            "data": d.name, "train_split": d.train_split, "seed": d.seed, "order_seed": cfg.seed,
            "traces_sha256": file_sha256(traces) if traces and os.path.isfile(traces) else None,
            "num_experts": cfg.experts.num_experts}


def _save(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp.{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def write_shards(folder: str, examples: Iterable[Tuple[Sequence[int], Sequence[int], int]], meta: Dict[str, object],
                 rows_per_shard: int = 65536) -> Dict[str, object]:
    """Write ``(ids, mask, expert)`` rows in order; returns the index (also written as ``index.json``, last)."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(os.path.join(folder, INDEX)):
        os.remove(os.path.join(folder, INDEX))  # the old shards are incomplete from now on
    shards: List[dict] = []
    experts: Dict[str, int] = {}
    buf: List[Tuple[Sequence[int], Sequence[int], int]] = []
    total = 0

    def flush() -> None:
        k = len(shards)
        lengths = np.array([len(ids) for ids, _, _ in buf], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate([np.asarray(ids, dtype=np.int32) for ids, _, _ in buf]) if buf else \
            np.zeros(0, np.int32)
        mask = np.concatenate([np.asarray(m, dtype=np.uint8) for _, m, _ in buf]) if buf else np.zeros(0, np.uint8)
        names = {kind: f"shard-{k:05d}.{kind}.npy" for kind in ("tokens", "mask", "offsets", "experts")}
        _save(os.path.join(folder, names["tokens"]), tokens)
        _save(os.path.join(folder, names["mask"]), mask)
        _save(os.path.join(folder, names["offsets"]), offsets)
        _save(os.path.join(folder, names["experts"]), np.array([e for _, _, e in buf], dtype=np.int16))
        shards.append(dict(names, rows=len(buf)))
        buf.clear()

    for ids, mask, expert in examples:
        if len(ids) != len(mask):
            raise ValueError(f"row {total}: {len(ids)} tokens but {len(mask)} mask entries")
        buf.append((ids, mask, expert))
        experts[str(expert)] = experts.get(str(expert), 0) + 1
        total += 1
        if len(buf) == rows_per_shard:
            flush()
    if buf or not shards:
        flush()
    index = {"format": FORMAT, "rows": total, "shards": shards, "experts": experts, "meta": meta}
    tmp = os.path.join(folder, f"{INDEX}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, os.path.join(folder, INDEX))
    return index


def read_index(folder: str) -> Dict[str, object]:
    """The index of a complete shard folder; ConfigError naming ``data.shards`` otherwise."""
    path = os.path.join(folder, INDEX)
    try:
        with open(path) as f:
            index = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config key `data.shards`: no {INDEX} in {os.path.abspath(folder)}; write the shards "
                          f"with `python -m megatron_meml.pretokenize CONFIG.yaml --out {folder}`") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config key `data.shards`: {path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if index.get("format") != FORMAT or not index.get("rows"):
        raise ConfigError(f"config key `data.shards`: {path}: format {index.get('format')!r} with "
                          f"{index.get('rows')!r} rows (expected format {FORMAT}, at least one row)")
    return index


def check_meta(index: Dict[str, object], expected: Dict[str, object], folder: str) -> None:
    """One line naming ``data.shards`` and the first setting the shards were written for differently."""
    meta = index.get("meta") or {}
    for key in META_KEYS:
        if meta.get(key) != expected.get(key):
            raise ConfigError(f"config key `data.shards`: {os.path.abspath(folder)} was written for {key}="
                              f"{meta.get(key)!r}, this run has {expected.get(key)!r}; rerun python -m "
                              f"megatron_meml.pretokenize with this config")


class ShardReader:
    """Row access by global row index over a shard folder. Memory maps are opened lazily and dropped when pickled,
    so the reader can travel to DALI's worker processes without copying the shards."""

    def __init__(self, folder: str, index: Optional[Dict[str, object]] = None):
        self.folder = folder
        self.index = index or read_index(folder)
        self.rows = int(self.index["rows"])
        self.first = np.cumsum([0] + [s["rows"] for s in self.index["shards"]]).tolist()
        self._maps: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _shard(self, k: int):
        if k not in self._maps:
            s = self.index["shards"][k]
            load = lambda name: np.load(os.path.join(self.folder, s[name]), mmap_mode="r")  # noqa: E731
            self._maps[k] = (load("tokens"), load("mask"), load("offsets"))
        return self._maps[k]

    def row(self, g: int) -> Tuple[np.ndarray, np.ndarray]:
        """(ids int32 [L], mask uint8 [L]) of run row ``g`` (0 <= g < rows)."""
        k = int(np.searchsorted(self.first, g, side="right") - 1)
        tokens, mask, offsets = self._shard(k)
        r = g - self.first[k]
        lo, hi = int(offsets[r]), int(offsets[r + 1])
        return np.array(tokens[lo:hi]), np.array(mask[lo:hi])

    def batch_rows(self, step: int, global_batch_size: int) -> List[int]:
        """The run rows of MEF step ``step``: ``(step * B + i) mod N`` for i < B (the default loader's order)."""
        return [(step * global_batch_size + i) % self.rows for i in range(global_batch_size)]
