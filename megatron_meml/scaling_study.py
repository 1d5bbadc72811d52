"""A scaling study: one run per model size of a family, then one table and one plot across the sizes.

    python -m megatron_meml.scaling_study --family tiny --local --out runs/study-tiny            # CPU, in sequence
    python -m megatron_meml.scaling_study --family qwen2.5 --gpus qwen2.5-1.5b=8,qwen2.5-7b=16 --out runs/study-qwen \\
        --slurm "--cluster examples/slurm/cluster.yaml --time 04:00:00" --submit [--wait]   # one sbatch per size
    python -m megatron_meml.scaling_study --aggregate runs/study-qwen                           # table + plot again

A family is a folder ``examples/scaling/<family>/`` (its ``*.yaml`` except ``base.yaml``) or the configs
``examples/scaling/<family>*.yaml`` (``qwen2.5``, ``llama3``; not ``*-family.yaml`` / ``base.yaml``); ``--sizes``
picks some of them by name (file stem). GPUs per size: ``--gpus N`` for all, ``--gpus name=N,...``, default what
``python -m megatron_meml.plan_scaling`` writes the config for (1 for configs it does not know). Trailing ``section.key=value``
overrides apply to every size; each run writes to ``<out>/<size>`` (``logging.run_dir``).

Running. ``--local``: the sizes one after the other on this machine (``python -m megatron_meml.train``, or torchrun
with one process per GPU when a size has more than one), each log in ``<out>/<size>/train.log``; a failed size is
reported and the study goes on. ``--submit``: one job per size through ``megatron_meml.launch`` (``--slurm`` passes
cluster options to it; nodes = ceil(GPUs / gpus-per-node), or with ``--cpu`` one node running GPUs processes);
``--wait`` polls ``squeue`` until the jobs have left the queue, then aggregates. ``--dry-run`` prints what would run.
``<out>/manifest.json`` records the sizes, GPUs, run dirs and job ids.

Aggregation (``<out>/study.md``, ``study.csv``, ``study.json``, ``study.png``), per size from its run directory
(``config.yaml``, ``metrics.jsonl``, ``eval.json``): parameters; mean expert accuracy and majority vote after each
stage; MEF step time and tokens/s/GPU; RIEL step time split (generate + score, train) and trained tokens/s/GPU;
peak memory per GPU (``memory/peak_gib``; on the CPU the process peak RSS); beside each, ``megatron_meml.planning``'s
prediction for the same shape, layout and batch on the hardware given by ``--peak-tflops / --gpu-mem-gib / --mfu``
(default: an H100) -- on a CPU study the predictions are GPU numbers, so only their trend across sizes compares.
Medians over the steps after the first (warm-up).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from megatron_meml.config import load_config
from megatron_meml.eval.plots import read_metrics
from megatron_meml.paths import EXAMPLES, REPO
from megatron_meml.planning import SCALING_RUNS, Hardware, Layout, ModelShape, Workload, evaluate, train_seconds

SCALING_DIR = os.path.join(EXAMPLES, "scaling")
GiB = float(2 ** 30)


# ------------------------------------------------------------------------------------------------------- sizes
def family_configs(family: str) -> Dict[str, str]:
    """{size name: config path} of a family (module docstring), in file order."""
    folder = os.path.join(SCALING_DIR, family)
    if os.path.isdir(folder):
        paths = sorted(glob.glob(os.path.join(folder, "*.yaml")))
        paths = [p for p in paths if os.path.basename(p) != "base.yaml"]
    else:
        paths = sorted(p for p in glob.glob(os.path.join(SCALING_DIR, f"{family}*.yaml"))
                       if not p.endswith(("-family.yaml", "base.yaml")))
    if not paths:
        raise SystemExit(f"error: no configs for --family {family!r} (looked for {folder}/*.yaml and "
                         f"{SCALING_DIR}/{family}*.yaml)")
    return {os.path.splitext(os.path.basename(p))[0]: p for p in paths}


def gpus_per_size(names: Sequence[str], spec: Optional[str]) -> Dict[str, int]:
    """``--gpus``: None -> the plan_scaling default (1 when unknown); "N" -> all; "a=N,b=M" -> per size."""
    out = {n: SCALING_RUNS.get(n, 1) for n in names}
    if not spec:
        return out
    if re.fullmatch(r"\d+", spec):
        return {n: int(spec) for n in names}
    for part in spec.split(","):
        name, _, n = part.partition("=")
        if name not in out or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"error: --gpus {part!r}: expected NAME=N with NAME one of {', '.join(names)}")
        out[name] = int(n)
    return out


# ------------------------------------------------------------------------------------------------------- running
def train_command(config: str, overrides: Sequence[str], gpus: int) -> List[str]:
    if gpus == 1:
        return [sys.executable, "-m", "megatron_meml.train", config, *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
            "-m", "megatron_meml.train", config, *overrides]


def run_local(entry: dict, overrides: Sequence[str], dry_run: bool) -> None:
    cmd = train_command(entry["config"], [*overrides, f"logging.run_dir={entry['run_dir']}"], entry["gpus"])
    print(f"[{entry['name']}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    if dry_run:
        return
    os.makedirs(entry["run_dir"], exist_ok=True)
    t0 = time.time()
    with open(os.path.join(entry["run_dir"], "train.log"), "w") as log:
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    entry.update(returncode=rc, seconds=round(time.time() - t0, 1))
    if rc:
        with open(os.path.join(entry["run_dir"], "train.log"), errors="replace") as f:
            last = [line.strip() for line in f if line.strip()]
        entry["error"] = f"exit {rc}: {last[-1][:200] if last else 'no output'}"
    print(f"[{entry['name']}] exit {rc} after {entry['seconds']} s"
          + ("" if rc == 0 else f" -- see {entry['run_dir']}/train.log"), flush=True)


def launch_command(entry: dict, overrides: Sequence[str], slurm_args: Sequence[str], mode: str) -> List[str]:
    """megatron_meml.launch for one size: nodes and processes per node from its GPU count."""
    cmd = [sys.executable, "-m", "megatron_meml.launch", entry["config"], *overrides,
           f"logging.run_dir={entry['run_dir']}", *slurm_args, f"--{mode}"]
    g = entry["gpus"]
    if "--cpu" in slurm_args:
        cmd += ["--nodes", "1", "--nproc-per-node", str(g)]
    else:
        per_node = _flag(slurm_args, "--gpus-per-node")
        per_node = int(per_node) if per_node else min(g, 8)
        if g % per_node and g > per_node:
            raise SystemExit(f"error: {entry['name']}: {g} GPUs do not fill nodes of {per_node}")
        cmd += ["--nodes", str(max(1, math.ceil(g / per_node)))]
        if not _flag(slurm_args, "--gpus-per-node"):
            cmd += ["--gpus-per-node", str(min(g, per_node))]
    return cmd


def _flag(args: Sequence[str], name: str) -> Optional[str]:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def submit(entry: dict, overrides: Sequence[str], slurm_args: Sequence[str], dry_run: bool) -> None:
    cmd = launch_command(entry, overrides, slurm_args, "dry-run" if dry_run else "submit")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: megatron_meml.launch failed for {entry['name']} (exit {r.returncode}):\n"
                         f"{r.stderr.strip()[-2000:]}")
    if dry_run:
        print(f"# ---- {entry['name']} ({entry['gpus']} GPUs)\n{r.stdout}", end="")
        return
    m = re.search(r"submitted job (\d+)", r.stdout)
    entry["job_id"] = int(m.group(1)) if m else None
    print(f"[{entry['name']}] submitted job {entry['job_id']} ({entry['gpus']} GPUs), run dir {entry['run_dir']}",
          flush=True)


def wait_jobs(job_ids: Sequence[int], timeout: float, poll: float = 2.0) -> List[int]:
    """Poll squeue until none of ``job_ids`` is queued or running (a requeued job counts as queued); returns the
    ids still in the queue at the timeout (empty when all left)."""
    ids = [str(j) for j in job_ids if j is not None]
    t0 = time.time()
    while ids and time.time() - t0 < timeout:
        r = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i"], capture_output=True, text=True)
        ids = [i for i in r.stdout.split() if i in ids] if r.returncode == 0 else ids
        if ids:
            time.sleep(poll)
    return [int(i) for i in ids]


# ------------------------------------------------------------------------------------------------------- aggregate
def _median(xs: List[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None
    return statistics.median(xs[1:] if len(xs) > 1 else xs)  # the first step is the warm-up


def measure_run(run_dir: str, gpus: int) -> dict:
    """Measured numbers of one run directory (missing files give missing fields)."""
    out: dict = {}
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        mef, riel = read_metrics(path, "mef"), read_metrics(path, "riel")
        out["mef_steps"] = len(mef)
        out["mef_step_s"] = _median([r.get("step_time") for r in mef])
        tps = _median([r.get("tokens_per_s") for r in mef])
        out["mef_tokens_per_s_gpu"] = tps / gpus if tps else None
        out["riel_steps"] = len(riel)
        out["riel_step_s"] = _median([r.get("time/step") for r in riel])
        out["riel_generate_s"] = _median([r.get("time/generate_score") for r in riel])
        out["riel_train_s"] = _median([r.get("time/train") for r in riel])
        tps = _median([r.get("train/tokens_per_s") for r in riel])
        out["riel_train_tokens_per_s_gpu"] = tps / gpus if tps else None
        peaks = [r.get("memory/peak_gib") for r in mef + riel if r.get("memory/peak_gib") is not None]
        out["peak_gib"] = max(peaks) if peaks else None
    path = os.path.join(run_dir, "eval.json")
    if os.path.exists(path):
        with open(path) as f:
            ev = json.load(f)
        for stage in ("mef", "riel"):
            r = ev.get(f"after_{stage}")
            if r:
                out[f"acc_{stage}"] = r.get("mean_accuracy")
                out[f"majority_{stage}"] = r.get("majority_vote")
    out["finished"] = os.path.exists(os.path.join(run_dir, "summary.json"))
    return out


def predict_run(cfg, gpus: int, hw) -> dict:
    """The planner for the run's own shape, layout (TP, PP from the config, DP = GPUs / (TP·PP)) and batch."""
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    lay = Layout(tp=tp, pp=pp, dp=max(1, gpus // (tp * pp)), recompute=cfg.model.recompute_activations,
                 sequence_parallel=p.sequence_parallel)
    shape, work = ModelShape.from_config(cfg), Workload.from_config(cfg)
    pl = evaluate(shape, lay, work, hw)
    mef_work = Workload(**{**work.__dict__, "train_sequences": cfg.data.global_batch_size})
    mef_s = train_seconds(shape, lay, mef_work, hw)
    return {"params": shape.params(), "layout": f"TP{tp}·PP{pp}·DP{lay.dp}", "plan_riel_step_s": pl.step_s,
            "plan_riel_generate_s": pl.rollout_s, "plan_riel_train_s": pl.train_s,
            "plan_peak_gib": (pl.peak - pl.overhead) / GiB,   # tensors only, like max_memory_allocated
            "plan_mef_step_s": mef_s,
            "plan_mef_tokens_per_s_gpu": cfg.data.global_batch_size * cfg.data.seq_length / mef_s / gpus,
            "plan_riel_train_tokens_per_s_gpu": work.train_sequences * work.seq_length / pl.train_s / gpus}


def aggregate(out_dir: str, hw) -> List[dict]:
    """One row per size of ``<out>/manifest.json`` (or every ``<out>/*/config.yaml``); writes the table, CSV, JSON
    and plot."""
    manifest = os.path.join(out_dir, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            entries = json.load(f)["sizes"]
    else:
        entries = [{"name": os.path.basename(os.path.dirname(p)), "run_dir": os.path.dirname(p), "gpus": 1}
                   for p in sorted(glob.glob(os.path.join(out_dir, "*", "config.yaml")))]
    rows = []
    for e in entries:
        row = {"size": e["name"], "gpus": e["gpus"], "run_dir": e["run_dir"]}
        cfg_path = os.path.join(e["run_dir"], "config.yaml")
        if not os.path.exists(cfg_path):
            row["error"] = e.get("error") or "no config.yaml (the run did not start)"
            rows.append(row)
            continue
        cfg = load_config(cfg_path)
        row.update(predict_run(cfg, e["gpus"], hw))
        row.update(measure_run(e["run_dir"], e["gpus"]))
        if e.get("returncode"):
            row["error"] = e.get("error") or f"exit {e['returncode']}"
        rows.append(row)
    rows.sort(key=lambda r: r.get("params", 0))
    write_outputs(out_dir, rows, hw)
    return rows


def _f(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def _pair(m, p, spec=".3g") -> str:
    """'measured (planner)'."""
    return f"{_f(m, spec)} ({_f(p, spec)})"


def markdown(rows: List[dict], hw) -> str:
    head = ("| size | params | GPUs | layout | acc. after MEF / RIEL | majority after RIEL | MEF step s (planner) "
            "| MEF tok/s/GPU (planner) | RIEL step s (planner) | RIEL gen+score / train s (planner) "
            "| RIEL train tok/s/GPU (planner) | peak GiB/GPU (planner) |")
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "params" not in r:
            lines.append(f"| {r['size']} | - | {r['gpus']} | - | {r.get('error', '')} | | | | | | | |")
            continue
        acc = f"{_f(r.get('acc_mef'), '.3f')} / {_f(r.get('acc_riel'), '.3f')}"
        split = (f"{_f(r.get('riel_generate_s'))} / {_f(r.get('riel_train_s'))} "
                 f"({_f(r.get('plan_riel_generate_s'))} / {_f(r.get('plan_riel_train_s'))})")
        lines.append(
            f"| {r['size']}{' (' + r['error'] + ')' if r.get('error') else ''} | {r['params'] / 1e6:.3g}M | "
            f"{r['gpus']} | {r['layout']} | {acc} | {_f(r.get('majority_riel'), '.3f')} | "
            f"{_pair(r.get('mef_step_s'), r.get('plan_mef_step_s'))} | "
            f"{_pair(r.get('mef_tokens_per_s_gpu'), r.get('plan_mef_tokens_per_s_gpu'))} | "
            f"{_pair(r.get('riel_step_s'), r.get('plan_riel_step_s'))} | {split} | "
            f"{_pair(r.get('riel_train_tokens_per_s_gpu'), r.get('plan_riel_train_tokens_per_s_gpu'))} | "
            f"{_pair(r.get('peak_gib'), r.get('plan_peak_gib'))} |")
    lines.append("")
    lines.append(f"Planner hardware: {hw.peak_tflops:.3g} TFLOP/s at MFU {hw.mfu}, {hw.memory_gib:g} GiB per GPU, "
                 f"memory bandwidth {hw.hbm_tbps:.3g} TB/s. The planner models large-model GPU steps (compute and "
                 f"bandwidth bound); tiny CPU runs are bound by per-step overheads it does not model, so compare "
                 f"trends there, not values. Peak memory: max_memory_allocated on GPUs, process peak RSS on the CPU; "
                 f"the planner's peak leaves out the fixed overhead ({hw.overhead_gib:g} GiB).")
    return "\n".join(lines)


def write_outputs(out_dir: str, rows: List[dict], hw) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "study.json"), "w") as f:
        json.dump(rows, f, indent=1)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("size", "params", "gpus"), k))
    with open(os.path.join(out_dir, "study.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out_dir, "study.md"), "w") as f:
        f.write(markdown(rows, hw) + "\n")
    plot(rows, os.path.join(out_dir, "study.png"))


def plot(rows: List[dict], path: str) -> Optional[str]:
    """Four panels against parameters: accuracy after each stage; tokens/s/GPU (measured, planner dashed); RIEL
    step time split (stacked) with the planner's step time; peak memory (measured, planner dashed)."""
    rows = [r for r in rows if "params" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["params"] for r in rows]
    names = [r["size"] for r in rows]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))

    def line(a, key, label, style="-o", color=None):
        pts = [(xi, r.get(key)) for xi, r in zip(x, rows) if r.get(key) is not None]
        if pts:
            a.plot(*zip(*pts), style, label=label, color=color)

    a = ax[0][0]
    line(a, "acc_mef", "after MEF")
    line(a, "acc_riel", "after RIEL")
    line(a, "majority_riel", "majority vote after RIEL", "--s")
    a.set(xscale="log", xlabel="parameters", ylabel="mean expert accuracy", title="accuracy per stage")
    a = ax[0][1]
    line(a, "mef_tokens_per_s_gpu", "MEF", color="C0")
    line(a, "plan_mef_tokens_per_s_gpu", "MEF (planner)", "--", color="C0")
    line(a, "riel_train_tokens_per_s_gpu", "RIEL train", color="C1")
    line(a, "plan_riel_train_tokens_per_s_gpu", "RIEL train (planner)", "--", color="C1")
    a.set(xscale="log", yscale="log", xlabel="parameters", ylabel="tokens/s per GPU", title="throughput")
    a = ax[1][0]
    idx = list(range(len(rows)))
    gen = [r.get("riel_generate_s") or 0.0 for r in rows]
    train = [r.get("riel_train_s") or 0.0 for r in rows]
    a.bar(idx, gen, label="generate + score")
    a.bar(idx, train, bottom=gen, label="train")
    a.plot(idx, [r.get("plan_riel_step_s") or float("nan") for r in rows], "k_", markersize=20, label="planner step")
    a.set(xticks=idx, xticklabels=names, ylabel="seconds per RIEL step", title="RIEL step time split")
    a = ax[1][1]
    line(a, "peak_gib", "measured", color="C2")
    line(a, "plan_peak_gib", "planner", "--", color="C2")
    a.set(xscale="log", xlabel="parameters", ylabel="GiB per GPU", title="peak memory")
    for a in ax.flat:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------- CLI
