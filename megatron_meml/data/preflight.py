"""Check, before any process group or model is built, that the files a run will read exist.

A run reads the train split (MEF without traces, RIEL), the eval split (evaluation), the MEF trace file
(``mef.traces``) and, for ``data.loader=dali``, the pre-tokenized shards. Without this check a missing file shows
up minutes later as a traceback from inside a stage; here it is one :class:`ConfigError` line naming the config
key and the tool that writes the file:

  * a dataset split -> ``data.path`` and ``python -m megatron_meml.prepare_data``
  * ``mef.traces``  -> ``python -m megatron_meml.build_mef_data``
  * ``data.shards`` -> ``python -m megatron_meml.pretokenize``

Relative paths are relative to the working directory (the one path rule, config/schema.py).
"""
from __future__ import annotations

import os

from ..config.schema import ConfigError
from .dali_loader import import_dali
from .dataset import split_file
from .errors import DataError
from .shards import read_index


def check_run_inputs(cfg) -> None:
    """Raise :class:`ConfigError` (one line) when a file the configured stages read is missing."""
    d = cfg.data
    if d.name != "synthetic":
        splits = []
        if cfg.riel.enabled or (cfg.mef.enabled and (not cfg.mef.traces or cfg.mef.drop_unverified)):
            splits.append(("data.train_split", d.train_split))
        if cfg.riel.enabled and cfg.riel.train_split:
            splits.append(("riel.train_split", cfg.riel.train_split))
        if cfg.eval.enabled:
            splits.append(("data.eval_split", d.eval_split))
        for key, split in splits:
            try:
                split_file(d.name, d.path, split)
            except DataError as e:
                raise ConfigError(f"config key `data.path` ({e.path}): {e.reason}") from None
            except ValueError as e:
                raise ConfigError(f"config key `{key}`: {e}") from None
    if cfg.mef.enabled and cfg.mef.traces and d.loader != "dali" and not os.path.isfile(cfg.mef.traces):
        raise ConfigError(
            f"config key `mef.traces`: file not found: {os.path.abspath(cfg.mef.traces)}; build it with `python -m "
            f"megatron_meml.build_mef_data --data {d.name} --data-path {d.path} --out {cfg.mef.traces}` (add "
            f"--traces TEACHER.jsonl for teacher experts), or set mef.traces=null to fine-tune on the dataset "
            f"rationale alone")
    if d.loader == "dali" and cfg.mef.enabled:
        import_dali()          # one line naming data.loader when NVIDIA DALI is not installed
        read_index(d.shards)   # one line naming data.shards when the shards are missing or incomplete
