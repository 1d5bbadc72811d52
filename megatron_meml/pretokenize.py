#!/usr/bin/env python
"""Pre-tokenize a run's MEF data into numpy shards for ``data.loader=dali`` (data/shards.py, data/dali_loader.py).

    python -m megatron_meml.pretokenize examples/paper/qwen2.5-1.5b-gsm8k.yaml --out runs/shards/gsm8k
    python -m megatron_meml.train examples/paper/qwen2.5-1.5b-gsm8k.yaml data.loader=dali data.shards=runs/shards/gsm8k

It takes the same config (and ``key=value`` overrides) as the run, builds the MEF rows exactly as the trainer does
(``stages.mef.mef_rows``: ``mef.traces`` or the dataset rationale, unverified traces dropped, shuffled with
``data.seed``), renders each with its expert's system prompt and the chat template, and writes token ids, loss
masks, row offsets and experts as ``.npy`` shards plus ``index.json`` (``--rows-per-shard`` rows a shard). The index
records the tokenizer, template, prompts, dataset, seed and trace file the tokens depend on; a run with a different
setup refuses the shards with one line naming ``data.shards``. Prints rows, tokens, shards and seconds.
Exit status 0; 2 with one line on bad input.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from megatron_meml.config import ConfigError, load_config
from megatron_meml.data import DataError, load_expert_prompts, render, tokenizer_from_config
from megatron_meml.data.shards import run_meta, write_shards
from megatron_meml.stages.mef import mef_rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="the run's YAML config")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, as for the run")
    p.add_argument("--out", required=True, help="shard folder to write (the run's data.shards)")
    p.add_argument("--rows-per-shard", type=int, default=65536)
    args = p.parse_args(argv)

    t0 = time.time()
    try:
        if args.rows_per_shard < 1:
            raise ConfigError(f"--rows-per-shard must be >= 1, got {args.rows_per_shard}")
        cfg = load_config(args.config, args.overrides)
        tokenizer = tokenizer_from_config(cfg.data)
        prompts = load_expert_prompts(cfg.experts)
        rows = mef_rows(cfg, print)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    template = cfg.data.chat_template
    tokens = 0

    def examples():
        nonlocal tokens
        for r in rows:
            ids, mask = render(template, tokenizer, prompts[r.expert], r.question, r.response)
            tokens += len(ids)
            yield ids, mask, r.expert

    index = write_shards(args.out, examples(), run_meta(cfg, tokenizer, prompts), args.rows_per_shard)
    print(f"{os.path.join(args.out, 'index.json')}: {index['rows']} rows, {tokens} tokens, "
          f"{len(index['shards'])} shard(s), experts {index['experts']}, {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
