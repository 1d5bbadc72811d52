"""The paper's ablation grid on the synthetic testbed, over several seeds, with a λ1 sweep and k1 vs k3.

    python -m megatron_meml.ablate --seeds 1 2 3 [--jobs 2] [--lambdas 1 3] [--out runs/ablate] [overrides ...]
    meml-ablate --seeds 1 2 3 --rows all gate ds   # only these rows (keys below), no single expert

Every run is the quickstart (examples/quickstart/config.yaml: MEF then RIEL, same step budget) with ``seed=N``
(which reaches model init, data order, sampling and the buffer; the questions themselves follow data.seed and are
the same for every seed) plus the row's overrides; extra ``key=value`` arguments apply to every run. Rows
(accuracy = greedy, held-out, after RIEL):

  none: single-expert GRPO       experts.single_expert=true  (SFT on expert 0's traces, plain GRPO)
  + MoE (multi-expert SFT)       N experts, MEF on every teacher's traces; RIEL = GRPO only
  + HSFT (hard-example buffer)   ... + the buffer
  + IML (inter-expert KL)        ... + the KL, no buffer
  all (MEML-GRPO)                ... + both
  all, λ1 = x                    the λ1 sweep (all components)
  all, k3                        the KL's k3 estimator instead of k1
  all, KL over its own tokens    riel.kl_normalizer=own: the KL averaged over its own tokens
  beyond the paper (only with --rows; algo/complementarity.py, rollout/dynamic_sampling.py):
  gate     all + riel.kl_gate=wrong_right         KL only where E- is wrong and E+ right (m_E- < 0.5 <= m_E+)
  cw       all + riel.complement_weight=1         per-expert question weighting of the advantages
  gatecw   all + both
  ds       all + riel.dynamic_sampling=true       all-equal (question, expert) cells refilled

The multi-expert rows of a seed share one MEF run (its final checkpoint and after-MEF eval are copied into each
RIEL run, which resumes after MEF), so they differ only in RIEL. Each row reports mean ± std over seeds of: the
mean accuracy over experts, its change from after MEF, the majority vote, the best label-free selection
(eval.selection), the oracle, the mean pairwise error overlap of the experts (both wrong / Jaccard; from
predictions_after_riel.jsonl) and the training reward gain (mean of the last 10 RIEL steps minus the first 10);
below the table the after-MEF levels of the best selection, the oracle and the overlap, and a per-rollout-token
table (rollout/tokens in metrics.jsonl: every response token generated, resampled ones included). The paper's
numbers (its ablation table, accuracy %) are printed beside the rows they correspond to. ``--jobs 2`` runs two
independent runs at a time with one thread each: first every seed's single-expert run and shared MEF, then the
RIEL rows. Finished runs are reused when the command is repeated with the same ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_meml.eval.ensemble import pairwise_overlap
from megatron_meml.eval.plots import read_metrics
from megatron_meml.paths import EXAMPLES, REPO

CONFIG = os.path.join(EXAMPLES, "quickstart", "config.yaml")
PAPER = {"none": 70.1, "moe": 72.6, "hsft": 76.4, "iml": 74.6, "all": 77.3}  # the paper's ablation, accuracy %

SINGLE = ("none: single-expert GRPO", "none", ["experts.single_expert=true", "riel.inter_expert_kl=false",
                                               "riel.hard_example_buffer=false"])
MULTI = [
    ("+ MoE (multi-expert SFT)", "moe", ["riel.inter_expert_kl=false", "riel.hard_example_buffer=false"]),
    ("+ HSFT (hard-example buffer)", "hsft", ["riel.inter_expert_kl=false", "riel.hard_example_buffer=true"]),
    ("+ IML (inter-expert KL)", "iml", ["riel.inter_expert_kl=true", "riel.hard_example_buffer=false"]),
    ("all (MEML-GRPO)", "all", ["riel.inter_expert_kl=true", "riel.hard_example_buffer=true"]),
]


ALL_ON = ["riel.inter_expert_kl=true", "riel.hard_example_buffer=true"]
EXTRA = [  # beyond the paper: selected with --rows
    ("all + gated KL (E- wrong, E+ right)", "gate", ALL_ON + ["riel.kl_gate=wrong_right"]),
    ("all + complement weighting (α = 1)", "cw", ALL_ON + ["riel.complement_weight=1.0"]),
    ("all + gated KL + complement weighting", "gatecw",
     ALL_ON + ["riel.kl_gate=wrong_right", "riel.complement_weight=1.0"]),
    ("all + dynamic sampling per cell", "ds", ALL_ON + ["riel.dynamic_sampling=true"]),
]


def rows_for(lambdas: Sequence[float], k3: bool, own: bool) -> List[Tuple[str, str, List[str]]]:
    all_on = ALL_ON
    out = list(MULTI)
    for lam in lambdas:
        out.append((f"all, λ1 = {lam:g}", f"lambda{lam:g}", all_on + [f"riel.lambda_kl={lam}"]))
    if k3:
        out.append(("all, k3 estimator", "k3", all_on + ["riel.kl_estimator=k3"]))
    if own:
        out.append(("all, KL averaged over its own tokens", "klown",
                    all_on + ["riel.kl_normalizer=own"]))
    return out


def train(run_dir: str, overrides: Sequence[str], threads: Optional[int], log) -> dict:
    """One training run (subprocess); returns its eval.json."""
    cmd = [sys.executable, "-m", "megatron_meml.train", CONFIG, f"logging.run_dir={run_dir}",
           "logging.progress_bar=false", *overrides]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    t0 = time.time()
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "train.log"), "w") as f:
        rc = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise SystemExit(f"run failed (exit {rc}): see {run_dir}/train.log")
    log(f"  {os.path.relpath(run_dir, REPO)} done in {time.time() - t0:.0f}s")
    return json.load(open(os.path.join(run_dir, "eval.json")))


def finished(run_dir: str, stage: str) -> bool:
    path = os.path.join(run_dir, "eval.json")
    return os.path.exists(path) and stage in json.load(open(path))


def riel_from(mef_dir: str, run_dir: str, overrides, threads, log) -> None:
    """A RIEL run that starts from a finished MEF run (checkpoint + after-MEF eval copied in)."""
    if finished(run_dir, "after_riel"):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    shutil.copytree(os.path.join(mef_dir, "checkpoints"), os.path.join(run_dir, "checkpoints"))
    shutil.copy(os.path.join(mef_dir, "eval.json"), os.path.join(run_dir, "eval.json"))
    train(run_dir, overrides, threads, log)


def riel_rows(run_dir: str) -> List[dict]:
    """The RIEL rows of a run's metrics.jsonl, one per step (the last one logged: a resumed run re-logs steps)."""
    return read_metrics(os.path.join(run_dir, "metrics.jsonl"), "riel")


