"""megatron_meml.collect_teacher_traces against a real loopback HTTP server that injects 500s, 429s, slow responses,
malformed bodies and (in one test) a permanent 400; then killed with SIGKILL mid-run and restarted."""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from megatron_meml import collect_teacher_traces

KEY = "test-key-123"
FAULTS = ["500", "429", "malformed", "timeout", "no_content", "slow_ok", "ok"]


class FaultyServer:
    """Chat-completions stand-in. The first attempt of each (system, user) pair gets a fault picked by a hash of
    the pair; a third of the pairs fail their second attempt with a 503 too; later attempts succeed.
    ``delay`` slows every successful answer; ``always_400`` names a question that is always rejected."""

    def __init__(self, delay=0.0, timeout_sleep=1.6, always_400=None):
        self.delay, self.timeout_sleep, self.always_400 = delay, timeout_sleep, always_400
        self.attempts, self.lock, self.faults = Counter(), threading.Lock(), Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
                    pass

            def reply(self, code, body: bytes, headers=()):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self.reply(401, b'{"error": "unauthorised"}')
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                system, user = req["messages"][0]["content"], req["messages"][1]["content"]
                fault = server.plan(system, user)
                if fault == "400":
                    return self.reply(400, b'{"error": "bad request"}')
                if fault in ("500", "503"):
                    return self.reply(int(fault), b"internal error")
                if fault == "429":
                    return self.reply(429, b'{"error": "slow down"}', [("Retry-After", "0")])
                if fault == "malformed":
                    return self.reply(200, b'{"choices": [{"message": ')
                if fault == "no_content":
                    return self.reply(200, b'{"choices": []}')
                if fault == "timeout":
                    time.sleep(server.timeout_sleep)
                elif fault == "slow_ok":
                    time.sleep(0.3)
                time.sleep(server.delay)
                expert = system.split()[-1]
                content = f"Expert {expert} reasons about: {user[:30]}\n#### 42"
                body = {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
                return self.reply(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def plan(self, system, user):
        key = (system, user)
        with self.lock:
            n = self.attempts[key]
            self.attempts[key] += 1
        h = int(hashlib.md5(f"{system}|{user}".encode()).hexdigest(), 16)
        if self.always_400 and user == self.always_400:
            fault = "400"
        elif n == 0:
            fault = FAULTS[h % len(FAULTS)]
        elif n == 1 and h % 3 == 0:
            fault = "503"
        else:
            fault = "ok"
        with self.lock:
            self.faults[fault] += 1
        return fault

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def experts_yaml(tmp_path):
    path = tmp_path / "experts.yaml"
    path.write_text("experts:\n  prompts:\n    - reference style, expert 0\n    - think long, expert 1\n"
                    "    - be structured, expert 2\n")
    return str(path)


def tool_args(server, experts_yaml, out, limit, concurrency=8):
    return ["--data", "synthetic", "--split", "train", "--limit", str(limit), "--experts-config", experts_yaml,
            "--base-url", server.url, "--model", "fake-teacher", "--api-key-env", "MEML_TEST_TEACHER_KEY",
            "--out", str(out), "--concurrency", str(concurrency), "--max-attempts", "4", "--timeout", "1.0",
            "--backoff-base", "0.02", "--backoff-max", "0.2", "--no-progress"]


def read_rows(path):
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in data.decode().splitlines()]


def assert_every_pair_once(rows, limit, experts=(1, 2)):
    pairs = Counter((r["id"], r["expert"]) for r in rows)
    expected = {(f"syn-train-{i}", e) for i in range(limit) for e in experts}
    assert set(pairs) == expected and set(pairs.values()) == {1}


def test_collects_every_pair_once_despite_faults(tmp_path, experts_yaml, monkeypatch):
    monkeypatch.setenv("MEML_TEST_TEACHER_KEY", KEY)
    tool, out, start = collect_teacher_traces, tmp_path / "traces.jsonl", time.monotonic()
    with FaultyServer() as server:
        assert tool.main(tool_args(server, experts_yaml, out, limit=40)) == 0
        assert {"500", "503", "429", "malformed", "timeout", "no_content", "slow_ok"} <= set(server.faults)
    rows = read_rows(out)
    assert_every_pair_once(rows, 40)
    row = next(r for r in rows if r["id"] == "syn-train-0" and r["expert"] == 2)
    assert row["response"].startswith("Expert 2 reasons about:") and row["model"] == "fake-teacher"
    assert set(row) >= {"id", "question", "expert", "response", "answer"}
    assert max(r["attempts"] for r in rows) >= 3
    assert tool.main(tool_args(server, experts_yaml, out, limit=40)) == 0  # resumed: nothing left, no request
    assert read_rows(out) == rows
    assert time.monotonic() - start < 30


def test_permanent_4xx_is_reported_not_retried(tmp_path, experts_yaml, monkeypatch, capsys):
    monkeypatch.setenv("MEML_TEST_TEACHER_KEY", KEY)
    tool, out = collect_teacher_traces, tmp_path / "traces.jsonl"
    from megatron_meml.data import load_synthetic
    rejected = load_synthetic("train", num_train=6)[3].question
    with FaultyServer(always_400=rejected) as server:
        assert tool.main(tool_args(server, experts_yaml, out, limit=6)) == 1
        assert server.faults["400"] == 2  # one attempt per expert: a 400 is final
    ids = {r["id"] for r in read_rows(out)}
    assert "syn-train-3" not in ids and len(read_rows(out)) == 10
    err = capsys.readouterr().err
    assert "failed 2" in err and "HTTP 400" in err


def test_missing_api_key_is_a_usage_error(tmp_path, experts_yaml, monkeypatch):
    monkeypatch.delenv("MEML_TEST_TEACHER_KEY", raising=False)
    with FaultyServer() as server:
        assert collect_teacher_traces.main(tool_args(server, experts_yaml, tmp_path / "o.jsonl", limit=2)) == 2


def test_backoff_is_bounded_and_jittered():
    tool, rng = collect_teacher_traces, random.Random(0)
    delays = [tool.backoff_delay(a, 1.0, 8.0, rng) for a in range(1, 10)]
    assert all(0.5 * min(8.0, 2 ** (a - 1)) <= d <= min(8.0, 2 ** (a - 1)) for a, d in zip(range(1, 10), delays))
    assert tool.backoff_delay(1, 1.0, 8.0, rng, retry_after=5.0) == 5.0
    assert tool.backoff_delay(1, 1.0, 8.0, rng, retry_after=100.0) == 8.0


def test_sigkill_mid_run_then_resume(tmp_path, experts_yaml):
    """SIGKILL the tool mid-run, leave a torn fragment as a kill during a write would, restart: every pair once."""
    out, limit = tmp_path / "traces.jsonl", 30
    env = dict(os.environ, MEML_TEST_TEACHER_KEY=KEY)
    start = time.monotonic()
    with FaultyServer(delay=0.1) as server:
        args = [sys.executable, "-m", "megatron_meml.collect_teacher_traces"] + tool_args(server, experts_yaml, out, limit, concurrency=3)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while time.monotonic() - start < 40:
                if out.exists() and out.read_bytes().count(b"\n") >= 10:
                    break
                if proc.poll() is not None:
                    pytest.fail(f"the tool exited before it was killed: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(10)
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        before = read_rows(out)
        assert 10 <= len(before) < 2 * limit
        with open(out, "ab") as f:
            f.write(b'{"id": "syn-train-0", "expert": 1, "resp')  # what a kill inside a write leaves
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=40)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "truncated a torn last line" in done.stderr
    rows = read_rows(out)
    assert rows[:len(before)] == before
    assert_every_pair_once(rows, limit)
    assert time.monotonic() - start < 60
