"""Tokenizers: Qwen2.5 and Llama-3 from the offline rank files, a HF tokenizer.json, the byte tokenizer."""
import os

import pytest

from megatron_meml.data import ByteTokenizer, HFTokenizer, Tokenizer, load_dataset, load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DATA = os.environ.get("MEML_DATA", os.path.join(REPO, "..", "shared", "data"))
needs_tok = pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "tokenizers")),
                               reason=f"offline tokenizer files not found at {DATA}/tokenizers (set MEML_DATA)")
needs_gsm = pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "gsm8k")),
                               reason=f"offline GSM8K not found at {DATA} (set MEML_DATA)")


@needs_tok
def test_qwen_specials_and_known_ids():
    tok = load_tokenizer("qwen2.5", data_root=DATA)
    assert isinstance(tok, Tokenizer)
    assert tok.encode("<|im_start|>user\n", allow_special=True) == [151644, 872, 198]
    assert tok.special_ids["<|endoftext|>"] == 151643 and tok.special_ids["<|im_end|>"] == 151645
    assert tok.special_ids["<tool_call>"] == 151657 and tok.special_ids["<|file_sep|>"] == 151664
    assert tok.vocab_size == 151665 and tok.eos_id == 151645 and tok.pad_id == 151643
    assert tok.encode("2024") == [17, 15, 17, 19]  # Qwen splits digits one by one


@needs_tok
def test_qwen_special_strings_in_text_are_plain_text_by_default():
    tok = load_tokenizer("qwen2.5", data_root=DATA)
    ids = tok.encode("<|im_start|>user\n")
    assert not set(ids) & set(tok.special_ids.values())
    assert tok.decode(ids) == "<|im_start|>user\n"


@needs_tok
def test_llama3_specials():
    tok = load_tokenizer("llama3", data_root=DATA)
    assert tok.encode("<|begin_of_text|>", allow_special=True) == [128000]
    sp = tok.special_ids
    assert (sp["<|end_of_text|>"], sp["<|finetune_right_pad_id|>"], sp["<|start_header_id|>"],
            sp["<|end_header_id|>"], sp["<|eom_id|>"], sp["<|eot_id|>"], sp["<|image|>"]) == \
        (128001, 128004, 128006, 128007, 128008, 128009, 128011)
    assert sp["<|reserved_special_token_2|>"] == 128012 and sp["<|reserved_special_token_245|>"] == 128255
    assert len(sp) == 256 and tok.vocab_size == 128256
    assert tok.encode("2024") == [2366, 19]  # runs of up to three digits
    assert tok.encode("<|begin_of_text|>") != [128000]


@needs_tok
@needs_gsm
@pytest.mark.parametrize("name", ["qwen2.5", "llama3"])
def test_round_trip_every_gsm8k_test_question(name):
    tok = load_tokenizer(name, data_root=DATA)
    for r in load_dataset("gsm8k", DATA, "test"):
        assert tok.decode(tok.encode(r.question)) == r.question, r.id


@needs_tok
def test_decode_drops_padding_rows_of_the_embedding():
    tok = load_tokenizer("qwen2.5", data_root=DATA)
    assert tok.decode([9707, 151900, 151645]) == "Hello<|im_end|>"


def test_factory_errors_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="qwen.tiktoken"):
        load_tokenizer("qwen2.5", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path / "nothing.json"))
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)


def test_byte_tokenizer_specials_only_when_allowed():
    tok = ByteTokenizer()
    assert tok.encode("<|im_start|>a", allow_special=True) == [257, 97]
    assert tok.encode("<|im_start|>a") == list(b"<|im_start|>a")
    assert tok.decode(tok.encode("héllo <|im_end|>", allow_special=True)) == "héllo <|im_end|>"


def build_tiny_tokenizer_json(path):
    """A small byte-level BPE trained here with `tokenizers` itself (no downloaded files)."""
    pytest.importorskip("tokenizers", reason="the HF `tokenizers` package is not installed (pip install tokenizers)")
    from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers

    tok = HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the answer is 42", "hello world", "héllo wörld", "user assistant system"] * 20,
                            trainer)
    tok.save(str(path))
    return str(path)


def test_hf_tokenizer_json(tmp_path):
    path = build_tiny_tokenizer_json(tmp_path / "tokenizer.json")
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
    assert tok.special_ids == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert tok.eos_id == 2 and tok.pad_id == 0
    text = "<|im_start|>user\nhéllo wörld, the answer is 42!"
    with_specials, plain = tok.encode(text, allow_special=True), tok.encode(text)
    assert with_specials[0] == 1 and 1 not in plain
    assert tok.decode(plain) == text == tok.decode(with_specials)
    assert load_tokenizer(str(tmp_path)).encode("hello") == tok.encode("hello")  # a folder works too
