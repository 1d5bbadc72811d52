"""Byte-level BPE tokenizers from tiktoken rank files: Qwen2.5 and Llama-3 (3.1/3.2 use the same).

Rank file format: one ``<base64 token bytes> <rank>`` per line, ranks 0..R-1 (Qwen2.5 R = 151,643; Llama-3
R = 128,000). The specials follow the ranks:
  * Qwen2.5 (ids 151643..151664): <|endoftext|> (pad, base-model eos), <|im_start|>, <|im_end|> (eos of the
    Instruct model and of ChatML), <|object_ref_start|>, <|object_ref_end|>, <|box_start|>, <|box_end|>,
    <|quad_start|>, <|quad_end|>, <|vision_start|>, <|vision_end|>, <|vision_pad|>, <|image_pad|>, <|video_pad|>,
    <tool_call>, </tool_call>, <|fim_prefix|>, <|fim_middle|>, <|fim_suffix|>, <|fim_pad|>, <|repo_name|>,
    <|file_sep|>. (HF marks <tool_call>/</tool_call> as non-special added tokens; here every added token is a
    special, parsed from text only with ``allow_special=True``.)
  * Llama-3 (ids 128000..128255): <|begin_of_text|>, <|end_of_text|>, <|reserved_special_token_0|>,
    <|reserved_special_token_1|>, <|finetune_right_pad_id|>, <|step_id|>, <|start_header_id|>, <|end_header_id|>,
    <|eom_id|>, <|eot_id|>, <|python_tag|>, <|image|>, then <|reserved_special_token_{2+i}|> up to id 128255.
    ``eos_id`` is <|eot_id|> (the end of an assistant turn in the llama3 chat template, as in Llama-3-Instruct's
    generation config); ``stop_ids`` also holds <|end_of_text|> and <|eom_id|>. ``pad_id`` is
    <|finetune_right_pad_id|>.
The pre-tokenizer regexes are the models' own (Qwen splits digits one by one, Llama-3 in runs of up to three).

Ids outside the vocabulary (the padding rows of an embedding, e.g. Qwen2.5's 151665..151935) decode to "".
"""
from __future__ import annotations

import base64
import functools
import os
from typing import Dict, List, Optional, Sequence

import tiktoken

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")

QWEN_NUM_RANKS = 151643
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
LLAMA3_NUM_RANKS = 128000
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
] + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 12)]


def load_ranks(path: str) -> Dict[bytes, int]:
    """Read a tiktoken rank file (``base64 rank`` per line). Read directly, so nothing is cached under /tmp."""
    ranks: Dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: not a tiktoken rank line (`<base64> <rank>`)") from None
    return ranks


class TiktokenTokenizer:
    """A tiktoken BPE with named specials, following the Tokenizer protocol (data/tokenizer.py)."""

    def __init__(self, name: str, ranks: Dict[bytes, int], pattern: str, specials: Sequence[str], eos: str,
                 pad: str, stop: Sequence[str] = (), bos: Optional[str] = None):
        first = len(ranks)
        if sorted(ranks.values()) != list(range(first)):
            raise ValueError(f"{name}: BPE ranks must be exactly 0..{first - 1}")
        self.name = name
        self.special_ids = {s: first + i for i, s in enumerate(specials)}
        self._enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=self.special_ids)
        self.vocab_size = self._enc.n_vocab
        self.eos_id = self.special_ids[eos]
        self.pad_id = self.special_ids[pad]
        self.bos_id = self.special_ids[bos] if bos else None
        self.stop_ids = sorted({self.eos_id, *(self.special_ids[s] for s in stop)})

    def encode(self, text: str, allow_special: bool = False) -> List[int]:
        """Token ids of ``text``. Special-token strings in ``text`` become specials only with
        ``allow_special=True``; otherwise they are encoded as the plain text they are."""
        if allow_special:
            return self._enc.encode(text, allowed_special="all", disallowed_special=())
        return self._enc.encode(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (specials as their strings; out-of-vocabulary ids dropped; invalid UTF-8 -> U+FFFD)."""
        n = self.vocab_size
        return self._enc.decode([int(i) for i in ids if 0 <= int(i) < n], errors="replace")


@functools.lru_cache(maxsize=4)
def _cached(kind: str, path: str, mtime: float) -> TiktokenTokenizer:
    ranks = load_ranks(path)
    if kind == "qwen2.5":
        if len(ranks) != QWEN_NUM_RANKS:
            raise ValueError(f"{path}: expected {QWEN_NUM_RANKS} Qwen2.5 ranks, found {len(ranks)}")
        return TiktokenTokenizer("qwen2.5", ranks, QWEN_PATTERN, QWEN_SPECIALS, eos="<|im_end|>",
                                 pad="<|endoftext|>", stop=["<|endoftext|>"])
    if len(ranks) != LLAMA3_NUM_RANKS:
        raise ValueError(f"{path}: expected {LLAMA3_NUM_RANKS} Llama-3 ranks, found {len(ranks)}")
    return TiktokenTokenizer("llama3", ranks, LLAMA3_PATTERN, LLAMA3_SPECIALS, eos="<|eot_id|>",
                             pad="<|finetune_right_pad_id|>", stop=["<|end_of_text|>", "<|eom_id|>"],
                             bos="<|begin_of_text|>")


def load_qwen25(path: str) -> TiktokenTokenizer:
    """Qwen2.5 from ``qwen.tiktoken`` (cached per file; the object is immutable)."""
    return _cached("qwen2.5", os.path.abspath(path), os.path.getmtime(path))


def load_llama3(path: str) -> TiktokenTokenizer:
    """Llama-3 from ``tokenizer.model`` (a tiktoken rank file despite the name; cached per file)."""
    return _cached("llama3", os.path.abspath(path), os.path.getmtime(path))
