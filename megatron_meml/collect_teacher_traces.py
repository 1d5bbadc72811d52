#!/usr/bin/env python
"""Collect MEF teacher traces from an OpenAI-compatible chat-completions endpoint, one expert prompt at a time.

    OPENAI_API_KEY=... python -m megatron_meml.collect_teacher_traces \
        --data gsm8k --data-path ../shared/data --split train \
        --experts-config examples/experts/paper_three_experts.yaml --experts 1 \
        --base-url https://api.example.com/v1 --model some-model --api-key-env OPENAI_API_KEY \
        --out traces/gsm8k-train.jsonl

For every record and every chosen expert e (default: all experts >= 1; expert 0 is the dataset rationale) it
POSTs ``{base_url}/chat/completions`` with ``messages = [system: P_e, user: question]`` and appends one line to
``--out``::

    {"id", "question", "expert", "response", "answer", "model", "finish_reason", "attempts"}

(a superset of the MEF row; ``megatron_meml.data.build_mef_data`` reads it and drops traces that fail the verifier).

Robustness:
  * bounded concurrency: ``--concurrency`` requests in flight (a thread pool; stdlib ``urllib`` only);
  * retries with exponential backoff and equal jitter on HTTP 408/429/5xx, timeouts, connection errors and
    malformed bodies (not JSON, no ``choices[0].message.content``), at most ``--max-attempts`` tries per request;
    ``Retry-After`` is honoured up to ``--backoff-max``; other 4xx fail at once;
  * append-only output, one line per finished request, flushed and fsynced (only the main thread writes);
  * resumable: (id, expert) pairs already in ``--out`` are skipped; a torn last line left by a crash is truncated
    on start (a malformed line elsewhere is an error naming the line — the file was edited by something else);
  * a tqdm progress bar (``--no-progress`` turns it off) and a failure summary at the end.
Exit status: 0 when every pair is in the output, 1 when some failed (run again to retry them), 2 on bad usage.
"""
from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import List, Optional, Set, Tuple

from tqdm import tqdm

from megatron_meml.config.loader import load_config
from megatron_meml.data import load_dataset, load_expert_prompts
from megatron_meml.data.jsonio import append_jsonl, repair_torn_tail


class RequestFailed(Exception):
    """One failed attempt; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, retryable: bool, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retryable, self.retry_after = retryable, retry_after


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def chat_completion(base_url: str, model: str, api_key: Optional[str], system: str, user: str, timeout: float,
                    temperature: float, max_tokens: Optional[int], include_reasoning: bool) -> Tuple[str, str]:
    """One request; returns ``(content, finish_reason)`` or raises :class:`RequestFailed`."""
    payload = {"model": model, "temperature": temperature,
               "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    if max_tokens:
        payload["max_tokens"] = max_tokens
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(base_url.rstrip("/") + "/chat/completions", data=json.dumps(payload).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        retryable = e.code in (408, 429) or e.code >= 500
        raise RequestFailed(f"HTTP {e.code}", retryable, _retry_after(e.headers.get("Retry-After"))) from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException,
            OSError) as e:
        raise RequestFailed(f"{type(e).__name__}: {getattr(e, 'reason', e)}", True) from None
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
        message = choice["message"]
        content = message["content"]
        if not isinstance(content, str) or not content.strip():
            raise ValueError("empty content")
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise RequestFailed(f"malformed body ({type(e).__name__})", True) from None
    reasoning = message.get("reasoning_content")
    if include_reasoning and isinstance(reasoning, str) and reasoning.strip():
        content = f"<think>\n{reasoning.strip()}\n</think>\n\n{content}"
    return content, str(choice.get("finish_reason") or "")


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random,
                  retry_after: Optional[float] = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): d = min(cap, base * 2^(attempt-1)), then
    d/2 + U(0, d/2) (equal jitter); at least ``retry_after`` (capped) when the server sent one."""
    d = min(cap, base * 2 ** (attempt - 1))
    d = d / 2 + rng.uniform(0, d / 2)
    if retry_after is not None:
        d = max(d, min(cap, retry_after))
    return d