def riel_rewards(run_dir: str) -> List[float]:
    """Training reward (``reward/mean``) per RIEL step, in step order."""
    return [row["reward/mean"] for row in riel_rows(run_dir) if "reward/mean" in row]


def reward_gain(run_dir: str) -> float:
    """Mean training reward of the last 10 RIEL steps minus that of the first 10."""
    r = riel_rewards(run_dir)
    return sum(r[-10:]) / len(r[-10:]) - sum(r[:10]) / len(r[:10]) if r else float("nan")


def overlap_of(path: str) -> Dict[str, float]:
    """Mean pairwise error overlap {both_wrong, jaccard} from a predictions_<stage>.jsonl (nan when missing)."""
    if not os.path.exists(path):
        return {"both_wrong": float("nan"), "jaccard": float("nan")}
    by_q: Dict[str, Dict[int, float]] = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            by_q.setdefault(r["id"], {})[int(r["expert"])] = float(r["correct"])
    return pairwise_overlap([[v[e] for e in sorted(v)] for v in by_q.values()])


def riel_tokens(run_dir: str) -> Dict[str, float]:
    """Rollout tokens generated during RIEL (sum of rollout/tokens), resampled rollouts, RIEL wall time."""
    r = riel_rows(run_dir)
    return {"tokens": sum(x.get("rollout/tokens", float("nan")) for x in r),
            "resampled": sum(x.get("dynamic/rollouts", 0.0) for x in r),
            "seconds": sum(x.get("time/step", 0.0) for x in r),
            "gen_seconds": sum(x.get("time/generate_score", 0.0) for x in r),
            "resample_seconds": sum(x.get("dynamic/seconds", 0.0) for x in r)}


