"""Runs many cases of ``megatron_meml.train`` and the tools in ONE process (each case in-process, its stdout /
stderr captured), so a table of cases costs one interpreter start instead of one per case.

    python -m tests.e2e.bad_inputs_worker CASES.json RESULTS.json

CASES.json: [{"name", "kind": "train" | "plan_scaling" | "expert_overlap" | "convert_hf" | "snapshot" | "truncate",
"argv": [...]}]. Each result: {"name", "code", "stdout", "stderr", "escaped"}; ``escaped`` holds the traceback of an
exception that got out of the entry point (what a user would have seen as a traceback), else None. A ``snapshot``
case prints {relative path: sha1} of every file under ``argv[0]`` (to show later cases left a run untouched); a
``truncate`` case cuts the file ``argv[0]`` to half its size (a checkpoint shard torn by a crash).
"""
import contextlib
import importlib
import io
import json
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool(name):
    return importlib.import_module(f"megatron_meml.{name}").main


def snapshot(root):
    import hashlib

    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = hashlib.sha1(open(p, "rb").read()).hexdigest()
    return out


def run_case(case):
    from megatron_meml import train

    if case["kind"] == "snapshot":
        return {"name": case["name"], "code": 0, "stdout": json.dumps(snapshot(case["argv"][0])), "stderr": "",
                "escaped": None}
    if case["kind"] == "truncate":
        os.truncate(case["argv"][0], os.path.getsize(case["argv"][0]) // 2)
        return {"name": case["name"], "code": 0, "stdout": "", "stderr": "", "escaped": None}
    entry = train.main if case["kind"] == "train" else _tool(case["kind"])
    for k in ("MASTER_ADDR", "MASTER_PORT"):  # a fresh rendezvous port per case
        os.environ.pop(k, None)
    out, err, escaped, code = io.StringIO(), io.StringIO(), None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = entry(list(case["argv"]))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - the point is to report anything that escapes
            escaped = traceback.format_exc()
            code = 1
    return {"name": case["name"], "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "escaped": escaped}


def main(argv):
    cases = json.load(open(argv[0]))
    results = [run_case(c) for c in cases]
    with open(argv[1], "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
