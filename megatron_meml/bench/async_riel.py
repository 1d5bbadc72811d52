"""RIEL steps per second with ``riel.async_rollout`` on vs off at the same number of ranks, in one run (CPU, gloo).

    python -m megatron_meml.bench.async_riel [--ranks 3] [--steps 10] [--warmup 2] [--repeats 1] [--rollout-ranks 1]
                                     [key=value ...]

Baseline (off): all ``--ranks`` ranks train as data-parallel replicas and, between steps, generate the step's
requests split over the same replicas (``rollout/scheduler.py``): the best synchronous use of N ranks for a model
this size (TP/PP would only add communication). Async (on): ``--rollout-ranks`` ranks generate, the other ranks
train (DP), one step off. Same config, same seeds, same number of processes, one thread each.

The workload is the quickstart model (2 layers, hidden 96) at random init, RIEL only, with
``riel.skip_zero_advantage=false`` so that every rollout is trained on (a random model scores 0 everywhere, and
skipping all-zero groups would leave nothing to train: the compute then matches a step where every group has a
signal). Step time = wall time between consecutive metric rows (the loop's whole period); the first ``--warmup``
steps of every run are left out. ``--repeats`` runs the two modes alternately (sync, async, sync, ...) and pools
their steady-state steps, so that a drifting machine load hits both alike. Printed per mode: steps/s from the best
step, the median step and the mean (steady steps / their total time: the robust one on a noisy machine),
generation and training seconds per step (medians), and for async the training ranks' wait for rollouts and
``async/overlap`` (share of each step's generation hidden behind training). Last line:
``async / sync steps per second: best <r>, median <r>, mean <r>``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from megatron_meml.backend.runtime.parallel import free_port
from megatron_meml.bench.harness import median_paired
from megatron_meml.eval.plots import read_metrics
from megatron_meml.paths import REPO

WORKLOAD = ["mef.enabled=false", "eval.enabled=false", "logging.progress_bar=false", "logging.tensorboard=false",
            "riel.questions_per_step=4", "riel.group_size=8", "rollout.max_new_tokens=32",
            "riel.skip_zero_advantage=false", "riel.lr=1e-4", "checkpoint.save_interval=0"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=3, help="processes in both modes")
    p.add_argument("--rollout-ranks", type=int, default=1, help="async: ranks that generate")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2, help="first steps of each run left out of the statistics")
    p.add_argument("--repeats", type=int, default=1, help="runs per mode, alternating")
    p.add_argument("--config", default="examples/quickstart/config.yaml")
    p.add_argument("--keep", help="keep the two run directories here")
    p.add_argument("overrides", nargs="*", help="extra section.key=value for both modes")
    a = p.parse_args(argv)
    if a.steps <= a.warmup + 1:
        p.error("--steps must exceed --warmup + 1")
    if not 1 <= a.rollout_ranks < a.ranks:
        p.error("--rollout-ranks must be in [1, --ranks)")
    return a


def launch(a, run_dir: str, extra):
    """``a.ranks`` local processes of the training entry point (what torchrun would start); waits for them."""
    port, procs = free_port(), []
    for r in range(a.ranks):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(a.ranks), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "megatron_meml.train", a.config, *WORKLOAD, f"riel.steps={a.steps}",
             f"logging.run_dir={run_dir}", *extra, *a.overrides], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate()[1] for p in procs]
    for r, p in enumerate(procs):
        if p.returncode != 0:
            raise SystemExit(f"rank {r} failed (exit {p.returncode}):\n{errs[r][-3000:]}")
    return read_metrics(os.path.join(run_dir, "metrics.jsonl"))


def summarise(runs, warmup: int, gen_key: str):
    """Pooled steady-state statistics of one mode's runs (each a list of metric rows)."""
    period, steady = [], []
    for rows in runs:
        rows = sorted((r for r in rows if r["stage"] == "riel"), key=lambda r: r["step"])
        period += [b["time"] - a["time"] for a, b in zip(rows, rows[1:])][warmup:]
        steady += rows[warmup + 1:]
    med = statistics.median
    out = {"best": 1.0 / min(period), "median": 1.0 / med(period), "mean": len(period) / sum(period),
           "gen": med(r[gen_key] for r in steady), "train": med(r["time/train"] for r in steady), "n": len(period)}
    if "async/overlap" in steady[0]:
        with_next = [r for r in steady if "async/overlap" in r]
        out["wait"] = med(r["time/wait_rollouts"] for r in steady)
        out["overlap"] = med(r["async/overlap"] for r in with_next)
        out["weight"] = med(r["async/weight_mean"] for r in steady)
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    root = a.keep or tempfile.mkdtemp(prefix="bench_async_")
    load0 = os.getloadavg()[0]
    runs = {"sync": [], "async": []}
    wall = {"sync": 0.0, "async": 0.0}
    extra = {"sync": [], "async": ["riel.async_rollout=true", f"riel.rollout_ranks={a.rollout_ranks}"]}
    try:
        for i in range(a.repeats):
            for mode in ("sync", "async"):
                t0 = time.time()
                runs[mode].append(launch(a, os.path.join(root, f"{mode}{i}"), extra[mode]))
                wall[mode] += time.time() - t0
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    sync = summarise(runs["sync"], a.warmup, "time/generate_score")
    asy = summarise(runs["async"], a.warmup, "rollout/seconds")
    T = a.ranks - a.rollout_ranks
    print(f"{a.ranks} ranks, {a.repeats} x {a.steps} steps per mode ({a.warmup} warm-up each, {sync['n']} steady "
          f"steps pooled); load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end, {os.cpu_count()} "
          f"CPUs; wall {wall['sync']:.0f}s sync, {wall['async']:.0f}s async")
    print(f"{'mode':<34}{'steps/s best':>13}{'median':>9}{'mean':>8}{'gen s':>8}{'train s':>9}{'wait s':>8}"
          f"{'overlap':>9}")
    print(f"{f'sync  (DP {a.ranks}: generate, then train)':<34}{sync['best']:>13.3f}{sync['median']:>9.3f}"
          f"{sync['mean']:>8.3f}{sync['gen']:>8.2f}{sync['train']:>9.2f}{'-':>8}{'-':>9}")
    print(f"{f'async ({T} train + {a.rollout_ranks} rollout)':<34}{asy['best']:>13.3f}{asy['median']:>9.3f}"
          f"{asy['mean']:>8.3f}{asy['gen']:>8.2f}{asy['train']:>9.2f}{asy['wait']:>8.2f}{asy['overlap']:>9.2f}")
    print(f"async behaviour weight (median of step means): {asy['weight']:.4f}")
    pairs = [(summarise([ra], a.warmup, "rollout/seconds")["mean"],
              summarise([rs], a.warmup, "time/generate_score")["mean"]) for ra, rs in zip(runs["async"], runs["sync"])]
    print(f"headline (1 thread per rank: OMP_NUM_THREADS=1, median paired ratio over {len(pairs)} alternating runs, "
          f"steady steps / their time): async / sync {median_paired(pairs):.3f}")
    print(f"async / sync steps per second: best {asy['best'] / sync['best']:.2f}, "
          f"median {asy['median'] / sync['median']:.2f}, mean {asy['mean'] / sync['mean']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
