"""megatron_meml.gpu.scale_check: its Qwen2.5-1.5B config is the published shape, the report formats every row (and a
failed part's error), and -- marked slow -- the whole script end to end on the tiny CPU shape (`--tiny`)."""
import json
import os
import subprocess
import sys

import pytest

from megatron_meml.config import load_config
from megatron_meml.planning import ModelShape
from tests.conftest import ROOT

from megatron_meml.gpu import scale_check as check


def test_qwen15_config_is_the_published_shape():
    cfg = load_config(None, check.config_overrides(check.QWEN15, "/tmp/unused"))
    assert ModelShape.from_config(cfg).params() == 1_543_714_304   # Qwen2.5-1.5B, tied embeddings
    assert cfg.precision.dtype == "bf16" and cfg.model.fused_output and not cfg.riel.skip_zero_advantage
    assert cfg.riel.questions_per_step * 3 * cfg.riel.group_size == 384 and cfg.rollout.max_new_tokens == 512
    assert check.QWEN15["mef_tokens"] >= 16384


def test_report_rows_and_errors():
    ceil = {"matmul_flops": 700e12, "copy_bytes_per_s": 4.2e12, "matmul_n": 8192, "spec_flops": 989e12}
    mef = [dict(part="mef", recompute=False, planner_choice=True, tokens_per_step=16384, step_s=0.5, best_s=0.49,
                peak_bytes=60 * 2 ** 30, tokens_per_s=32768.0, mfu=0.45, mfu_spec=0.318, planner_step_s=0.6,
                planner_peak_bytes=55 * 2 ** 30, loss=12.0),
           dict(part="mef", recompute=True, planner_choice=False, tokens_per_step=16384, error="OutOfMemoryError: x")]
    riel = [dict(part="riel", step=0, generate_s=20.0, score_s=0.5, train_s=8.0, step_s=28.5, peak_bytes=70 * 2 ** 30,
                 rollouts=384, new_tokens=150000, gen_tokens_per_s=7500.0, train_tokens_per_s=28000.0, sft_fired=0,
                 planner_generate_s=10.0, planner_train_s=6.0, planner_peak_bytes=60 * 2 ** 30, planner_step_s=16.0)]
    text = check.tables(ceil, mef, riel)
    assert "| recompute off (planner) | 16384 | 0.500 (0.600, 0.83) | 32768 | 31.8% | 45.0% | 60.0 (55.0, 1.09)" in text
    assert text.startswith("ceilings: spec 989 TFLOP/s, measured matmul 700 TFLOP/s")
    assert "error: OutOfMemoryError: x" in text
    assert "| 0 | 384 | 150000 | 20.00 (10.00, 2.00) | 0.50 | 8.00 (6.00, 1.33)" in text
    line = check.summary_line(mef, riel)
    assert line.startswith("scale-check: MEF MFU 31.8% of spec, 45.0% of measured matmul") and "1 part(s) failed" in line


def test_spec_peak_by_device_name():
    assert check.spec_peak("NVIDIA H100 80GB HBM3") == check.spec_peak("NVIDIA H200") == 989e12
    assert check.spec_peak("NVIDIA H100 PCIe") == 756e12 and check.spec_peak("CPU") is None


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "megatron_meml.gpu.scale_check", "--tiny", "--json", str(tmp_path / "scale_check.json")], cwd=ROOT,
                       capture_output=True,
                       text=True, timeout=900, env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.load(open(tmp_path / "scale_check.json"))
    assert len(out["mef"]) == 2 and len(out["riel"]) == 2
    assert all("error" not in row for row in out["mef"] + out["riel"])
    assert {row["recompute"] for row in out["mef"]} == {False, True}
    assert r.stdout.strip().splitlines()[-1].startswith("scale-check: MEF MFU")
    assert out["summary"] == r.stdout.strip().splitlines()[-1] and "| MEF |" in out["table"]
    assert sorted(os.listdir(tmp_path)) == ["scale_check.json"]     # the run directory is not in the out folder