def summarise(run_dir: str) -> Dict[str, float]:
    ev = json.load(open(os.path.join(run_dir, "eval.json")))
    after, mef = ev["after_riel"], ev["after_mef"]
    sel, msel = after.get("selection", {}), mef.get("selection", {})
    nan = float("nan")
    ov = after.get("overlap") or overlap_of(os.path.join(run_dir, "predictions_after_riel.jsonl"))
    mef_ov = mef.get("overlap") or overlap_of(os.path.join(os.path.dirname(run_dir), "mef_multi",
                                                           "predictions_after_mef.jsonl"))
    return {"mean": after["mean_accuracy"], "delta": after["mean_accuracy"] - mef["mean_accuracy"],
            "vote": after["majority_vote"], "select": max(sel.values()) if sel else nan,
            "best": after.get("best_expert", {}).get("accuracy", nan), "gain": reward_gain(run_dir),
            "mef": mef["mean_accuracy"], "oracle": after.get("oracle", nan), "both": ov["both_wrong"],
            "jaccard": ov["jaccard"], "mef_select": max(msel.values()) if msel else nan,
            "mef_oracle": mef.get("oracle", nan), "mef_vote": mef.get("majority_vote", nan),
            "mef_both": mef_ov["both_wrong"], "mef_jaccard": mef_ov["jaccard"]}


def fmt(values: Sequence[float], pct: bool = True, signed: bool = True) -> str:
    k = 100.0 if pct else 1.0
    if not values or any(v != v for v in values):  # a run without the number (an older run's eval.json)
        return "n/a"
    m = statistics.mean(values) * k
    s = statistics.stdev(values) * k if len(values) > 1 else 0.0
    if pct:
        return f"{m:.1f} ± {s:.1f}"
    return f"{m:+.3f} ± {s:.3f}" if signed else f"{m:.3f} ± {s:.3f}"


