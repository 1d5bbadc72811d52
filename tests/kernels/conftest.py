"""Kernel tests run the Triton kernels in the CPU interpreter. ``make test`` sets TRITON_INTERPRET=1; when pytest
is started without it we set it here, which works as long as nothing imported triton before this file."""
import os
import sys

import pytest

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def triton_runs_here() -> tuple[bool, str]:
    """(usable, reason): the Triton path needs the interpreter here (no CUDA on the CPU CI machine)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False, "TRITON_INTERPRET=1 was not set before triton was imported (run via `make test`)"
    return True, ""


@pytest.fixture(autouse=True)
def _need_triton_interpreter():
    ok, reason = triton_runs_here()
    if not ok:
        pytest.skip(reason)