def with_retries(call, max_attempts: int, base: float, cap: float, rng: random.Random):
    """``(call(), attempts)``; re-raises the last :class:`RequestFailed` when attempts run out or it is final."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call(), attempt
        except RequestFailed as e:
            if not e.retryable or attempt >= max_attempts:
                e.attempts = attempt
                raise
            time.sleep(backoff_delay(attempt, base, cap, rng, e.retry_after))


def done_pairs(path: str) -> Set[Tuple[str, int]]:
    """(id, expert) pairs already in the output, after truncating a torn last line."""
    dropped = repair_torn_tail(path)
    if dropped:
        print(f"{path}: truncated a torn last line ({dropped} bytes)", file=sys.stderr)
    done: Set[Tuple[str, int]] = set()
    if not os.path.exists(path):
        return done
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                done.add((row["id"], int(row["expert"])))
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"{path}:{lineno}: not a trace row; fix or move the file before resuming")
    return done


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="gsm8k | mathqa | strategyqa | synthetic")
    p.add_argument("--data-path", default=None, help="data root, dataset folder or split file")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--experts-config", required=True, help="YAML with an `experts:` section")
    p.add_argument("--experts", default=None, help="comma-separated expert ids (default: all >= 1)")
    p.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the key ('' = no auth)")
    p.add_argument("--out", required=True, help="append-only JSONL output")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-attempts", type=int, default=6)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--backoff-base", type=float, default=1.0)
    p.add_argument("--backoff-max", type=float, default=60.0)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--include-reasoning", action="store_true", help="prepend reasoning_content in <think> tags")
    p.add_argument("--seed", type=int, default=0, help="seed of the backoff jitter")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"environment variable {args.api_key_env} is not set (pass --api-key-env '' for no auth)",
                  file=sys.stderr)
            return 2
    cfg = load_config(args.experts_config)
    prompts = load_expert_prompts(cfg.experts)  # @file prompts: relative to the working directory
    experts = [int(e) for e in args.experts.split(",")] if args.experts else list(range(1, len(prompts)))
    bad = [e for e in experts if not 1 <= e < len(prompts)]
    if bad or not experts:
        print(f"--experts must name ids in 1..{len(prompts) - 1} (expert 0 is the dataset rationale), got "
              f"{args.experts}", file=sys.stderr)
        return 2
    records = load_dataset(args.data, args.data_path, args.split)[:args.limit]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    done = done_pairs(args.out)
    todo = [(r, e) for r in records for e in experts if (r.id, e) not in done]
    local = threading.local()

    def task(record, expert):
        if not hasattr(local, "rng"):
            local.rng = random.Random(f"{args.seed}:{threading.get_ident()}")
        call = functools.partial(chat_completion, args.base_url, args.model, api_key, prompts[expert],
                                 record.question, args.timeout, args.temperature, args.max_tokens,
                                 args.include_reasoning)
        return with_retries(call, args.max_attempts, args.backoff_base, args.backoff_max, local.rng)

    failures: List[Tuple[str, int, str]] = []
    written = 0
    bar = tqdm(total=len(todo), disable=args.no_progress, desc=f"traces {args.model}", unit="req")
    with open(args.out, "ab") as f, ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
        futures = {pool.submit(task, r, e): (r, e) for r, e in todo}
        try:
            for fut in as_completed(futures):
                record, expert = futures[fut]
                bar.update(1)
                try:
                    (content, finish), attempts = fut.result()
                except RequestFailed as e:
                    failures.append((record.id, expert, f"{e} after {getattr(e, 'attempts', '?')} attempt(s)"))
                    continue
                append_jsonl(f, {"id": record.id, "question": record.question, "expert": expert,
                                 "response": content, "answer": record.answer, "model": args.model,
                                 "finish_reason": finish, "attempts": attempts})
                written += 1
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            print("interrupted; finished traces are saved, run again to resume", file=sys.stderr)
            raise
    bar.close()
    print(f"{args.out}: wrote {written}, already present {len(done)}, failed {len(failures)}", file=sys.stderr)
    if failures:
        kinds = Counter(msg.split(" after ")[0] for _, _, msg in failures)
        print(f"failures by last error: {dict(kinds)}", file=sys.stderr)
        for rid, expert, msg in failures[:10]:
            print(f"  {rid} expert {expert}: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
