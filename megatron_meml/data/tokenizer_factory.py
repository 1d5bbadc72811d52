"""``load_tokenizer(name_or_path, path=None)``: one factory for every tokenizer.

  * ``byte``     the ByteTokenizer of the synthetic task (no file)
  * ``qwen2.5``  tiktoken ranks; ``path`` defaults to ``<data root>/tokenizers/qwen2.5/qwen.tiktoken``
  * ``llama3``   tiktoken ranks; ``path`` defaults to ``<data root>/tokenizers/llama3/tokenizer.model``
  * anything else is a path to a HF ``tokenizer.json`` (or a folder holding one)
``path`` may also be a folder holding the expected file. The data root is ``$MEML_DATA`` or
``<repo>/../shared/data`` (see data/dataset.py). :func:`tokenizer_from_config` applies ``data.tokenizer`` /
``data.tokenizer_path`` / ``data.path``.
"""
from __future__ import annotations

import os
from typing import Optional

from .dataset import resolve_data_path
from .hf_tokenizer import HFTokenizer
from .tiktoken_bpe import load_llama3, load_qwen25
from .tokenizer import ByteTokenizer, Tokenizer

DEFAULT_FILES = {"qwen2.5": os.path.join("tokenizers", "qwen2.5", "qwen.tiktoken"),
                 "llama3": os.path.join("tokenizers", "llama3", "tokenizer.model")}
NAMES = ("byte", "qwen2.5", "llama3")


def _locate(kind: str, path: Optional[str], data_root: Optional[str]) -> str:
    if path is None:
        path = os.path.join(resolve_data_path(data_root), DEFAULT_FILES[kind])
    if os.path.isdir(path):
        path = os.path.join(path, os.path.basename(DEFAULT_FILES[kind]))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} tokenizer file not found: {path} (set data.tokenizer_path, or data.path "
                                f"to a folder holding {DEFAULT_FILES[kind]})")
    return path


def load_tokenizer(name_or_path: str, path: Optional[str] = None, data_root: Optional[str] = None) -> Tokenizer:
    """A tokenizer by name (``byte`` | ``qwen2.5`` | ``llama3``) or a path to a HF ``tokenizer.json``."""
    if name_or_path == "byte":
        return ByteTokenizer()
    if name_or_path == "qwen2.5":
        return load_qwen25(_locate("qwen2.5", path, data_root))
    if name_or_path == "llama3":
        return load_llama3(_locate("llama3", path, data_root))
    file = path or name_or_path
    if os.path.isdir(file):
        file = os.path.join(file, "tokenizer.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"tokenizer {name_or_path!r}: not one of {', '.join(NAMES)} and no tokenizer.json "
                                f"at {file}")
    return HFTokenizer(file)


def tokenizer_from_config(data_cfg) -> Tokenizer:
    """The tokenizer a ``DataConfig`` asks for."""
    return load_tokenizer(data_cfg.tokenizer, data_cfg.tokenizer_path, data_cfg.path)
