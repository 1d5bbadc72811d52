"""The paper's ablation grid on the synthetic task, with a fixed budget and seeds, printed as the paper's table.

    python tools/ablate.py --budget small [--seeds 1 2] [--out runs/ablate]

Rows (each: MEF then RIEL with the same step budget; accuracy = greedy, held-out, after RIEL):
  single-expert GRPO            experts.single_expert=true  (SFT on expert 0's traces, plain GRPO, no KL/buffer)
  + multi-expert SFT            N experts, MEF on every expert's traces; RIEL without KL and buffer
  + multi-expert SFT + buffer   ... with the hard-example buffer
  + multi-expert SFT + KL       ... with the inter-expert KL
  all (MEML-GRPO)               both
The four multi-expert rows share one MEF run per seed (its final checkpoint is copied into each RIEL run, which
then resumes after MEF), so they differ only in RIEL. Each row reports the mean over experts of accuracy and the
majority vote across experts, averaged over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "quickstart", "config.yaml")

BUDGETS = {  # overrides that set the step budget; everything else comes from the quickstart config
    "small": ["riel.steps=40", "eval.num_examples=200"],
    "medium": ["riel.steps=120", "eval.num_examples=200"],
}
MULTI_ROWS = [
    ("+ multi-expert SFT", ["riel.inter_expert_kl=false", "riel.hard_example_buffer=false"]),
    ("+ multi-expert SFT + buffer", ["riel.inter_expert_kl=false", "riel.hard_example_buffer=true"]),
    ("+ multi-expert SFT + KL", ["riel.inter_expert_kl=true", "riel.hard_example_buffer=false"]),
    ("all (MEML-GRPO)", ["riel.inter_expert_kl=true", "riel.hard_example_buffer=true"]),
]
SINGLE = ("single-expert GRPO", ["experts.single_expert=true", "riel.inter_expert_kl=false",
                                 "riel.hard_example_buffer=false"])


def train(run_dir: str, overrides, log) -> dict:
    """One training run (subprocess); returns its eval.json."""
    cmd = [sys.executable, "-m", "megatron_meml.train", CONFIG, f"logging.run_dir={run_dir}",
           "logging.progress_bar=false", *overrides]
    t0 = time.time()
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "train.log"), "w") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"run failed (exit {rc}): see {run_dir}/train.log")
    log(f"  {os.path.relpath(run_dir, ROOT)} done in {time.time() - t0:.0f}s")
    with open(os.path.join(run_dir, "eval.json")) as f:
        return json.load(f)


def seed_mef(out: str, seed: int, base, log) -> str:
    """The shared multi-expert MEF run of one seed (RIEL off)."""
    run_dir = os.path.join(out, f"seed{seed}", "mef_multi")
    if not os.path.exists(os.path.join(run_dir, "eval.json")):
        train(run_dir, base + ["riel.enabled=false"], log)
    return run_dir


def riel_from(mef_dir: str, run_dir: str, overrides, log) -> dict:
    """A RIEL run that starts from a finished MEF run (checkpoint + after-MEF eval copied in)."""
    if os.path.exists(os.path.join(run_dir, "eval.json")) and "after_riel" in json.load(
            open(os.path.join(run_dir, "eval.json"))):
        return json.load(open(os.path.join(run_dir, "eval.json")))
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    shutil.copytree(os.path.join(mef_dir, "checkpoints"), os.path.join(run_dir, "checkpoints"))
    shutil.copy(os.path.join(mef_dir, "eval.json"), os.path.join(run_dir, "eval.json"))
    return train(run_dir, overrides, log)


def table(rows) -> str:
    lines = ["| setting | mean accuracy over experts | majority vote | after MEF (mean) | seeds |",
             "|---|---:|---:|---:|---:|"]
    for name, evals in rows:
        mean = sum(e["after_riel"]["mean_accuracy"] for e in evals) / len(evals)
        vote = sum(e["after_riel"]["majority_vote"] for e in evals) / len(evals)
        mef = sum(e["after_mef"]["mean_accuracy"] for e in evals) / len(evals)
        lines.append(f"| {name} | {mean:.3f} | {vote:.3f} | {mef:.3f} | {len(evals)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "ablate"))
    a = ap.parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    rows = {name: [] for name, _ in [SINGLE] + MULTI_ROWS}
    for seed in a.seeds:
        base = BUDGETS[a.budget] + [f"seed={seed}", f"data.seed={seed}", f"rollout.seed={seed}"]
        log(f"seed {seed}: single-expert run")
        rows[SINGLE[0]].append(train(os.path.join(a.out, f"seed{seed}", "single_expert"), base + SINGLE[1], log))
        log(f"seed {seed}: shared multi-expert MEF")
        mef_dir = seed_mef(a.out, seed, base, log)
        for name, ov in MULTI_ROWS:
            slug = name.strip("+ ").replace(" + ", "_").replace(" ", "_").replace("(", "").replace(")", "")
            rows[name].append(riel_from(mef_dir, os.path.join(a.out, f"seed{seed}", slug), base + ov, log))
    text = table([(name, rows[name]) for name, _ in [SINGLE] + MULTI_ROWS])
    with open(os.path.join(a.out, f"ablation_{a.budget}.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
