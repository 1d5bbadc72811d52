"""megatron_meml.scaling_study without SLURM (the default-run twin of tests/slurm/test_scaling_study.py): family and
GPU-count resolution, the per-size sbatch scripts it has megatron_meml.launch write (--dry-run), and a real
--local study of two tiny sizes (MEF, RIEL, an evaluation after each) aggregated into the table, CSV, JSON and plot
with the planner's prediction beside each measured number."""
import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

from megatron_meml import scaling_study as study

TOOL = ["-m", "megatron_meml.scaling_study"]

# the shortest MEF + RIEL + eval that still exercises every stage (both tests use it)
FAST = ["mef.max_steps=2", "riel.steps=2", "riel.questions_per_step=2", "riel.group_size=2", "riel.buffer_k=1",
        "riel.buffer_capacity=4", "eval.num_examples=3", "eval.max_new_tokens=6", "rollout.max_new_tokens=6",
        "data.synthetic.num_train=40", "data.synthetic.num_test=6"]


def test_families_and_gpu_counts():
    assert list(study.family_configs("tiny")) == ["tiny-l", "tiny-m", "tiny-s"]
    qwen = study.family_configs("qwen2.5")
    assert set(qwen) == {"qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b"}
    assert study.gpus_per_size(["qwen2.5-1.5b", "qwen2.5-14b"], None) == {"qwen2.5-1.5b": 8, "qwen2.5-14b": 16}
    assert study.gpus_per_size(["tiny-s", "tiny-m"], "2") == {"tiny-s": 2, "tiny-m": 2}
    assert study.gpus_per_size(["tiny-s", "tiny-m"], "tiny-m=4") == {"tiny-s": 1, "tiny-m": 4}
    with pytest.raises(SystemExit, match="--gpus"):
        study.gpus_per_size(["tiny-s"], "tiny-x=2")
    with pytest.raises(SystemExit, match="no configs"):
        study.family_configs("gpt5")


def test_one_sbatch_script_per_size():
    r = subprocess.run([sys.executable, *TOOL, "--family", "qwen2.5", "--sizes", "qwen2.5-1.5b,qwen2.5-14b",
                        "--submit", "--dry-run", "--out", "/tmp/meml-study-dry", "--slurm",
                        "--cluster examples/slurm/cluster.yaml --time 01:00:00"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    scripts = r.stdout.split("# ---- ")[1:]
    assert [s.split()[0] for s in scripts] == ["qwen2.5-1.5b", "qwen2.5-14b"]
    assert "#SBATCH --nodes=1" in scripts[0] and "#SBATCH --nodes=2" in scripts[1]   # 8 and 16 GPUs
    assert "logging.run_dir=/tmp/meml-study-dry/qwen2.5-14b" in scripts[1] and "--time=01:00:00" in scripts[1]


def test_local_study_of_two_tiny_sizes(tmp_path):
    out = tmp_path / "study"
    r = subprocess.run([sys.executable, *TOOL, "--family", "tiny", "--sizes", "tiny-s,tiny-m", "--local",
                        "--out", str(out), *FAST], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.load(open(out / "study.json"))
    assert [row["size"] for row in rows] == ["tiny-s", "tiny-m"]      # sorted by parameters
    for row in rows:
        assert row["finished"] and row["mef_steps"] == 2 and row["riel_steps"] == 2
        for key in ("acc_mef", "acc_riel", "majority_riel"):
            assert 0.0 <= row[key] <= 1.0
        for measured, planned in (("mef_step_s", "plan_mef_step_s"), ("riel_step_s", "plan_riel_step_s"),
                                  ("riel_train_tokens_per_s_gpu", "plan_riel_train_tokens_per_s_gpu"),
                                  ("peak_gib", "plan_peak_gib")):
            assert row[measured] > 0 and row[planned] > 0, (measured, planned)
        assert row["riel_generate_s"] + row["riel_train_s"] <= row["riel_step_s"] * 1.01
    assert rows[0]["params"] < rows[1]["params"] and rows[1]["plan_mef_step_s"] > rows[0]["plan_mef_step_s"]
    table = (out / "study.md").read_text()
    assert table.count("| tiny-") == 2 and "(planner)" in table
    assert len(list(csv.DictReader(open(out / "study.csv")))) == 2
    assert (out / "study.png").stat().st_size > 10_000
    # aggregation alone reproduces the table from the run directories
    again = subprocess.run([sys.executable, *TOOL, "--aggregate", str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("| tiny-") == 2
