"""Entry point: ``python -m megatron_meml.train CONFIG.yaml [section.key=value ...]``.

Runs MEF then RIEL as the config enables them. Launch one process per GPU (torchrun / srun); without a launcher it
runs single-process. ``--help-config`` lists every config key with its default and documentation.
"""
from __future__ import annotations

import os
import sys
import warnings

USAGE = "usage: python -m megatron_meml.train CONFIG.yaml [section.key=value ...] | --help-config"


def _quiet_known_warnings() -> None:
    """Keep the console readable: megatron's one-time "no Apex/TE, falling back" notes and torch's per-step
    collective-rename deprecations say nothing actionable about a run."""
    for pattern in (r".*Apex is not installed.*", r".*Transformer Engine.*not installed.*",
                    r".*is deprecated\. Please use `torch\.distributed\..*", r".*full scope is deprecated.*"):
        warnings.filterwarnings("ignore", message=pattern)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_known_warnings()
    from .config import ConfigError, describe, load_config

    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if argv[:1] == ["--help-config"]:
        print("\n".join(describe()))
        return 0
    path = argv.pop(0) if argv and "=" not in argv[0] else None
    try:
        cfg = load_config(path, argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from . import trainer

    try:
        run = trainer.setup(cfg, config_dir=os.path.dirname(os.path.abspath(path)) if path else None)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .checkpointing import Preempted

    try:
        trainer.run_all(run)
    except Preempted:
        pass  # the checkpoint is written; a restart resumes from it
    except ConfigError as e:  # a config value that only shows its problem on real data
        print(f"error: {e}", file=sys.stderr)
        trainer.finish(run)
        return 2
    trainer.finish(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
