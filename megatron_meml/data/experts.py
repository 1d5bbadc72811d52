"""The expert registry: N system prompts from ``cfg.experts``; expert e answers under prompt P_e.

Expert 0 is the dataset's own rationale style (its MEF traces are the gold solutions); experts 1..N-1 imitate teacher
models (their MEF traces come from ``python -m megatron_meml.collect_teacher_traces``). Each ``experts.prompts[i]`` is
either the prompt text or ``@path/to/file.txt``; a relative path is resolved against ``base_dir``, which the trainer and
tools leave at None: the working directory, the one rule for every config path (config/schema.py). A file's text is used
with surrounding whitespace stripped; a missing or empty file is a ``ConfigError`` naming ``experts.prompts[i]``. With
``experts.single_expert`` only expert 0 is returned.
"""
from __future__ import annotations

import os
from typing import List, Optional

from ..config.schema import ConfigError


def resolve_prompt(spec: str, index: int, base_dir: Optional[str]) -> str:
    """The text of one prompt spec (inline text or ``@file``)."""
    key = f"experts.prompts[{index}]"
    if not isinstance(spec, str):
        raise ConfigError(f"config key `{key}`: expected text or @file, got {type(spec).__name__}")
    if not spec.startswith("@"):
        if not spec.strip():
            raise ConfigError(f"config key `{key}`: the prompt is empty")
        return spec
    rel = spec[1:].strip()
    path = rel if os.path.isabs(rel) else os.path.join(base_dir or os.getcwd(), rel)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise ConfigError(f"config key `{key}`: prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config key `{key}`: cannot read prompt file {path}: {e}") from None
    if not text:
        raise ConfigError(f"config key `{key}`: prompt file is empty: {path}")
    return text


def load_expert_prompts(experts_cfg, base_dir: Optional[str] = None) -> List[str]:
    """The system prompt of every expert, index = expert id (length ``experts_cfg.num_experts``)."""
    prompts = [resolve_prompt(p, i, base_dir) for i, p in enumerate(experts_cfg.prompts)]
    return prompts[:experts_cfg.num_experts]
