#!/usr/bin/env bash
# One short pass on a lent GPU machine (about 4 minutes): the GPU tests, the estimators' speed
# rows on CUDA, and the neural staircase on CUDA.  Run from the repository root; results go to
# $OUT (the device tool's output folder) or benchmarks/gpu-out.  The machine's own python3
# holds torch; the package is used from the checkout through PYTHONPATH.
set -u
OUT=${OUT:-benchmarks/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/gpu.txt"
GPU_TESTS=$(grep -l "mark.gpu" tests/test_*.py)
timeout "${TEST_LIMIT:-60}" python3 -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS 2>&1 \
  | tail -n 25 | tee "$OUT/gpu_tests.txt"
timeout "${ROWS_LIMIT:-40}" python3 benchmarks/gpu_rows.py --device cuda 2>&1 | tee "$OUT/gpu_rows.md"
timeout "${NEURAL_LIMIT:-45}" python3 benchmarks/neural.py --device cuda --no-mist \
  --levels 2 6 --steps 2000 --methods mine smile 2>&1 | tee "$OUT/neural_gpu.md"
