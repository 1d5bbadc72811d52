#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (H100/H200, Python 3.12, torch 2.11, triton 3.6, no internet).
#
#   run from the repo root, carrying the wheels:   bash tools/gpu_check.sh            (carry: .whl)
#
# Steps, each under `timeout`, logs in $OUT (default /tmp/out):
#   1. GPU tests:      python3 -m pytest -m gpu tests/gpu -q          -> $OUT/pytest_gpu.log
#   2. kernel bench:   tools/bench_kernels.py --gpu                   -> $OUT/bench.log, bench.json, bench_table.md
#   3. training check: tools/gpu_train_check.py (when present)        -> $OUT/train_check.log
#   4. rollout check:  tools/gpu_rollout_check.py (1.5B shape, 256 requests x 512 new tokens, MBU, HF baseline)
#                                                                      -> $OUT/rollout_check.log
#   5. scale check:    tools/gpu_scale_check.py (issue 14; Qwen2.5-1.5B shape, MEF MFU + RIEL split + planner
#                      ratios, ~3 min, timeout 300 s)                  -> $OUT/scale_check.{log,md,json}
# and prints a summary table LAST. Worst case (every step at its timeout) ends in about 15 minutes; expected ~9.
# GPU_CHECK_ONLY=step,step (names as in the summary: gpu-tests, bench, train-check, rollout-check, scale-check)
# runs only those steps, e.g. GPU_CHECK_ONLY=scale-check for a session that owes only the scale check.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

# --- environment: carried wheels (megatron-core 0.19.2, liger-kernel) into /tmp/site; the repo itself is not
# --- pip-installed there, so meml_kernels is a symlink to ./kernels and the repo root goes on PYTHONPATH.
mkdir -p /tmp/site
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || echo "wheel install failed (see $OUT/pip.log); continuing with what the image has"
fi
ln -sfn "$PWD/kernels" /tmp/site/meml_kernels
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
unset TRITON_INTERPRET

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi failed"
  python3 - <<'EOF'
import sys, torch, triton
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  triton {triton.__version__}  "
      f"cuda {torch.version.cuda}  device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
for name in ("megatron.core", "liger_kernel", "meml_kernels"):
    try:
        mod = __import__(name, fromlist=["_"])
        print(f"  {name}: {getattr(mod, '__version__', '')} {getattr(mod, '__file__', '')}")
    except Exception as exc:
        print(f"  {name}: NOT importable ({type(exc).__name__}: {exc})")
EOF
} 2>&1 | tee "$OUT/env.log"

STEPS=()
run_step() {  # run_step NAME TIMEOUT_S LOG -- command...
  local name=$1 limit=$2 log=$3; shift 4
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ ",$GPU_CHECK_ONLY," != *",$name,"* ]]; then
    STEPS+=("$name|skipped (GPU_CHECK_ONLY)|0|-")
    return
  fi
  local t0=$SECONDS rc
  echo "=== $name (timeout ${limit}s) : $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$log" 2>&1
  rc=$?
  tail -n 40 "$OUT/$log"
  local status=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMEOUT"
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="FAIL($rc)"
  STEPS+=("$name|$status|$((SECONDS - t0))|$log")
}

run_step gpu-tests 100 pytest_gpu.log -- python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider
run_step bench 180 bench.log -- python3 tools/bench_kernels.py --gpu --json "$OUT/bench.json"
# the markdown table of the bench, for kernels/BENCHMARKS.md
sed -n '/^| op |/,/^$/p' "$OUT/bench.log" > "$OUT/bench_table.md" 2>/dev/null
if [ -f tools/gpu_train_check.py ]; then
  run_step train-check 90 train_check.log -- python3 tools/gpu_train_check.py
else
  STEPS+=("train-check|skipped (tools/gpu_train_check.py absent)|0|-")
fi

run_step rollout-check 240 rollout_check.log -- python3 tools/gpu_rollout_check.py --deadline 150

# --- issue 14: Qwen2.5-1.5B-shaped MEF + RIEL on one GPU with the planner beside each number ---------------------
if [ -f tools/gpu_scale_check.py ]; then
  run_step scale-check 300 scale_check.log -- python3 tools/gpu_scale_check.py --out "$OUT"
else
  STEPS+=("scale-check|skipped (tools/gpu_scale_check.py absent)|0|-")
fi

# --- key numbers, then the summary table (last)
key_pytest=$(grep -E "passed|failed|error|skipped" "$OUT/pytest_gpu.log" 2>/dev/null | tail -n 1)
key_bench=$(python3 - "$OUT/bench.json" <<'EOF' 2>/dev/null
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
out = []
for r in rows:
    if r["variant"] == "ours" and "ms" in r and (r["op"].startswith(("logprobs", "linear"))):
        out.append(f"{r['op'].split()[0]} {r['mode']} {r['ms']:.2f}ms {r.get('rate', '')} ({r.get('pct', 0):.0f}%)")
print("; ".join(out))
EOF
)
key_train=$( [ -f "$OUT/train_check.log" ] && tail -n 1 "$OUT/train_check.log" )
key_rollout=$( [ -f "$OUT/rollout_check.log" ] && grep '^| rollout | [0-9]' "$OUT/rollout_check.log" | tail -n 1 | sed 's/^| //; s/ |$//; s/ | /; /g' )
echo
echo "| step | status | seconds | key numbers |"
echo "|---|---|---:|---|"
for s in "${STEPS[@]}"; do
  IFS='|' read -r name status secs log <<< "$s"
  case $name in
    gpu-tests) key=$key_pytest ;;
    bench) key=$key_bench ;;
    train-check) key=${key_train:-} ;;
    rollout-check) key=${key_rollout:-} ;;
    *) key=$( [ -f "$OUT/$log" ] && tail -n 1 "$OUT/$log" ) ;;   # e.g. scale-check: its summary line
  esac
  echo "| $name | $status | $secs | ${key:-see $OUT/$log} |"
done
