"""Metrics sinks: metrics.jsonl (always), TensorBoard events (when installed and enabled), W&B (when a project is
set). Only the logging rank writes; every other rank gets a no-op logger."""
from __future__ import annotations

import json
import os
import time
from typing import Dict, Optional


class MetricsLogger:
    """``log(step, metrics, stage)`` appends ``{"stage", "step", "time", **metrics}`` to ``metrics.jsonl``."""

    def __init__(self, run_dir: str, enabled: bool = True, tensorboard: bool = True,
                 wandb_project: Optional[str] = None, config: Optional[dict] = None):
        self.enabled = enabled
        self.tb = self.wandb = None
        self.f = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.f = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:
                self.tb = None
        if wandb_project:
            import wandb

            self.wandb = wandb.init(project=wandb_project, dir=run_dir, config=config or {})

    def log(self, step: int, metrics: Dict[str, float], stage: str) -> None:
        if not self.enabled:
            return
        row = {"stage": stage, "step": int(step), "time": round(time.time(), 3)}
        row.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()})
        self.f.write(json.dumps(row) + "\n")
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(f"{stage}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{stage}/{k}": v for k, v in numeric.items()}, step=step)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
