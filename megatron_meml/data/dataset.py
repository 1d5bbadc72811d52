"""One entry point for every dataset: ``load_dataset(name, path, split)`` -> ``List[Record]``, plus sharding.

Datasets and splits (file names under ``<data root>/<name>/``):
  * ``gsm8k``      train | test                         (train.jsonl, test.jsonl)
  * ``mathqa``     dev | test | challenge_test; ``train`` loads dev (no train.json offline; a warning says so)
  * ``strategyqa`` train | dev                          (train.json, dev.json)
  * ``synthetic``  train | test, generated (``path`` is ignored; keyword arguments go to ``load_synthetic``)

``path`` may be the data root (the folder ``python -m megatron_meml.prepare_data`` writes), the dataset folder, or the split file
itself. Splits are the files as published, in file order, so they are deterministic; shuffling is the consumer's
business. ``path=None`` means :func:`default_data_root`: ``$MEML_DATA`` when set, else ``data`` under the working
directory. A relative path is relative to the working directory, like every path of the config (see
config/schema.py). A missing split file is a one-line :class:`DataError` that names ``data.path`` and
``python -m megatron_meml.prepare_data``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, TypeVar, Union

from ..types import Record
from . import gsm8k, mathqa, strategyqa
from .errors import DataError, LoadSummary
from .synthetic import load_synthetic

T = TypeVar("T")

LOADERS = {"gsm8k": gsm8k.load_gsm8k, "mathqa": mathqa.load_mathqa, "strategyqa": strategyqa.load_strategyqa}
SPLIT_FILES: Dict[str, Dict[str, Union[str, Tuple[str, ...]]]] = {"gsm8k": gsm8k.SPLITS, "mathqa": mathqa.SPLITS,
                                          "strategyqa": strategyqa.SPLITS}
DATASETS = tuple(LOADERS) + ("synthetic",)
DEFAULT_DATA_DIR = "data"
PREPARE_HINT = "python -m megatron_meml.prepare_data --out {root}"


def default_data_root() -> str:
    """``$MEML_DATA`` when set, else ``data`` (relative to the working directory)."""
    return os.environ.get("MEML_DATA") or DEFAULT_DATA_DIR


def resolve_data_path(path: Optional[str]) -> str:
    """An absolute data path: None -> :func:`default_data_root`; a relative path is taken from the working
    directory (``~`` is expanded)."""
    return os.path.abspath(os.path.expanduser(default_data_root() if path is None else path))


def missing_data_message(root: str, what: str, tried: Sequence[str]) -> str:
    """The one line shown when a data file is missing: names ``data.path`` and the tool that writes the layout."""
    return (f"{what} not found (looked for {' and '.join(tried)}); set data.path (or $MEML_DATA) to the folder that "
            f"holds the datasets, or write them there with `{PREPARE_HINT.format(root=root)}`")


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
    names = files[split] if isinstance(files[split], tuple) else (files[split],)
    tried = [os.path.join(d, f) for f in names for d in (os.path.join(root, name), root)]
    for cand in tried:
        if os.path.isfile(cand):
            return cand
    raise DataError(root, None, missing_data_message(root, f"the {name} {split!r} split", tried))


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
