#!/usr/bin/env python
"""Per-expert error rate and pairwise / all-expert error overlap (the paper's Table 1) from prediction files.

    python -m megatron_meml.expert_overlap r1=preds/r1.jsonl gpt4o=preds/gpt4o.jsonl doubao=preds/doubao.jsonl
    python -m megatron_meml.expert_overlap traces.jsonl --verifier gsm8k --data gsm8k --data-path ../shared/data --split test
    ... --json                      # machine-readable output

Each file is JSONL, one prediction per line: ``{"id": str, "correct": bool | 0 | 1}``, or ``{"id", "response"}``
which is scored with ``--verifier`` against the gold record of that id (``--data/--data-path/--split`` give the
records). An argument ``NAME=PATH`` names the expert; a bare path is named after the file. Rows carrying an
``expert`` field (e.g. a MEF or teacher-trace file) are split into one expert per value, named ``expert <e>``
(``<name>/expert <e>`` when several files are given). The first row of an id counts; later duplicates are ignored.
The computation is ``megatron_meml.eval.overlap.error_overlap``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional

from megatron_meml.data import load_dataset
from megatron_meml.data.errors import DataError
from megatron_meml.data.jsonio import iter_jsonl
from megatron_meml.eval.overlap import error_overlap, format_table
from megatron_meml.rewards import verify


def read_predictions(spec: str, many: bool, records: Optional[dict], verifier: Optional[str]
                     ) -> Dict[str, Dict[str, bool]]:
    name, path = spec.split("=", 1) if "=" in spec and not os.path.exists(spec) else \
        (os.path.splitext(os.path.basename(spec))[0], spec)
    groups: Dict[str, Dict[str, bool]] = defaultdict(dict)
    for item in iter_jsonl(path):
        row = item.value
        if item.error or not isinstance(row, dict) or "id" not in row:
            raise SystemExit(f"error: {path}:{item.line}: {item.error or 'expected an object with an id'}")
        if "correct" in row:
            ok = bool(row["correct"])
        elif "response" in row:
            if records is None or verifier is None:
                raise SystemExit(f"error: {path}:{item.line}: a `response` row needs --verifier and --data")
            if row["id"] not in records:
                raise SystemExit(f"error: {path}:{item.line}: id {row['id']!r} is not in the dataset split")
            ok = verify(verifier, row["response"], records[row["id"]]) == 1.0
        else:
            raise SystemExit(f"error: {path}:{item.line}: a row needs `correct` or `response`")
        group = name
        if "expert" in row:
            group = f"{name}/expert {row['expert']}" if many else f"expert {row['expert']}"
        groups[group].setdefault(str(row["id"]), ok)
    return dict(groups)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _main(argv)
    except (OSError, DataError) as e:  # a missing or malformed file: one line naming it
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="NAME=PATH or PATH of a JSONL prediction file")
    p.add_argument("--verifier", default=None, help="gsm8k | mathqa | strategyqa | synthetic")
    p.add_argument("--data", default=None)
    p.add_argument("--data-path", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    records = None
    if args.data:
        records = {r.id: r for r in load_dataset(args.data, args.data_path, args.split)}
    verifier = args.verifier or args.data
    correct: Dict[str, Dict[str, bool]] = {}
    for spec in args.files:
        correct.update(read_predictions(spec, len(args.files) > 1, records, verifier))
    table = error_overlap(correct)
    print(json.dumps(table.to_dict(), indent=2) if args.json else format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
