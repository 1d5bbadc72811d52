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
                        "mef.max_steps=40", "riel.enabled=false", "eval.num_examples=20", f"logging.run_dir={run_dir}",
                        "logging.progress_bar=false"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr, r.stderr[-3000:]  # no library warnings on a normal run
    assert "MEF loss: start" in r.stdout
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    mef = [row for row in rows if row["stage"] == "mef"]
    assert [row["step"] for row in mef] == list(range(40))
    assert mef[-1]["loss"] < 0.6 * mef[0]["loss"]
    assert all(row["skipped"] == 0.0 for row in mef)
    resolved = yaml.safe_load(open(run_dir / "config.yaml"))
    assert resolved["mef"]["max_steps"] == 40 and resolved["eval"]["num_examples"] == 20
    evals = json.load(open(run_dir / "eval.json"))
    assert list(evals) == ["after_mef"] and len(evals["after_mef"]["accuracy"]) == 3
    assert any(row["stage"] == "eval_after_mef" for row in rows)
    assert any(n.startswith("events") for n in os.listdir(run_dir / "tensorboard"))
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["mef_steps"] == 40
