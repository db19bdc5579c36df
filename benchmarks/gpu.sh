#!/usr/bin/env bash
# Every benchmark on one CUDA GPU in at most 8 minutes, figures saved under $OUT (default gpu-figures/):
#   training fp32 and bf16 at d 768, F 24576, K 64 (beside overcomplete and the GEMM roofline), the grid of
#   12 from a cold on-disk cache, the token sampler vs a training step, evaluation M1–M4 at F 24576 (beside
#   visaebench), probes at 1000 classes on the torch engine, caching throughput, the scale model's GPU
#   column (scale.json, for `scale.py --gpu-figures`), then `pytest -m cuda` (every kernel vs the CPU).
#
#   bash benchmarks/gpu.sh                          # on a GPU machine
#   DEVICE=cpu SIZE=tiny bash benchmarks/gpu.sh     # rehearsal on a CPU (what tests/benchmarks/test_gpu_sh.py runs)
#
# Each step has its own time limit (STEP_LIMIT seconds); a failed or timed-out step is reported and the
# others still run; the exit status is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-full}
OUT=${OUT:-gpu-figures}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
if [ "$SIZE" = tiny ]; then
  STEP_LIMIT=${STEP_LIMIT:-900}
  TRAIN="--d 32 --expansion 4 --k 4 --batch 256 --bf16-batch 256 --steps 1 --skip-grid"
  GRID="--grid-only --grid-d 16 --grid-batch 256 --grid-steps 2"
  SAMPLER="--images 16 --grid 4 --d 32 --batch 64 --expansion 2 --k 4 --steps 1"
  EVAL="--images 120 --sizes 120 --d 32 --grid 8 --expansion 4 --k 8 --classes 3 --no-peer"
  PROBES="--classes 3 --per-class 10 --dim 8 --max-iter 50 --engines torch"
  CACHE="--backbone dinov2-s14-offline --images 8 --batch-size 4 --layer 1 --num-workers 0"
  SCALE="--tiny"
  PYTEST_ENV="VISAE_CUDA_TEST_DEVICE=$DEVICE"
else
  STEP_LIMIT=${STEP_LIMIT:-150}
  TRAIN="--d 768 --expansion 32 --k 64 --batch 8192 --bf16-batch 8192 --steps 5 --skip-grid"
  GRID="--grid-only --grid-d 768 --grid-batch 8192 --grid-steps 20"
  SAMPLER="--images 4096 --expansion 8 --k 64 --steps 5"
  EVAL="--images 1000 --sizes 1000,4000 --expansion 32 --k 64"
  PROBES="--classes 1000 --engines torch"
  CACHE="--images 2048 --batch-size 128 --layer 11"
  SCALE=""
  PYTEST_ENV=""
fi
failed=()
step() {  # step NAME COMMAND… : run with a time limit, keep its output in $OUT/NAME.txt
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  timeout "$STEP_LIMIT" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc, $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || failed+=("$name")
}
start=$SECONDS
step train    $PY benchmarks/train.py --device "$DEVICE" $TRAIN
step grid     $PY benchmarks/train.py --device "$DEVICE" $GRID
step sampler  $PY benchmarks/sampler.py --device "$DEVICE" $SAMPLER
step eval     $PY benchmarks/eval_full.py --device "$DEVICE" $EVAL
step probes   $PY benchmarks/probes.py --device "$DEVICE" $PROBES
step cache    $PY benchmarks/cache.py --device "$DEVICE" $CACHE
step scale    $PY benchmarks/scale.py --device "$DEVICE" $SCALE --json "$OUT/scale.json"
step pytest-cuda env $PYTEST_ENV $PY -m pytest -q -m cuda tests/cuda
echo "== total $((SECONDS - start)) s on $DEVICE; figures in $OUT/"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
