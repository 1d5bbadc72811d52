"""``reward_curves.png``: RIEL reward per expert and the loss terms per step, from ``metrics.jsonl``."""
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
    """Two panels: reward/expert{e} over RIEL steps; loss/grpo, loss/kl, loss/sft (and MEF loss when present).
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
    fig, (ax_r, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    series = defaultdict(list)
    for row in riel:
        for k, v in row.items():
            if k.startswith("reward/expert") or k.startswith("loss/"):
                series[k].append((row["step"], v))
    for k in sorted(s for s in series if s.startswith("reward/expert")):
        xs, ys = zip(*series[k])
        ax_r.plot(xs, ys, label=k.split("/")[1])
    ax_r.set(title="RIEL reward per expert", xlabel="RIEL step", ylabel="mean reward")
    for k in ("loss/grpo", "loss/kl", "loss/sft"):
        if series.get(k):
            xs, ys = zip(*series[k])
            ax_l.plot(xs, ys, label=k)
    if mef:
        ax_l.plot([-len(mef) + r["step"] for r in mef], [r["loss"] for r in mef], label="MEF loss", alpha=0.6)
    ax_l.set(title="loss terms (MEF steps before 0)", xlabel="step", ylabel="loss")
    for ax in (ax_r, ax_l):
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(run_dir, out_name)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
