"""One entry point for every dataset: ``load_dataset(name, path, split)`` -> ``List[Record]``, plus sharding.

Datasets and splits (file names under ``<data root>/<name>/``):
  * ``gsm8k``      train | test                         (train.jsonl, test.jsonl)
  * ``mathqa``     dev | test | challenge_test; ``train`` loads dev (no train.json offline; a warning says so)
  * ``strategyqa`` train | dev                          (train.json, dev.json)
  * ``synthetic``  train | test, generated (``path`` is ignored; keyword arguments go to ``load_synthetic``)

``path`` may be the data root (``shared/data``), the dataset folder, or the split file itself. Splits are the
files as published, in file order, so they are deterministic; shuffling is the consumer's business.
A relative data path (``data.path``, default ``../shared/data``) is resolved against the working directory when it
exists there, else against the repository root (the folder above the ``megatron_meml`` package).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, TypeVar

from ..types import Record
from . import gsm8k, mathqa, strategyqa
from .errors import DataError, LoadSummary
from .synthetic import load_synthetic

T = TypeVar("T")

LOADERS = {"gsm8k": gsm8k.load_gsm8k, "mathqa": mathqa.load_mathqa, "strategyqa": strategyqa.load_strategyqa}
SPLIT_FILES: Dict[str, Dict[str, str]] = {"gsm8k": gsm8k.SPLITS, "mathqa": mathqa.SPLITS,
                                          "strategyqa": strategyqa.SPLITS}
DATASETS = tuple(LOADERS) + ("synthetic",)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_data_root() -> str:
    """``$MEML_DATA`` when set, else ``<repo>/../shared/data``."""
    return os.environ.get("MEML_DATA") or os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data"))


def resolve_data_path(path: Optional[str]) -> str:
    """An absolute data path: None -> :func:`default_data_root`; relative -> cwd if it exists there, else the
    repository root (see module docstring)."""
    if path is None:
        return default_data_root()
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.normpath(os.path.join(REPO_ROOT, path))


def split_file(name: str, path: Optional[str], split: str) -> str:
    """The file holding ``split`` of dataset ``name`` (``path``: data root, dataset folder or the file)."""
    if name not in SPLIT_FILES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    files = SPLIT_FILES[name]
    if split not in files:
        raise ValueError(f"{name}: unknown split {split!r}; choose one of {', '.join(files)}")
    root = resolve_data_path(path)
    if os.path.isfile(root):
        return root
    tried = [os.path.join(root, name, files[split]), os.path.join(root, files[split])]
    for cand in tried:
        if os.path.isfile(cand):
            return cand
    raise DataError(root, None, f"no {name} {split!r} file; looked for {' and '.join(tried)}")


def load_dataset_with_summary(name: str, path: Optional[str], split: str, on_bad_record: str = "error",
                              **synthetic_kw) -> Tuple[List[Record], LoadSummary]:
    """Like :func:`load_dataset` and also return the :class:`LoadSummary` (skipped-record counts)."""
    if name == "synthetic":
        records = load_synthetic(split, **synthetic_kw)
        return records, LoadSummary(path="<synthetic>", loaded=len(records))
    if synthetic_kw:
        raise TypeError(f"{name}: unexpected keyword arguments {sorted(synthetic_kw)} (only synthetic takes any)")
    file = split_file(name, path, split)
    return LOADERS[name](file, split, on_bad_record)


def load_dataset(name: str, path: Optional[str], split: str, on_bad_record: str = "error",
                 **synthetic_kw) -> List[Record]:
    """Records of ``split`` of dataset ``name``. Bad records raise :class:`DataError` (``on_bad_record="error"``)
    or are skipped, counted and logged as one warning (``"skip"``)."""
    records, summary = load_dataset_with_summary(name, path, split, on_bad_record, **synthetic_kw)
    summary.log()
    return records


def shard(records: Sequence[T], rank: int, world_size: int) -> List[T]:
    """Rank ``rank``'s share: every ``world_size``-th record starting at ``rank`` (sizes differ by at most one;
    the union over ranks is every record exactly once)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard: need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    return list(records[rank::world_size])