def measured_hardware(mfu: float, memory_gib: float):
    """The planner's Hardware with this machine's measured matmul rate (bf16 8192^3 on a GPU, fp32 1024^3 on the
    CPU, one thread) and copy bandwidth, so a local study's predictions are in this machine's units."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(1)
    dev, dt, n = ("cuda", torch.bfloat16, 8192) if cuda else ("cpu", torch.float32, 1024)

    def best(fn, reps=3):
        out = []
        for _ in range(reps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
        return min(out)

    a = torch.randn(n, n, dtype=dt, device=dev)
    mm = best(lambda: a @ a)
    x = torch.empty(1 << (28 if cuda else 24), dtype=torch.float32, device=dev)
    y = torch.empty_like(x)
    cp = best(lambda: y.copy_(x))
    return Hardware(peak_tflops=2 * n ** 3 / mm / 1e12, hbm_tbps=2 * x.numel() * 4 / cp / 1e12, mfu=mfu,
                    memory_gib=memory_gib, overhead_gib=0.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("overrides", nargs="*", help="section.key=value overrides for every size")
    p.add_argument("--family", help="examples/scaling/<family>/ or examples/scaling/<family>*.yaml")
    p.add_argument("--sizes", help="comma-separated size names (default: the whole family)")
    p.add_argument("--gpus", help="GPUs per size: N, or name=N,name=M (default: plan_scaling's count, else 1)")
    p.add_argument("--out", help="study directory (default runs/study-<family>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run the sizes here, one after the other")
    mode.add_argument("--submit", action="store_true", help="one SLURM job per size (megatron_meml.launch)")
    mode.add_argument("--aggregate", metavar="DIR", help="only aggregate an existing study directory")
    p.add_argument("--dry-run", action="store_true", help="print the commands / sbatch scripts, run nothing")
    p.add_argument("--slurm", default="", help="options for megatron_meml.launch, one string")
    p.add_argument("--wait", action="store_true", help="with --submit: wait for the jobs, then aggregate")
    p.add_argument("--wait-timeout", type=float, default=24 * 3600.0)
    d = Hardware()
    p.add_argument("--peak-tflops", type=float, default=d.peak_tflops, help="planner: dense bf16 peak per GPU")
    p.add_argument("--gpu-mem-gib", type=float, default=d.memory_gib, help="planner: usable memory per GPU")
    p.add_argument("--mfu", type=float, default=d.mfu, help="planner: assumed MFU")
    p.add_argument("--calibrate", action="store_true",
                   help="planner hardware = this machine's measured matmul rate and copy bandwidth (a CPU study)")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    hw = (measured_hardware(a.mfu, a.gpu_mem_gib) if a.calibrate else
          Hardware(peak_tflops=a.peak_tflops, memory_gib=a.gpu_mem_gib, mfu=a.mfu))
    if a.aggregate:
        rows = aggregate(a.aggregate, hw)
        print(markdown(rows, hw))
        return 0
    if not a.family:
        raise SystemExit("error: give --family (or --aggregate DIR)")
    configs = family_configs(a.family)
    if a.sizes:
        unknown = [s for s in a.sizes.split(",") if s not in configs]
        if unknown:
            raise SystemExit(f"error: --sizes {','.join(unknown)} not in family {a.family}: {', '.join(configs)}")
        configs = {k: configs[k] for k in a.sizes.split(",")}
    gpus = gpus_per_size(list(configs), a.gpus)
    out = os.path.abspath(a.out or os.path.join("runs", f"study-{a.family}"))
    entries = [{"name": n, "config": os.path.relpath(c, REPO), "gpus": gpus[n], "run_dir": os.path.join(out, n)}
               for n, c in configs.items()]
    if not (a.local or a.submit):
        raise SystemExit("error: choose --local or --submit (or --aggregate DIR)")
    slurm_args = shlex.split(a.slurm)
    for e in entries:
        if a.local:
            run_local(e, a.overrides, a.dry_run)
        else:
            submit(e, a.overrides, slurm_args, a.dry_run)
    if a.dry_run:
        return 0
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"family": a.family, "overrides": a.overrides, "mode": "local" if a.local else "slurm",
                   "sizes": entries}, f, indent=1)
    if a.submit and not a.wait:
        print(f"aggregate when the jobs are done: python -m megatron_meml.scaling_study --aggregate {out}")
        return 0
    if a.submit:
        left = wait_jobs([e.get("job_id") for e in entries], a.wait_timeout)
        if left:
            print(f"warning: jobs {left} still queued after {a.wait_timeout:.0f} s; aggregating what exists")
    rows = aggregate(out, hw)
    print(markdown(rows, hw))
    print(f"wrote {out}/study.md, study.csv, study.json, study.png")
    failed = [r["size"] for r in rows if r.get("error") or not r.get("finished")]
    if failed:
        print(f"unfinished sizes: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
