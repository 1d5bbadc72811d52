"""Data layer: datasets, tokenizers, chat templates, experts and MEF data.

    from megatron_meml.data import load_dataset, shard, load_tokenizer, render, load_expert_prompts
    records = load_dataset("gsm8k", "../shared/data", "test")          # List[Record]
    tok = load_tokenizer("qwen2.5")                                     # | "byte" | "llama3" | path/tokenizer.json
    ids, loss_mask = render(None, tok, system=prompts[e], user=records[0].question, assistant=records[0].solution)
"""
from .dataset import (
                      DATASETS,
                      default_data_root,
                      load_dataset,
                      load_dataset_with_summary,
                      resolve_data_path,
                      shard,
                      split_file,
)
from .errors import DataError, LoadSummary
from .experts import load_expert_prompts
from .hf_tokenizer import HFTokenizer
from .mef import MEFRow, MEFSummary, build_mef_data, read_mef, read_traces, synthetic_mef_rows, write_mef
from .synthetic import load_synthetic
from .templates import TEMPLATES, default_template, end_of_turn_id, render
from .tiktoken_bpe import TiktokenTokenizer
from .tokenizer import ByteTokenizer, Tokenizer
from .tokenizer_factory import load_tokenizer, tokenizer_from_config

__all__ = [
    "DATASETS", "default_data_root", "load_dataset", "load_dataset_with_summary", "resolve_data_path", "shard",
    "split_file", "DataError", "LoadSummary", "load_expert_prompts", "HFTokenizer", "MEFRow", "MEFSummary",
    "build_mef_data", "read_mef", "read_traces", "synthetic_mef_rows", "write_mef", "load_synthetic", "TEMPLATES",
    "default_template", "end_of_turn_id", "render", "TiktokenTokenizer", "ByteTokenizer", "Tokenizer",
    "load_tokenizer", "tokenizer_from_config",
]
