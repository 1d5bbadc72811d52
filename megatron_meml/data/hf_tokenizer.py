"""A user's HF ``tokenizer.json``, loaded through the ``tokenizers`` package, behind the Tokenizer protocol.

Specials are the added tokens marked ``special``. ``eos_id`` / ``pad_id`` come from a ``tokenizer_config.json``
next to the file (``eos_token`` / ``pad_token``, a string or ``{"content": ...}``) when there is one, else from the
first special present among the usual names (eos: <|im_end|>, <|eot_id|>, <|end_of_text|>, <|endoftext|>, </s>,
<eos>; pad: <|endoftext|>, <|finetune_right_pad_id|>, <pad>, <|pad|>, then eos). A file with no usable eos is an
error naming the file.

``encode`` never adds BOS/EOS (``add_special_tokens=False``) and, unless ``allow_special=True``, sets the
tokenizer's ``encode_special_tokens`` flag so special strings in text are encoded as plain text.
"""
from __future__ import annotations

import json
import os
import threading
from typing import List, Optional, Sequence

EOS_NAMES = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>")
PAD_NAMES = ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "<|pad|>")


def _token_name(value) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """Tokenizer protocol over ``tokenizers.Tokenizer.from_file(path)``."""

    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer as _HF  # optional: installed with transformers (the test extra)
        except ImportError:
            raise ImportError(f"loading {path} needs the `tokenizers` package: pip install tokenizers") from None

        self.name = path
        self._tok = _HF.from_file(path)
        self._lock = threading.Lock()
        added = self._tok.get_added_tokens_decoder()
        self.special_ids = {t.content: i for i, t in sorted(added.items()) if t.special}
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        cfg = {}
        cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
        eos = self._pick(_token_name(cfg.get("eos_token")), EOS_NAMES)
        if eos is None:
            raise ValueError(f"{path}: no end-of-sequence special found (looked for {', '.join(EOS_NAMES)}); "
                             f"add a tokenizer_config.json with `eos_token` next to it")
        self.eos_id = self.special_ids[eos]
        pad = self._pick(_token_name(cfg.get("pad_token")), PAD_NAMES)
        self.pad_id = self.special_ids[pad] if pad else self.eos_id
        self.stop_ids = [self.eos_id]

    def _pick(self, configured: Optional[str], names: Sequence[str]) -> Optional[str]:
        if configured in self.special_ids:
            return configured
        return next((n for n in names if n in self.special_ids), None)

    def encode(self, text: str, allow_special: bool = False) -> List[int]:
        with self._lock:
            self._tok.encode_special_tokens = not allow_special
            return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        n = self.vocab_size
        return self._tok.decode([int(i) for i in ids if 0 <= int(i) < n], skip_special_tokens=False)
