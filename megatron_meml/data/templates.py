"""Chat templates: ``render(template, tokenizer, system, user, assistant=None) -> (ids, loss_mask)``.

Templates (``S`` = a special token inserted by id, never parsed from text; ``|`` = where the prompt ends):
  * ``chatml`` (Qwen2.5, and the ByteTokenizer's <|im_start|>=257 / <|im_end|>=258):
      S<|im_start|> "system\\n{system}" S<|im_end|> "\\n" S<|im_start|> "user\\n{user}" S<|im_end|> "\\n"
      S<|im_start|> "assistant\\n" | "{assistant}" S<|im_end|>
  * ``llama3``:
      S<|begin_of_text|> S<|start_header_id|> "system" S<|end_header_id|> "\\n\\n{system}" S<|eot_id|>
      S<|start_header_id|> "user" S<|end_header_id|> "\\n\\n{user}" S<|eot_id|>
      S<|start_header_id|> "assistant" S<|end_header_id|> "\\n\\n" | "{assistant}" S<|eot_id|>
  * ``plain`` (any tokenizer): "{system}\\n\\n{user}\\n\\n" | "{assistant}" S<eos>
The system turn is left out when ``system`` is empty or None (Qwen's own template would insert a default system
prompt there; Llama-3.1's would add a date header — both are left out, the expert prompt is the system turn).

``loss_mask[i] = 1`` exactly for the assistant response tokens and the end-of-turn token. With ``assistant=None``
the result is the generation prompt, ending in the assistant header (mask all 0). Text pieces are encoded
separately (``allow_special=False``), and the response is encoded on its own: the ids of a training example are
the prompt ids followed by the response ids, exactly what a rollout produces after the same prompt.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

from .tokenizer import Tokenizer

TEMPLATES = ("chatml", "llama3", "plain")
CHATML_SPECIALS = ("<|im_start|>", "<|im_end|>")
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

Piece = Union[str, int]  # text to encode, or a special id


def default_template(tokenizer: Tokenizer) -> str:
    """llama3 when the tokenizer has Llama-3's header specials, chatml when it has <|im_start|>/<|im_end|>, else
    plain. (byte -> chatml, qwen2.5 -> chatml, llama3 -> llama3.)"""
    sp = tokenizer.special_ids
    if all(s in sp for s in LLAMA3_SPECIALS):
        return "llama3"
    if all(s in sp for s in CHATML_SPECIALS):
        return "chatml"
    return "plain"


def _special(tokenizer: Tokenizer, name: str, template: str) -> int:
    try:
        return tokenizer.special_ids[name]
    except KeyError:
        raise ValueError(f"chat template {template!r} needs the special token {name} which this tokenizer lacks; "
                         f"use data.chat_template=plain or a matching tokenizer") from None


def end_of_turn_id(template: Optional[str], tokenizer: Tokenizer) -> int:
    """The id that ends an assistant turn under ``template`` (the stop token of generation)."""
    template = template or default_template(tokenizer)
    if template == "chatml":
        return _special(tokenizer, "<|im_end|>", template)
    if template == "llama3":
        return _special(tokenizer, "<|eot_id|>", template)
    if template == "plain":
        return tokenizer.eos_id
    raise ValueError(f"unknown chat template {template!r}; choose one of {', '.join(TEMPLATES)}")


def _prompt_pieces(template: str, tokenizer: Tokenizer, system: Optional[str], user: str) -> List[Piece]:
    sp = lambda name: _special(tokenizer, name, template)  # noqa: E731
    if template == "chatml":
        start, end = sp("<|im_start|>"), sp("<|im_end|>")
        out: List[Piece] = [start, f"system\n{system}", end, "\n"] if system else []
        return out + [start, f"user\n{user}", end, "\n", start, "assistant\n"]
    if template == "llama3":
        hs, he, eot = sp("<|start_header_id|>"), sp("<|end_header_id|>"), sp("<|eot_id|>")
        out = [sp("<|begin_of_text|>")]
        if system:
            out += [hs, "system", he, f"\n\n{system}", eot]
        return out + [hs, "user", he, f"\n\n{user}", eot, hs, "assistant", he, "\n\n"]
    if template == "plain":
        return [f"{system}\n\n{user}\n\n" if system else f"{user}\n\n"]
    raise ValueError(f"unknown chat template {template!r}; choose one of {', '.join(TEMPLATES)}")


def _encode(tokenizer: Tokenizer, pieces: Sequence[Piece]) -> List[int]:
    ids: List[int] = []
    for p in pieces:
        if isinstance(p, int):
            ids.append(p)
        elif p:
            ids.extend(tokenizer.encode(p, allow_special=False))
    return ids


def render(template: Optional[str], tokenizer: Tokenizer, system: Optional[str], user: str,
           assistant: Optional[str] = None) -> Tuple[List[int], List[int]]:
    """``(ids, loss_mask)`` of one conversation (see module docstring); ``template=None`` picks
    :func:`default_template`."""
    template = template or default_template(tokenizer)
    ids = _encode(tokenizer, _prompt_pieces(template, tokenizer, system, user))
    mask = [0] * len(ids)
    if assistant is not None:
        response = tokenizer.encode(assistant, allow_special=False) + [end_of_turn_id(template, tokenizer)]
        ids += response
        mask += [1] * len(response)
    return ids, mask
