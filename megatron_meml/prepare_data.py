#!/usr/bin/env python
"""Write the layout ``data.path`` expects (GSM8K, MathQA, StrategyQA and the BPE tokenizer files) from the Hugging Face
copies of the datasets: by hub name where this machine reaches the hub, or from a local download.

    python -m megatron_meml.prepare_data --out data                                # all three from the hub (`datasets`)
    python -m megatron_meml.prepare_data --out data --gsm8k ~/dl/gsm8k --mathqa ~/dl/math_qa.parquet
    python -m megatron_meml.prepare_data --out data --hf-cache ~/.cache/huggingface/hub          # a machine's HF cache
    python -m megatron_meml.prepare_data --out data --datasets --tokenizer qwen2.5=/models/Qwen2.5-1.5B-Instruct

Layout written under ``--out`` (what megatron_meml/data/*.py read; data/dataset.py SPLIT_FILES):
  gsm8k/{train,test}.jsonl                 {"question", "answer"} per line          <- openai/gsm8k (config main)
  mathqa/{train,dev,test}.json             [{"Problem", "Rationale", "options", "correct", "annotated_formula",
                                             "linear_formula", "category"}]        <- allenai/math_qa
                                                                                      (train / validation / test)
  strategyqa/{train,dev}.json              [{"qid", "term", "description", "question", "answer": bool, "facts",
                                             "decomposition"}]                       <- ChilleD/StrategyQA (train /
                                                                                      test: its held-out part of the
                                                                                      official train set -> dev)
  tokenizers/qwen2.5/qwen.tiktoken, tokenizers/llama3/tokenizer.model   (``--tokenizer NAME=SRC``)
then ``SHA256SUMS`` (one ``<sha256>  <path>`` per written file) and one table of counts and checksums on stdout.

Sources, per dataset (``--gsm8k/--mathqa/--strategyqa SRC``; a dataset without one is read from ``--hf-cache`` when
its ``datasets--<org>--<name>`` folder is there, else from the hub by name, ``--hub-name gsm8k=org/name`` to change
it):
  * a hub name      ``datasets.load_dataset(name, config)``; ``datasets`` is not a dependency of the package: it is
                    imported only here, with a one-line error naming ``pip install datasets`` when missing;
  * a folder        every ``*.parquet``, ``*.jsonl``, ``*.json`` below it (a ``huggingface-cli download`` folder, a
                    hub cache snapshot, the original release); each file's split is read from its name (``train``,
                    ``test``, ``validation`` / ``dev``, ``challenge_test``; shards ``train-00000-of-00002`` are
                    joined in order);
  * a file          one split, named by the file (``train.jsonl``) or ``SRC@split``.
Formats: JSON (an array, JSON lines, or ``{"data": [...]}``) always; parquet with pyarrow or pandas when one of them
is installed (else a one-line error saying so). StrategyQA answers may be booleans or yes/no/true/false strings,
facts a list or one string. Every written file is read back with the project's own loader, so a record the
training run would reject fails here, naming the source file and row.

Tokenizers (``--tokenizer qwen2.5=SRC`` / ``llama3=SRC``): SRC is a tiktoken rank file (copied), or a HF
``tokenizer.json`` (or a model folder holding one, e.g. the run's ``model.init_from_hf``) whose byte-level BPE
vocabulary is converted to tiktoken ranks (rank = token id; Qwen2.5 and Llama-3 were converted from tiktoken, so
the merge order is the id order; the written file is loaded back with the project's tokenizer as a check).
Exit status: 0; 2 with one line on bad input.
"""
from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import re
import shutil
import sys
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from megatron_meml.data.dataset import SPLIT_FILES, load_dataset_with_summary
from megatron_meml.data.shards import file_sha256 as sha256
from megatron_meml.data.tiktoken_bpe import LLAMA3_NUM_RANKS, QWEN_NUM_RANKS
from megatron_meml.data.tokenizer_factory import DEFAULT_FILES, load_tokenizer


class PrepError(Exception):
    """Bad input; printed as one line."""


# our split -> (source split names, tried in order)
SOURCES = OrderedDict([
    ("gsm8k", {"hub": ("openai/gsm8k", "main"), "splits": {"train": ("train",), "test": ("test",)}}),
    ("mathqa", {"hub": ("allenai/math_qa", None),
                "splits": {"train": ("train",), "dev": ("validation", "dev"), "test": ("test",),
                           "challenge_test": ("challenge_test",)}}),
    ("strategyqa", {"hub": ("ChilleD/StrategyQA", None),
                    "splits": {"train": ("train",), "dev": ("dev", "validation", "test")}}),
])
REQUIRED = {"gsm8k": ("train", "test"), "mathqa": ("test",), "strategyqa": ("train", "dev")}
_SPLIT_WORDS = ("challenge_test", "validation", "train", "test", "dev")


