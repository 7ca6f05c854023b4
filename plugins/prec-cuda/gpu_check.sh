#!/usr/bin/env bash
# On a machine with a CUDA GPU: run prec-cuda's tests marked `cuda`, then benchmark 32-true, 16-mixed, bf16-mixed
# and bf16-true through prec.Trainer against a raw torch loop (steps/s and peak memory). Without a GPU both parts
# skip cleanly and the script exits 0. Also checks that 32-true computes in float32 and tf32=True in TF32.
#
#   plugins/prec-cuda/gpu_check.sh [benchmark options]     e.g. --steps 100 --batch 4096
#
# PYTHON selects the interpreter (default: python); prec-core, prec-cpu and prec-cuda must be installed in it.
# Benchmark results go to $OUT/bench_cuda.json when OUT is set, else next to the benchmark.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
cd "$ROOT"

if ! "$PYTHON" -c "import prec, prec_cuda" 2>/dev/null; then
    echo "prec-cuda is not importable with $PYTHON. Install the workspace packages first:" >&2
    echo "  $PYTHON -m pip install -e packages/prec-core -e plugins/prec-cpu -e plugins/prec-cuda" >&2
    exit 2
fi

echo "== environment"
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| CUDA build:', torch.version.cuda)"
"$PYTHON" -m prec.cli.app list

echo
echo "== tests marked cuda"
"$PYTHON" -m pytest -m cuda plugins/prec-cuda/tests -q -rs -p no:cacheprovider

echo
echo "== 32-true is float32, TF32 an opt-in (large matmul and convolution)"
"$PYTHON" plugins/prec-cuda/benchmarks/tf32_check.py

echo
echo "== benchmark"
OUTPUT_ARGS=()
if [[ -n "${OUT:-}" ]]; then
    OUTPUT_ARGS=(--output "$OUT/bench_cuda.json")
fi
"$PYTHON" plugins/prec-cuda/benchmarks/bench_cuda.py ${OUTPUT_ARGS[@]+"${OUTPUT_ARGS[@]}"} "$@"
