#!/usr/bin/env bash
# One command for one CUDA GPU, finished in under 8 minutes:
#   1. rematpass calibrate --device cuda --no-write: measured FLOP/s and bandwidth next to
#      cost.DEFAULT_RATES["cuda"], to check the defaults (nothing is written);
#   2. the small suite on CUDA, every model, variants inductor remat remat@0.3;
#   3. the full-size suite (--size full) on CUDA, variants inductor inductor@0.3 remat remat@0.3;
#   4. python -m rematpass.bench.summary: measured peak (torch.cuda.max_memory_allocated, through
#      rematpass.measure.peak_memory) next to rematpass's predicted peak, step time against
#      inductor's, gradient checks, partition time and host memory.
# The bench also prints its full table per model as it goes.
#
#   bash benchmarks/gpu_check.sh [OUT]     results in OUT (default gpu-check): small/ and full/
#                                          (results.json, results.md), the whole output in gpu_check.log
#
# Every stage runs under `timeout` with the smaller of its own cap and what is left of
# GPU_CHECK_SECONDS (default 450) less a reserve for the summary, so the whole script ends
# within about 8 minutes whatever hangs. Compiling dominates and cannot be predicted well, so a
# suite may be stopped part-way: its results.json keeps every model that finished (the bench
# rewrites it after each model), and the summary reads that.
#
# Without CUDA (or with GPU_CHECK_DEVICE=cpu) it runs a tiny CPU version of the same stages:
# calibrate on the CPU for 2 s, the small stage on tiny-mlp (inductor and remat; the tests run
# budgets elsewhere), the full stage on resnet50 at batch 1
# eager only (no compile), so that the script itself is exercised (tests/test_gpu_check.py).
# Exit status 1 when a stage failed (a timeout is not a failure), else 0.
set -u -o pipefail

OUT=${1:-gpu-check}
PYTHON=${PYTHON:-python}
TOTAL=${GPU_CHECK_SECONDS:-450}
RESERVE=20 # the summary, and up to 5 s per stage for `timeout --kill-after`
failed=0
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

DEVICE=${GPU_CHECK_DEVICE:-$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
"$PYTHON" -c 'import torch; print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}"
      + (f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))'

stage() { # stage NAME CAP COMMAND...: run COMMAND for at most CAP seconds and what is left of TOTAL
    local name=$1 cap=$2
    shift 2
    local left=$((TOTAL - SECONDS - RESERVE))
    local limit=$((cap < left ? cap : left))
    if ((limit < 15)); then
        echo "== $name: skipped, $left s left of $TOTAL"
        return 0
    fi
    echo
    echo "== $name (at most $limit s): $*"
    local began=$SECONDS
    timeout --kill-after=5 "$limit" "$@"
    local rc=$?
    case $rc in
    0) echo "== $name: done in $((SECONDS - began)) s" ;;
    124 | 137) echo "== $name: STOPPED at its $limit s limit; results.json keeps the models that finished" ;;
    *)
        echo "== $name: FAILED with exit status $rc"
        failed=1
        ;;
    esac
}

if [ "$DEVICE" = cuda ]; then
    echo "== gpu_check on CUDA, at most $TOTAL s in all, results in $OUT"
    stage "calibrate (cuda)" 45 "$PYTHON" -m rematpass calibrate --device cuda --seconds 6 --no-write
    stage "small suite (cuda)" 150 "$PYTHON" -m rematpass.bench --device cuda \
        --variants inductor remat remat@0.3 --steps 10 --out "$OUT/small"
    stage "full suite (cuda)" 600 "$PYTHON" -m rematpass.bench --device cuda --size full \
        --variants inductor inductor@0.3 remat remat@0.3 --steps 5 --out "$OUT/full"
else
    echo "== gpu_check: no CUDA, so the CPU fallback (a tiny version of each stage), results in $OUT"
    stage "calibrate (cpu)" 30 "$PYTHON" -m rematpass calibrate --device cpu --seconds 2 --no-write
    stage "small suite (cpu fallback: tiny-mlp)" 360 "$PYTHON" -m rematpass.bench --device cpu \
        --models tiny-mlp --variants inductor remat --steps 2 --threads 1 --no-warmup --out "$OUT/small"
    stage "full suite (cpu fallback: resnet50 at batch 1, eager only)" 120 "$PYTHON" -m rematpass.bench \
        --device cpu --size full --models resnet50 --batch 1 --variants eager --steps 2 --threads 1 \
        --no-warmup --out "$OUT/full"
fi

echo
echo "== summary: measured against predicted peak, step time against inductor, gradients"
"$PYTHON" -m rematpass.bench.summary "$OUT/small" "$OUT/full"
echo "== gpu_check finished in $SECONDS s; log: $OUT/gpu_check.log"
exit $failed
