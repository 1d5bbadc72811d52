"""The Tokenizer protocol shared by every tokenizer, and the byte-level tokenizer of the synthetic task.

Every tokenizer exposes ``encode(text) -> List[int]`` (no specials added), ``decode(ids) -> str``, the vocabulary
size (unpadded), ``eos_id``, ``pad_id`` and ``special_ids`` (name -> id). Chat templates (templates.py) use the
specials by name, so any tokenizer that names them works with any template that needs them.
"""
from __future__ import annotations

from typing import Dict, List, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int
    pad_id: int
    special_ids: Dict[str, int]

    def encode(self, text: str) -> List[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes 0..255, then specials: <|pad|>=256, <|im_start|>=257, <|im_end|>=258 (also EOS).

    ``encode`` never emits specials; special strings inside text are encoded as their bytes (no injection)."""

    SPECIALS = ("<|pad|>", "<|im_start|>", "<|im_end|>")

    def __init__(self):
        self.special_ids = {s: 256 + i for i, s in enumerate(self.SPECIALS)}
        self.vocab_size = 256 + len(self.SPECIALS)
        self.pad_id = self.special_ids["<|pad|>"]
        self.eos_id = self.special_ids["<|im_end|>"]

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

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