def table(rows: List[Tuple[str, str, List[Dict[str, float]]]]) -> str:
    lines = ["| setting | paper | mean acc. over experts | Δ vs after MEF | majority vote | best label-free "
             "selection | best expert | train reward gain (last10 − first10) | oracle | errors both wrong "
             "(pairs) | error Jaccard (pairs) | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, key, res in rows:
        if not res:
            continue
        paper = f"{PAPER[key]:.1f}" if key in PAPER else ""
        lines.append(f"| {name} | {paper} | {fmt([r['mean'] for r in res])} | {fmt([r['delta'] for r in res])} | "
                     f"{fmt([r['vote'] for r in res])} | {fmt([r['select'] for r in res])} | "
                     f"{fmt([r['best'] for r in res])} | {fmt([r['gain'] for r in res], pct=False)} | "
                     f"{fmt([r.get('oracle', float('nan')) for r in res])} | "
                     f"{fmt([r.get('both', float('nan')) for r in res])} | "
                     f"{fmt([r.get('jaccard', float('nan')) for r in res], pct=False, signed=False)} | {len(res)} |")
    return "\n".join(lines)


def token_table(rows: List[Tuple[str, str, List[str]]]) -> str:
    """Per rollout token: RIEL's generated tokens, the resampled share, wall time, training reward gain and
    held-out accuracy gain per million rollout tokens (mean ± std over seeds)."""
    lines = ["| setting | rollout tokens (M) | resampled rollouts / step | RIEL s | of it resampling s | train reward "
             "last10 | held-out mean after RIEL | Δ held-out per M tokens | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, _, dirs in rows:
        if not dirs:
            continue
        t = [riel_tokens(d) for d in dirs]
        s = [summarise(d) for d in dirs]
        steps = [max(len(riel_rows(d)), 1) for d in dirs]
        last10 = []
        for d in dirs:
            v = riel_rewards(d)[-10:]
            last10.append(sum(v) / max(len(v), 1))
        mt = [x["tokens"] / 1e6 for x in t]
        lines.append(f"| {name} | {fmt(mt, pct=False, signed=False)} | "
                     f"{fmt([x['resampled'] / n for x, n in zip(t, steps)], pct=False, signed=False)} | "
                     f"{fmt([x['seconds'] for x in t], pct=False, signed=False)} | "
                     f"{fmt([x['resample_seconds'] for x in t], pct=False, signed=False)} | "
                     f"{fmt(last10, pct=False, signed=False)} | {fmt([x['mean'] for x in s])} | "
                     f"{fmt([x['delta'] / m for x, m in zip(s, mt)], pct=False)} | {len(dirs)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--lambdas", type=float, nargs="*", default=[1.0, 3.0],
                    help="λ1 values of the sweep besides the default (all components on)")
    ap.add_argument("--no-k3", action="store_true", help="leave out the k3-estimator row")
    ap.add_argument("--no-own", action="store_true", help="leave out the riel.kl_normalizer=own row")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each with one thread when > 1)")
    ap.add_argument("--rows", nargs="*", default=None,
                    help="only these row keys (none moe hsft iml all lambdaX k3 klown gate cw gatecw ds); the "
                         "single-expert run only when `none` is listed")
    ap.add_argument("--out", default=os.path.join(REPO, "runs", "ablate"))
    ap.add_argument("overrides", nargs="*", help="key=value applied to every run")
    a = ap.parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    threads = 1 if a.jobs > 1 else None
    grid = rows_for(a.lambdas, not a.no_k3, not a.no_own)
    single = True
    if a.rows is not None:
        known = {k for _, k, _ in [SINGLE] + grid + EXTRA}
        bad = [k for k in a.rows if k not in known]
        if bad:
            raise SystemExit(f"--rows: unknown row {bad[0]!r}; choose from {', '.join(sorted(known))}")
        grid = [r for r in grid + EXTRA if r[1] in a.rows]
        single = "none" in a.rows
    dirs: Dict[str, List[str]] = {key: [] for _, key, _ in [SINGLE] + grid}

    t0 = time.time()
    sdir = {s: os.path.join(a.out, f"seed{s}") for s in a.seeds}
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        first = []  # phase 1: every seed's single-expert run and shared multi-expert MEF
        for s in a.seeds:
            single_dir, mef = os.path.join(sdir[s], "single_expert"), os.path.join(sdir[s], "mef_multi")
            if single:
                dirs["none"].append(single_dir)
            if single and not finished(single_dir, "after_riel"):
                first.append(pool.submit(train, single_dir, [f"seed={s}", *a.overrides] + SINGLE[2], threads, log))
            if not finished(mef, "after_mef"):
                first.append(pool.submit(train, mef, [f"seed={s}", *a.overrides, "riel.enabled=false"], threads, log))
        for f in first:
            f.result()
        second = []  # phase 2: the RIEL rows, each from its seed's MEF checkpoint
        for s in a.seeds:
            for _, key, ov in grid:
                run = os.path.join(sdir[s], key)
                dirs[key].append(run)
                second.append(pool.submit(riel_from, os.path.join(sdir[s], "mef_multi"), run,
                                          [f"seed={s}", *a.overrides] + ov, threads, log))
        for f in second:
            f.result()
    rows = [(name, key, [summarise(d) for d in dirs[key]]) for name, key, _ in [SINGLE] + grid]
    text = table(rows)
    ref = next(d for _, key, _ in grid for d in [dirs[key]] if d)
    ms = [summarise(d) for d in ref]
    note = (f"\nAfter MEF (shared by the multi-expert rows): mean accuracy {fmt([m['mef'] for m in ms])}, majority "
            f"vote {fmt([m['mef_vote'] for m in ms])}, best label-free selection "
            f"{fmt([m['mef_select'] for m in ms])}, oracle {fmt([m['mef_oracle'] for m in ms])}, errors both wrong "
            f"{fmt([m['mef_both'] for m in ms])}, error Jaccard "
            f"{fmt([m['mef_jaccard'] for m in ms], pct=False, signed=False)}; seeds {a.seeds}; "
            f"{time.time() - t0:.0f}s wall.\n\nPer rollout token (RIEL only):\n\n"
            + token_table([(name, key, dirs[key]) for name, key, _ in grid]) + "\n")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "ablation.md"), "w") as f:
        f.write(text + "\n" + note)
    print(text + "\n" + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
