"""The Tokenizer protocol shared by every tokenizer, and the byte-level tokenizer of the synthetic task.

Every tokenizer exposes ``encode(text, allow_special=False) -> List[int]`` (no specials added; special-token
strings inside ``text`` are encoded as plain text unless ``allow_special=True``), ``decode(ids) -> str``, the
vocabulary size (unpadded), ``eos_id``, ``pad_id`` and ``special_ids`` (name -> id). Chat templates (templates.py)
insert specials by id, never by parsing text, so user text cannot inject a turn; any tokenizer that names the
specials a template needs works with that template. Implementations: :class:`ByteTokenizer` (here),
``TiktokenTokenizer`` (tiktoken_bpe.py: Qwen2.5, Llama-3), ``HFTokenizer`` (hf_tokenizer.py: a tokenizer.json);
``load_tokenizer`` (tokenizer_factory.py) picks one by name.
"""
from __future__ import annotations

import re
from typing import Dict, List, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int
    pad_id: int
    special_ids: Dict[str, int]

    def encode(self, text: str, allow_special: bool = False) -> List[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


_SPECIAL_SPLIT = re.compile(r"(<\|pad\|>|<\|im_start\|>|<\|im_end\|>)")


class ByteTokenizer:
    """UTF-8 bytes 0..255, then specials: <|pad|>=256, <|im_start|>=257, <|im_end|>=258 (also EOS).

    ``encode`` emits specials only with ``allow_special=True``; by default special strings inside text are encoded
    as their bytes (no injection)."""

    SPECIALS = ("<|pad|>", "<|im_start|>", "<|im_end|>")

    def __init__(self):
        self.special_ids = {s: 256 + i for i, s in enumerate(self.SPECIALS)}
        self.vocab_size = 256 + len(self.SPECIALS)
        self.pad_id = self.special_ids["<|pad|>"]
        self.eos_id = self.special_ids["<|im_end|>"]

    def encode(self, text: str, allow_special: bool = False) -> List[int]:
        if not allow_special:
            return list(text.encode("utf-8"))
        out: List[int] = []
        for piece in _SPECIAL_SPLIT.split(text):
            out.extend([self.special_ids[piece]] if piece in self.special_ids else piece.encode("utf-8"))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        inv = {v: k for k, v in self.special_ids.items()}
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                buf.append(i)
            else:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(inv.get(i, ""))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)
