"""The quickstart entry point end to end (shortened): MEF on the synthetic task writes the run directory and the
loss falls. The full `make quickstart` is the same command with the example's step count."""
import json
import os
import subprocess
import sys

import yaml

from tests.conftest import ROOT


def test_quickstart_mef_short(tmp_path):
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "megatron_meml.train", "examples/quickstart/config.yaml",
                        "mef.max_steps=40", "riel.enabled=false", f"logging.run_dir={run_dir}",
                        "logging.progress_bar=false"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MEF loss: start" in r.stdout
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [row["step"] for row in rows] == list(range(40))
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    assert all(row["stage"] == "mef" and row["skipped"] == 0.0 for row in rows)
    resolved = yaml.safe_load(open(run_dir / "config.yaml"))
    assert resolved["mef"]["max_steps"] == 40 and resolved["model"]["hidden_size"] == 64
    assert any(n.startswith("events") for n in os.listdir(run_dir / "tensorboard"))
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["mef_steps"] == 40
