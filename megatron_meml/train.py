"""Entry point: ``python -m megatron_meml.train CONFIG.yaml [section.key=value ...]``.

Runs MEF then RIEL as the config enables them. Launch one process per GPU (torchrun / srun); without a launcher it
runs single-process. ``--help-config`` lists every config key with its default and documentation.
"""
from __future__ import annotations

import os
import sys

USAGE = "usage: python -m megatron_meml.train CONFIG.yaml [section.key=value ...] | --help-config"


def main(argv=None) -> int:
    """Exit codes: 0 done (or preempted after its checkpoint), 2 bad input (config, data, checkpoint, file: one
    line naming the key or file), 1 another rank died or hung past ``parallel.timeout_minutes``. Set
    ``MEML_TRACEBACK=1`` to see the traceback behind a one-line error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from .versions import require_supported

    require_supported()  # one line and exit 2 when torch / megatron-core / triton / transformers are out of range
    from .backend.runtime.compat import quiet_library_notes

    quiet_library_notes()
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
    except ConfigError as e:  # the same on every rank: said once
        return _error(e, 2, every_rank=False)

    from .backend.ckpt.checkpoint_io import CheckpointError
    from .backend.runtime.hosts import lost_node_note
    from .backend.runtime.parallel import is_comm_failure
    from .checkpointing import Preempted
    from .data.errors import DataError
    from .stages.async_bridge import AsyncRolloutError
    from .stages.common import finish, last_checkpoint_note
    from .stages.run import run_all, setup

    run, code = None, 0
    try:
        run = setup(cfg, config_dir=os.path.dirname(os.path.abspath(path)) if path else None)
        run_all(run)
    except Preempted:
        pass  # the checkpoint is written; a restart resumes from it
    except (ConfigError, DataError, CheckpointError, OSError) as e:  # bad input, also found only on real data
        code = _error(e, 2)
    except ValueError as e:
        if run is not None:  # after setup a plain ValueError is a bug: keep its traceback
            raise
        code = _error(e, 2)
    except AsyncRolloutError as e:  # async RIEL: a rollout rank died or hung; the message names it and the limit
        code = _error(f"{type(e).__name__}: {e}{last_checkpoint_note(cfg)}", 1)
    except RuntimeError as e:
        if not is_comm_failure(e):
            raise
        code = _error(f"lost contact with another rank (it died, was killed or hung longer than "
                      f"parallel.timeout_minutes={cfg.parallel.timeout_minutes}): {str(e).strip().splitlines()[0]}"
                      f"{lost_node_note(e)}{last_checkpoint_note(cfg)}", 1)
    finally:
        finish(run, clean=code != 1)
    return code


def _error(e, code: int, every_rank: bool = True) -> int:
    """Print ``error: <e>`` (prefixed with the rank in a multi-process run) as one line on stderr."""
    if os.environ.get("MEML_TRACEBACK") and isinstance(e, BaseException):
        raise e
    rank, multi = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1") != "1"
    if every_rank or rank == "0":
        print(f"error{f' (rank {rank})' if multi else ''}: {e}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