# --------------------------------------------------------------------------------------------- reading sources

def read_json_records(path: str) -> List[dict]:
    """Records of a JSON array, a ``{"data": [...]}`` object, or JSON lines."""
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as e:
            raise PrepError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == 1 and stripped.startswith("{"):  # one pretty-printed object
                try:
                    value = json.loads(stripped)
                except json.JSONDecodeError:
                    raise PrepError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                return value.get("data") if isinstance(value.get("data"), list) else [value]
            raise PrepError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        rows.append(value)
    if len(rows) == 1 and isinstance(rows[0], dict) and isinstance(rows[0].get("data"), list):
        return rows[0]["data"]
    return rows


def read_parquet_records(path: str) -> List[dict]:
    """Records of a parquet file through pyarrow, or pandas; a one-line error when neither is installed."""
    try:
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    except ImportError:
        pass
    try:
        import pandas as pd
    except ImportError:
        raise PrepError(f"{path}: reading parquet needs pyarrow or pandas (pip install pyarrow), or give the "
                        f"split as JSON / JSON lines") from None
    frame = pd.read_parquet(path)
    return [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def read_records(path: str) -> List[dict]:
    if path.endswith(".parquet"):
        return read_parquet_records(path)
    if path.endswith((".json", ".jsonl")):
        return read_json_records(path)
    raise PrepError(f"{path}: unknown format (expected .parquet, .json or .jsonl)")


def split_of(path: str) -> Optional[str]:
    """The split a file holds, from its name: ``train-00000-of-00001.parquet`` -> train; None when not named."""
    name = os.path.basename(path).lower()
    for word in _SPLIT_WORDS:
        if re.search(rf"(^|[^a-z]){word}([^a-z]|$)", name):
            return word
    return None


def local_splits(src: str, config: Optional[str] = None) -> Dict[str, List[str]]:
    """{source split: [files in shard order]} of a folder, a file, or ``file@split``. In a folder holding several
    hub configs (openai/gsm8k has main/ and socratic/), only the files under ``config`` count."""
    if "@" in src and not os.path.exists(src):
        path, split = src.rsplit("@", 1)
        if not os.path.isfile(path):
            raise PrepError(f"{path}: file not found")
        return {split: [path]}
    if os.path.isfile(src):
        split = split_of(src)
        if split is None:
            raise PrepError(f"{src}: cannot tell the split from the file name; write it as {src}@train (or @test)")
        return {split: [src]}
    if not os.path.isdir(src):
        raise PrepError(f"{src}: no such file or folder")
    paths = [p for p in sorted(glob.glob(os.path.join(src, "**", "*"), recursive=True))
             if os.path.isfile(p) and p.endswith((".parquet", ".json", ".jsonl")) and split_of(p) is not None]
    if config and any(config in os.path.relpath(p, src).split(os.sep)[:-1] for p in paths):
        paths = [p for p in paths if config in os.path.relpath(p, src).split(os.sep)[:-1]]
    found: Dict[str, List[str]] = {}
    for path in paths:
        found.setdefault(split_of(path), []).append(path)
    if not found:
        raise PrepError(f"{src}: no *.parquet / *.json / *.jsonl file named after a split (train, test, validation)")
    for split, files in found.items():  # a split in two formats (a repo's JSON next to its parquet export) counts
        json_files = [f for f in files if not f.endswith(".parquet")]  # once: JSON, which needs no extra package
        if json_files and len(json_files) < len(files):
            found[split] = json_files
    return found


def hf_cache_snapshot(cache: str, repo: str) -> Optional[str]:
    """The newest snapshot folder of ``repo`` in a hub cache (``datasets--org--name/snapshots/<rev>``), or None."""
    folder = os.path.join(os.path.expanduser(cache), "datasets--" + repo.replace("/", "--"), "snapshots")
    snaps = [os.path.join(folder, d) for d in os.listdir(folder)] if os.path.isdir(folder) else []
    return max(snaps, key=os.path.getmtime) if snaps else None


def hub_splits(repo: str, config: Optional[str]) -> Dict[str, List[dict]]:
    """Every split of a hub dataset through ``datasets`` (imported here only)."""
    try:
        import datasets
    except ImportError:
        raise PrepError(f"reading {repo} from the Hugging Face hub needs the `datasets` package (pip install "
                        f"datasets); or pass a local download (--gsm8k/--mathqa/--strategyqa PATH, --hf-cache DIR)") \
            from None
    try:
        ds = datasets.load_dataset(repo, config) if config else datasets.load_dataset(repo)
    except Exception as e:  # network, auth, a removed dataset: one line, not a traceback
        raise PrepError(f"{repo}: cannot load from the hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        f"pass a local download instead") from None
    return {split: [dict(row) for row in ds[split]] for split in ds}


# --------------------------------------------------------------------------------------------- converting records

def _need(row: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise PrepError(f"{where}: missing field(s) {missing} (has {sorted(row)[:12]})")


def convert_gsm8k(row: dict, where: str) -> dict:
    _need(row, ("question", "answer"), where)
    return {"question": row["question"], "answer": row["answer"]}


MATHQA_FIELDS = ("Problem", "Rationale", "options", "correct", "annotated_formula", "linear_formula", "category")


def convert_mathqa(row: dict, where: str) -> dict:
    _need(row, ("Problem", "Rationale", "options", "correct"), where)
    return {k: row.get(k, "") for k in MATHQA_FIELDS}


def _bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
        return value.strip().lower() in ("yes", "true")
    raise PrepError(f"{where}: field 'answer' is {value!r}, not a yes/no answer")


def _strings(value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [s for s in (x.strip() for x in value.split("\n")) if s]
    return [str(v) for v in value]


def convert_strategyqa(row: dict, where: str, index: int, split: str) -> dict:
    _need(row, ("question", "answer"), where)
    return {"qid": str(row.get("qid") or f"strategyqa-{split}-{index}"), "term": row.get("term") or "",
            "description": row.get("description") or "", "question": row["question"],
            "answer": _bool(row["answer"], where), "facts": _strings(row.get("facts")),
            "decomposition": _strings(row.get("decomposition"))}


def convert(dataset: str, rows: Iterable[dict], split: str, source: str) -> List[dict]:
    out = []
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        if not isinstance(row, dict):
            raise PrepError(f"{where}: expected an object, got {type(row).__name__}")
        if dataset == "gsm8k":
            out.append(convert_gsm8k(row, where))
        elif dataset == "mathqa":
            out.append(convert_mathqa(row, where))
        else:
            out.append(convert_strategyqa(row, where, i, split))
    return out


# --------------------------------------------------------------------------------------------- writing

def write_split(dataset: str, split: str, records: List[dict], out: str) -> str:
    """Write one split in the layout's format, atomically, and read it back with the project's loader."""
    name = SPLIT_FILES[dataset][split]
    name = name[0] if isinstance(name, tuple) else name
    path = os.path.join(out, dataset, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        if name.endswith(".jsonl"):
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            json.dump(records, f, ensure_ascii=False, indent=0)
    os.replace(tmp, path)
    loaded, summary = load_dataset_with_summary(dataset, path, split)
    if len(loaded) != len(records):
        raise PrepError(f"{path}: wrote {len(records)} records, the loader read {len(loaded)}")
    return path


def prepare_dataset(dataset: str, src: Optional[str], cache: Optional[str], hub_name: Optional[str],
                    out: str) -> List[Tuple[str, str, int, str]]:
    """Read one dataset from its source and write its splits; ``[(dataset, split, count, path), ...]``."""
    spec = SOURCES[dataset]
    repo, config = (hub_name, None) if hub_name else spec["hub"]
    if src is None and cache:
        src = hf_cache_snapshot(cache, repo)
    if src is not None:
        files = local_splits(os.path.expanduser(src), config)
        load = lambda s: [r for f in files[s] for r in read_records(f)]  # noqa: E731
        available, origin = files, lambda s: ",".join(files[s])  # noqa: E731
    else:
        rows = hub_splits(repo, config)
        load = lambda s: rows[s]  # noqa: E731
        available, origin = rows, lambda s: f"{repo}[{s}]"  # noqa: E731
    written = []
    for ours, theirs in spec["splits"].items():
        source_split = next((s for s in theirs if s in available), None)
        if source_split is None:
            if ours in REQUIRED[dataset]:
                raise PrepError(f"{dataset}: no {'/'.join(theirs)} split in {src or repo} (found "
                                f"{', '.join(sorted(available)) or 'none'})")
            continue
        records = convert(dataset, load(source_split), ours, origin(source_split))
        if not records:
            raise PrepError(f"{dataset}: split {source_split} of {src or repo} is empty")
        written.append((dataset, ours, len(records), write_split(dataset, ours, records, out)))
    return written


# --------------------------------------------------------------------------------------------- tokenizers

def _unicode_to_bytes() -> Dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` (byte-level BPE writes each byte as one printable character)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def tiktoken_ranks_from_hf(tokenizer_json: str, num_ranks: int) -> List[Tuple[bytes, int]]:
    """``[(token bytes, rank)]`` of a HF byte-level BPE ``tokenizer.json``: the regular tokens (ids < num_ranks)."""
    with open(tokenizer_json, encoding="utf-8") as f:
        tok = json.load(f)
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise PrepError(f"{tokenizer_json}: not a byte-level BPE tokenizer.json (model.type {model.get('type')!r})")
    table = _unicode_to_bytes()
    out = []
    for token, idx in model["vocab"].items():
        if idx < num_ranks:
            try:
                out.append((bytes(table[c] for c in token), idx))
            except KeyError:
                raise PrepError(f"{tokenizer_json}: token {token!r} is not byte-level BPE text") from None
    ids = sorted(i for _, i in out)
    if ids != list(range(num_ranks)):
        raise PrepError(f"{tokenizer_json}: expected regular token ids 0..{num_ranks - 1}, found {len(ids)} ids")
    return sorted(out, key=lambda t: t[1])


def prepare_tokenizer(name: str, src: str, out: str) -> Tuple[str, str, int, str]:
    if name not in DEFAULT_FILES:
        raise PrepError(f"--tokenizer {name}=...: unknown tokenizer (qwen2.5 or llama3)")
    dest = os.path.join(out, DEFAULT_FILES[name])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    src = os.path.expanduser(src)
    if os.path.isdir(src):
        src = os.path.join(src, "tokenizer.json")
    if not os.path.isfile(src):
        raise PrepError(f"--tokenizer {name}: file not found: {src}")
    if src.endswith(".json"):
        ranks = tiktoken_ranks_from_hf(src, {"qwen2.5": QWEN_NUM_RANKS, "llama3": LLAMA3_NUM_RANKS}[name])
        with open(dest + ".tmp", "w") as f:
            for token, rank in ranks:
                f.write(f"{base64.b64encode(token).decode()} {rank}\n")
        os.replace(dest + ".tmp", dest)
    else:
        shutil.copyfile(src, dest)
    try:
        tok = load_tokenizer(name, dest)
    except ValueError as e:
        raise PrepError(f"{src}: not a {name} vocabulary ({e})") from None
    return "tokenizers", name, tok.vocab_size, dest


# --------------------------------------------------------------------------------------------- main

def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data", help="the data root to write (a run's data.path; default ./data)")
    p.add_argument("--datasets", nargs="*", default=None, choices=list(SOURCES),
                   help="which datasets (default: all three; give none with --tokenizer to write tokenizers only)")
    for name in SOURCES:
        p.add_argument(f"--{name}", default=None, metavar="SRC", help=f"local {name} download: folder, file or file@split")
    p.add_argument("--hf-cache", default=None, help="a Hugging Face hub cache folder (e.g. ~/.cache/huggingface/hub)")
    p.add_argument("--hub-name", action="append", default=[], metavar="DATASET=ORG/NAME",
                   help="read DATASET from another hub repository with the same columns")
    p.add_argument("--tokenizer", action="append", default=[], metavar="NAME=SRC",
                   help="qwen2.5=... or llama3=...: a tiktoken rank file, a tokenizer.json or a model folder")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    datasets = list(SOURCES) if args.datasets is None else args.datasets
    try:
        hub_names = dict(kv.split("=", 1) for kv in args.hub_name)
        tokenizers = [kv.split("=", 1) for kv in args.tokenizer]
    except ValueError:
        print("error: --hub-name and --tokenizer take NAME=VALUE", file=sys.stderr)
        return 2
    rows: List[Tuple[str, str, int, str]] = []
    try:
        for name in datasets:
            rows += prepare_dataset(name, getattr(args, name), args.hf_cache, hub_names.get(name), args.out)
        for name, src in tokenizers:
            rows.append(prepare_tokenizer(name, src, args.out))
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sums = os.path.join(args.out, "SHA256SUMS")
    old = {}
    if os.path.isfile(sums):
        for line in open(sums):
            if "  " in line:
                digest, rel = line.rstrip("\n").split("  ", 1)
                old[rel] = digest
    print(f"{'dataset':<11} {'split':<15} {'records':>8}  sha256  path   (tokenizers: vocabulary size)")
    for dataset, split, count, path in rows:
        digest = sha256(path)
        rel = os.path.relpath(path, args.out)
        old[rel] = digest
        print(f"{dataset:<11} {split:<15} {count:>8}  {digest}  {path}")
    with open(sums, "w") as f:
        f.writelines(f"{d}  {rel}\n" for rel, d in sorted(old.items()))
    print(f"checksums: {sums}; use it with data.path={args.out} (or MEML_DATA={os.path.abspath(args.out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
