"""``reward_curves.png``: RIEL reward and held-out accuracy per expert, the loss terms and the per-term gradient
norms per step, from ``metrics.jsonl``."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Dict, List, Optional


def read_metrics(path: str, stage: Optional[str] = None) -> List[dict]:
    """Rows of metrics.jsonl (the last record per (stage, step): a resumed run re-logs some steps)."""
    rows: Dict[tuple, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if stage is None or row.get("stage") == stage:
                    rows[(row.get("stage"), row["step"])] = row
    return [rows[k] for k in sorted(rows, key=lambda k: (str(k[0]), k[1]))]


def plot_reward_curves(run_dir: str, out_name: str = "reward_curves.png") -> Optional[str]:
    """Four panels: training reward per expert over RIEL steps with the held-out greedy accuracy per expert
    during RIEL (``heldout/expert{e}``, eval.riel_interval) as dashed lines of the same colour; the ensemble
    during RIEL (held-out mean expert, majority vote, best label-free selection, oracle, and the mean pairwise
    error overlap: both-wrong rate and Jaccard, dashed); loss/grpo, loss/kl, loss/sft (and the MEF loss when
    present); the per-term gradient norms (grad_norm/grpo, /kl, /sft, riel.grad_norm_interval) on a log scale.
    Returns the PNG path, or None when there is nothing to plot."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    riel = read_metrics(path, "riel")
    mef = read_metrics(path, "mef")
    if not riel and not mef:
        return None
    fig, (ax_r, ax_e, ax_l, ax_g) = plt.subplots(1, 4, figsize=(21, 4))
    series = defaultdict(list)
    for row in riel:
        for k, v in row.items():
            if k.startswith(("reward/expert", "loss/", "heldout/", "grad_norm/")):
                series[k].append((row["step"], v))
    for i, k in enumerate(sorted((s for s in series if s.startswith("reward/expert")), key=lambda s: int(s[13:]))):
        xs, ys = zip(*series[k])
        ax_r.plot(xs, ys, color=f"C{i}", label=f"{k.split('/')[1]} reward")
        held = series.get(f"heldout/{k.split('/')[1]}")
        if held:
            hx, hy = zip(*held)
            ax_r.plot(hx, hy, color=f"C{i}", ls="--", marker="o", ms=3, label=f"{k.split('/')[1]} held-out acc")
    ax_r.set(title="RIEL: training reward and held-out accuracy", xlabel="RIEL step", ylabel="reward / accuracy")
    ens = [("heldout/mean", "mean expert", "-"), ("heldout/majority_vote", "majority vote", "-"),
           ("heldout/best_label_free", "best label-free selection", "-"), ("heldout/oracle", "oracle", "-"),
           ("heldout/overlap/both_wrong", "both wrong (pairs)", "--"),
           ("heldout/overlap/jaccard", "error Jaccard", "--")]
    for k, label, ls in ens:
        if series.get(k):
            xs, ys = zip(*series[k])
            ax_e.plot(xs, ys, ls=ls, marker="o", ms=3, label=label)
    ax_e.set(title="ensemble during RIEL (held-out)", xlabel="RIEL step", ylabel="accuracy / overlap")
    for k in ("loss/grpo", "loss/kl", "loss/sft"):
        if series.get(k):
            xs, ys = zip(*series[k])
            ax_l.plot(xs, ys, label=k)
    if mef:
        ax_l.plot([-len(mef) + r["step"] for r in mef], [r["loss"] for r in mef], label="MEF loss", alpha=0.6)
    ax_l.set(title="loss terms (MEF steps before 0)", xlabel="step", ylabel="loss")
    for k in ("grad_norm/grpo", "grad_norm/kl", "grad_norm/sft"):
        pts = [(x, y) for x, y in series.get(k, []) if y > 0]
        if pts:
            xs, ys = zip(*pts)
            ax_g.plot(xs, ys, ".-", label=k)
    ax_g.set(title="gradient norm per term (before clipping)", xlabel="RIEL step", ylabel="L2 norm")
    if ax_g.lines:
        ax_g.set_yscale("log")
    for ax in (ax_r, ax_e, ax_l, ax_g):
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(run_dir, out_name)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
