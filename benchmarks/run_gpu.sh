#!/usr/bin/env bash
# Everything a GPU session should check, in one script (about 8 minutes on one H100 / H200):
#   1. the test suite on the GPU (tests take the --device option; pytest -x, 5-minute cap)
#   2. L-MAC (benchmarks/bench_lmac.py: ours and the published step re-implemented, training and
#      evaluation) and AMT (benchmarks/bench_amt.py: FocalNet-B, ViT-B, ours and the published
#      step re-implemented with transformers, default --impls ours,published) at the paper
#      configuration, fp32 and bf16, batch 2 and 16
#   3. one table: seconds per batch, clips/s, peak CUDA memory, model FLOPs per clip
#      (torch.utils.flop_counter) and the fraction of the GPU's dense bf16 peak reached
# Installs nothing beyond requirements-dev.txt (run it in the project's virtual environment).
#
# Usage: bash benchmarks/run_gpu.sh [OUTPUT_FOLDER]   (default results/gpu)
#   PEAK_TFLOPS=989 (dense bf16 TFLOP/s of the GPU; default: guessed from its name, H100 /
#   H200 989, A100 312, L40S 362; fp32 rows are compared with the same bf16 peak)
#   SKIP_TESTS=1 to run the benchmarks only.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu}
mkdir -p "$OUT"

python - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("run_gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False); "
             "on a CPU use the benchmarks' default --device cpu")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
EOF

if [ -z "${PEAK_TFLOPS:-}" ]; then
    PEAK_TFLOPS=$(python -c "
import torch
name = torch.cuda.get_device_name(0)
peaks = {'H100': 989, 'H200': 989, 'GH200': 989, 'A100': 312, 'L40S': 362, 'L4': 121}
print(next((v for k, v in peaks.items() if k in name), 0))")
fi
echo "dense bf16 peak used: ${PEAK_TFLOPS} TFLOP/s (0: unknown, set PEAK_TFLOPS)"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
    echo "== tests on cuda"
    timeout 300 python -m pytest -q -x --device cuda 2>&1 | tail -n 15 | tee "$OUT/tests.txt" \
        || echo "tests: failed or over 5 minutes (see $OUT/tests.txt)"
fi

for precision in fp32 bf16; do
    for batch in 2 16; do
        echo "== L-MAC $precision batch $batch"
        python benchmarks/bench_lmac.py "$OUT/lmac_${precision}_b${batch}.json" --device cuda \
            --precision "$precision" --batch_size "$batch" --iters 5 --warmup 2 \
            --peak_tflops "$PEAK_TFLOPS" || echo "L-MAC $precision batch $batch failed"
        echo "== AMT $precision batch $batch"
        python benchmarks/bench_amt.py "$OUT/amt_${precision}_b${batch}.json" --device cuda \
            --precision "$precision" --batch_size "$batch" --iters 5 --warmup 2 \
            --peak_tflops "$PEAK_TFLOPS" || echo "AMT $precision batch $batch failed"
    done
done

python benchmarks/perf_table.py "$OUT" | tee "$OUT/table.md"
