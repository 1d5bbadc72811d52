"""python -m megatron_meml.scaling_study on a real SLURM (tests/slurm/cluster.py): one sbatch job per tiny size through
megatron_meml.launch (CPU mode, gloo), --wait until both left the queue, then the aggregated table, CSV, JSON and
plot. Marked slow (two training jobs after SLURM's start-up, ~1-2 minutes on 2 idle cores); its fast default-run twin
is tests/unit/commands/test_scaling_study.py (--local)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.unit.commands.test_scaling_study import FAST

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_study_on_slurm(slurm_cluster, tmp_path):
    out = tmp_path / "study"
    slurm = f"--cpu --python {sys.executable} --time 00:10:00 --env PYTHONWARNINGS=ignore"
    r = subprocess.run([sys.executable, "-m", "megatron_meml.scaling_study", "--family", "tiny", "--sizes", "tiny-s,tiny-m",
                        "--submit", "--wait", "--wait-timeout", "400", "--out", str(out), "--slurm", slurm, *FAST],
                       cwd=ROOT, env=slurm_cluster.env, capture_output=True, text=True, timeout=600)
    manifest = json.load(open(out / "manifest.json"))
    logs = "\n".join(open(p, errors="replace").read()[-1500:]
                     for e in manifest["sizes"] for p in
                     [os.path.join(e["run_dir"], "slurm", f"slurm-{e.get('job_id')}.out")] if os.path.exists(p))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:] + logs
    assert all(isinstance(e["job_id"], int) for e in manifest["sizes"])
    rows = json.load(open(out / "study.json"))
    assert [row["size"] for row in rows] == ["tiny-s", "tiny-m"]
    for row in rows:
        assert row["finished"] and row["riel_steps"] == 2 and 0.0 <= row["acc_riel"] <= 1.0
        assert row["plan_riel_step_s"] > 0 and row["peak_gib"] > 0
    assert (out / "study.png").exists() and (out / "study.md").read_text().count("| tiny-") == 2
