#!/usr/bin/env bash
# On an fp8-capable GPU (compute capability 8.9+: L4/L40, H100/H200, Blackwell): run prec-torchao's tests marked
# `cuda`, then benchmark steps/s and peak memory of fp8-mixed and fp8-bf16-true against bf16-mixed and 32-true
# through prec, next to torchao used by hand (convert_to_float8_training + torch.autocast), on stacks of
# Linear 4096x4096 layers, eager and compiled. Without such a GPU every part skips and the script exits 0.
#
#   plugins/prec-torchao/gpu_check.sh [benchmark options]     e.g. --layers 8 --steps 30
#
# PYTHON selects the interpreter (default: python); prec-core, prec-cuda and prec-torchao (with torchao) must be
# installed in it. Results go to $OUT/bench_fp8_gpu.json when OUT is set, else next to the benchmark.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
cd "$ROOT"

if ! "$PYTHON" -c "import prec, prec_cuda, prec_torchao" 2>/dev/null; then
    echo "prec-torchao is not importable with $PYTHON. Install the workspace packages first:" >&2
    echo "  $PYTHON -m pip install -e packages/prec-core -e plugins/prec-cuda -e plugins/prec-torchao" >&2
    exit 2
fi

echo "== environment"
"$PYTHON" -c "import torch, prec_torchao; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| torchao', prec_torchao.torchao_version())"
"$PYTHON" -c "import torch; print(torch.cuda.get_device_name(), torch.cuda.get_device_capability()) if torch.cuda.is_available() else print('no CUDA GPU: the tests skip, the benchmark skips')"

echo
echo "== tests marked cuda"
"$PYTHON" -m pytest -m cuda plugins/prec-torchao/tests -q -rs -p no:cacheprovider

echo
echo "== benchmark"
OUTPUT_ARGS=()
if [[ -n "${OUT:-}" ]]; then
    OUTPUT_ARGS=(--output "$OUT/bench_fp8_gpu.json")
fi
"$PYTHON" plugins/prec-torchao/benchmarks/bench_fp8_gpu.py ${OUTPUT_ARGS[@]+"${OUTPUT_ARGS[@]}"} "$@"
