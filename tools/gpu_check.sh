#!/usr/bin/env bash
# The one prepared call for a lent GPU machine (H100/H200 image: Python 3.12, torch 2.11, triton 3.6, no network).
#
#   here, once:          make gpu-carry                     (.whl/: megatron-core and the wheels the image lacks)
#   the device call:     bash tools/gpu_check.sh            (carry: [".whl"]; timeout_s 600)
#   the CPU dry run:     GPU_CHECK_DRY_RUN=1 tools/gpu_check.sh     (same steps, tiny shapes, < 3 minutes)
#
# Environment: OUT (results; default /tmp/out, in the dry run ./gpu_check_out), GPU_CHECK_BUDGET_S (default 540:
# the whole call, wheel install included, with margin under the 600 s a device call may run), GPU_CHECK_ONLY
# (comma-separated step names), PYTHON (the dry run's interpreter; default .venv/bin/python).
# What runs, in which order, under which limits, and the files it writes: megatron_meml.gpu.check's docstring.
# Exit status: 0 all steps ok or skipped, 1 a step failed or timed out, 2 megatron-core does not import.
set -u
cd "$(dirname "$0")/.."
export GPU_CHECK_T0=${GPU_CHECK_T0:-$(date +%s.%N)}
export PYTHONUNBUFFERED=1
if [ "${GPU_CHECK_DRY_RUN:-0}" != "0" ]; then
  export GPU_CHECK_DRY_RUN=1 OUT=${OUT:-$PWD/gpu_check_out} TRITON_INTERPRET=1
  if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
  fi
else
  export OUT=${OUT:-/tmp/out}
  PYTHON=${PYTHON:-python3}
  unset TRITON_INTERPRET
  # The image lacks megatron-core (and liger-kernel, math-verify): install the carried wheels into /tmp/site. The
  # project runs from the checkout through two links there (megatron_meml, meml_kernels): the repo root itself stays
  # off sys.path, where kernels/ would pass for the Hugging Face package `kernels` (pytest adds the root for tests/):
  # hence `python -P -m` below and in every step (-P: no working directory on sys.path).
  if ls .whl/*.whl >/dev/null 2>&1; then
    mkdir -p "$OUT"
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl > "$OUT/gpu_check.log" 2>&1; then
      echo "gpu_check: installing the carried wheels failed: $(tail -n 1 "$OUT/gpu_check.log")" >&2
      exit 2
    fi
  else
    echo "gpu_check: no .whl/ here (run \`make gpu-carry\` and carry .whl); trying the image's own packages" >&2
  fi
  mkdir -p /tmp/site && ln -sfn "$PWD/megatron_meml" /tmp/site/megatron_meml \
    && ln -sfn "$PWD/kernels/meml_kernels" /tmp/site/meml_kernels
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$OUT"
exec "$PYTHON" -P -m megatron_meml.gpu.check --out "$OUT"
