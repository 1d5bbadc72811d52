#!/usr/bin/env python
"""Build the MEF trace file a run's ``mef.traces`` names: the dataset's gold rationales as expert 0 plus verified
teacher traces as experts 1..N-1.

    python -m megatron_meml.build_mef_data --data gsm8k --out runs/traces/gsm8k-mef.jsonl               # rationale only
    python -m megatron_meml.build_mef_data --data gsm8k --data-path data --split train \\
        --traces runs/traces/gsm8k-r1.jsonl runs/traces/gsm8k-gpt4o.jsonl --out runs/traces/gsm8k-mef.jsonl

Inputs: the ``--split`` records of ``--data`` under ``--data-path`` (default ``$MEML_DATA`` or ``data``, the layout
python -m megatron_meml.prepare_data writes) and zero or more teacher-trace JSONL files as python -m megatron_meml.collect_teacher_traces writes
them (``{"id", "expert", "response", ...}`` per line, expert >= 1). The merge is
:func:`megatron_meml.data.build_mef_data`: per record its gold rationale (expert 0), then each expert's trace; a
trace whose final answer fails the dataset's verifier is dropped (``--keep-unverified`` keeps it), a second trace
of the same (id, expert) is a duplicate, an id not in the split is counted, a malformed line is an error naming
file and line (``--on-bad-record skip`` counts and skips it).

Output: ``--out`` as MEF JSONL (``{"id", "question", "expert", "response", "answer"}``, written atomically), then a
summary on stdout (rows per expert, unverified / missing per expert, duplicates, unknown ids, bad lines, the
output's sha256) and, with ``--summary PATH``, the same as JSON. Exit status 0; 2 with one line on bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from megatron_meml.data import DataError, build_mef_data, load_dataset, write_mef
from megatron_meml.data.dataset import LOADERS, default_data_root
from megatron_meml.data.mef import describe_mef_rows
from megatron_meml.data.shards import file_sha256 as sha256


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, choices=sorted(LOADERS), help="dataset (also the verifier's name)")
    p.add_argument("--data-path", default=None, help="data root (default: $MEML_DATA or ./data)")
    p.add_argument("--split", default="train", help="split whose records the traces belong to (default: train)")
    p.add_argument("--traces", nargs="*", default=[], help="teacher-trace JSONL files (experts >= 1)")
    p.add_argument("--out", required=True, help="MEF JSONL to write (the run's mef.traces)")
    p.add_argument("--keep-unverified", action="store_true", help="keep traces whose final answer fails the verifier")
    p.add_argument("--on-bad-record", choices=("error", "skip"), default="error")
    p.add_argument("--limit", type=int, default=None, help="only the first N records of the split (a smoke test)")
    p.add_argument("--summary", default=None, help="also write the summary as JSON here")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    data_path = args.data_path or default_data_root()
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    for path in args.traces:
        if not os.path.isfile(path):
            print(f"error: --traces: file not found: {path}", file=sys.stderr)
            return 2
    try:
        records = load_dataset(args.data, data_path, args.split, on_bad_record=args.on_bad_record)[:args.limit]
        rows, summary = build_mef_data(records, args.traces, args.data, drop_unverified=not args.keep_unverified,
                                       on_bad_record=args.on_bad_record)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_mef(args.out, rows)
    experts = sorted(set(summary.kept) | set(summary.missing) | {0})
    print(f"{args.out}: {describe_mef_rows(rows, max(experts) + 1)}")
    print(f"  records {summary.records} ({args.data} {args.split}); teacher files {len(args.traces)}; "
          f"unverified {dict(summary.unverified) or 0} ({'kept' if args.keep_unverified else 'dropped'}); "
          f"records without a trace {summary.missing or 0}; duplicates {summary.duplicates}; "
          f"unknown ids {summary.unknown_id}; bad lines {summary.bad_lines}")
    digest = sha256(args.out)
    print(f"  sha256 {digest}")
    if args.summary:
        os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
        with open(args.summary, "w") as f:
            json.dump(dict(summary.to_dict(), out=args.out, sha256=digest), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
