#!/usr/bin/env bash
# Everything a GPU session should check, in one script that stops itself within a time budget
# (BUDGET_S, default 540 s: the project's device tool ends a command at 600 s):
#   1. L-MAC (benchmarks/bench_lmac.py: ours and the published step re-implemented, training and
#      evaluation) at the paper configuration, bf16 then fp32, batch 16 then 2
#   2. AMT (benchmarks/bench_amt.py: FocalNet-B, ViT-B, ours and the published step
#      re-implemented with transformers), the same four settings
#   3. the tests that take --device (tests/conftest.py --device_tests_only), on the GPU, in
#      the time left
#   4. one table (benchmarks/perf_table.py, also OUT/table.md): seconds per batch, clips/s,
#      peak CUDA memory, model FLOPs per clip (torch.utils.flop_counter) and the fraction of
#      the GPU's dense bf16 peak reached
# The figures the performance targets need come first. A step that would start with less time
# left than it usually takes is skipped and named in OUT/skipped.txt; a step that fails, or
# that the budget cuts, is named in OUT/failed.txt; the table is written from whatever ran.
# Installs nothing beyond requirements-dev.txt (run it in the project's virtual environment).
#
# Usage: bash benchmarks/run_gpu.sh [OUTPUT_FOLDER]   (default results/gpu)
#   With the device tool, write under its $OUT (only that folder comes back):
#     bash benchmarks/run_gpu.sh "$OUT"
#   BUDGET_S=540       seconds for the whole script
#   PEAK_TFLOPS=989    dense bf16 TFLOP/s of the GPU (default: from its name, H100 / H200 989,
#                      A100 312, L40S 362; fp32 rows are compared with the same bf16 peak)
#   SKIP_TESTS=1       the benchmarks only
#   DEVICE=cpu CONFIG=tiny   a dry run of this script's flow on a CPU with small models, ours
#                      only, batch 2, one timed batch (tests/test_run_gpu.py runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-paper}
BUDGET_S=${BUDGET_S:-540}
START=$(date +%s)
rm -f "$OUT/skipped.txt" "$OUT/failed.txt"

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME SECONDS CMD...: run CMD unless fewer than SECONDS (its usual time) are left; the
# command is cut when the budget runs out
step() {
    local name=$1 need=$2 remaining
    shift 2
    remaining=$(left)
    if [ "$remaining" -lt "$need" ]; then
        echo "== $name: skipped, ${remaining} s of BUDGET_S=${BUDGET_S} left (it takes about ${need} s)" \
            | tee -a "$OUT/skipped.txt"
        return 0
    fi
    echo "== $name"
    timeout "$remaining" "$@" || echo "$name: failed or cut at the budget (exit $?)" | tee -a "$OUT/failed.txt"
}

case "$CONFIG" in
    paper)
        BATCHES="16 2"
        ITERS=(--iters 5 --warmup 2)
        LMAC_CONFIG=()
        AMT_CONFIG=()
        ;;
    tiny)
        BATCHES="2"
        ITERS=(--iters 1 --warmup 0)
        LMAC_CONFIG=(--config tiny --impls ours --seconds 1 --flops 0)
        AMT_CONFIG=(--config tiny --impls ours --flops 0)
        ;;
    *)
        echo "CONFIG must be paper or tiny, got $CONFIG" >&2
        exit 2
        ;;
esac

if [[ "$DEVICE" == cuda* ]]; then
    python - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("run_gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False); on a CPU use "
             "benchmarks/run_cpu.sh, or DEVICE=cpu CONFIG=tiny for a dry run of this script")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
EOF
    if [ -z "${PEAK_TFLOPS:-}" ]; then
        PEAK_TFLOPS=$(python -c "
import torch
name = torch.cuda.get_device_name(0)
peaks = {'H100': 989, 'H200': 989, 'GH200': 989, 'A100': 312, 'L40S': 362, 'L4': 121}
print(next((v for k, v in peaks.items() if k in name), 0))")
    fi
else
    PEAK_TFLOPS=${PEAK_TFLOPS:-0}
fi
echo "device $DEVICE, config $CONFIG, budget ${BUDGET_S} s, dense bf16 peak used: ${PEAK_TFLOPS} TFLOP/s (0: not reported)"

# rows NAME FILE_PREFIX SCRIPT SECONDS EXTRA_ARGS...: one benchmark in every precision and batch
rows() {
    local name=$1 prefix=$2 script=$3 need=$4 precision batch
    shift 4
    for precision in bf16 fp32; do
        for batch in $BATCHES; do
            step "$name $precision batch $batch" "$need" \
                python "benchmarks/$script" "$OUT/${prefix}_${precision}_b${batch}.json" \
                --device "$DEVICE" --precision "$precision" --batch_size "$batch" "${ITERS[@]}" \
                --peak_tflops "$PEAK_TFLOPS" "$@"
        done
    done
}
rows L-MAC lmac bench_lmac.py 60 "${LMAC_CONFIG[@]}"
rows AMT amt bench_amt.py 30 "${AMT_CONFIG[@]}"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
    step "tests on $DEVICE (those that take --device; summary in $OUT/tests.txt)" 30 \
        bash -c 'python -m pytest -q -p no:cacheprovider --device "$1" --device_tests_only \
            > "$2/tests_full.txt" 2>&1; rc=$?; tail -n 30 "$2/tests_full.txt" > "$2/tests.txt"; \
            cat "$2/tests.txt"; exit $rc' _ "$DEVICE" "$OUT"
fi

python benchmarks/perf_table.py "$OUT" | tee "$OUT/table.md"
echo "run_gpu.sh: $(($(date +%s) - START)) s of BUDGET_S=${BUDGET_S}"
