#!/usr/bin/env bash
# One short pass on a lent GPU machine (at most about 7 minutes with the limits below): the GPU
# tests, the estimators' speed rows on CUDA, the neural staircase on CUDA, and the new paths of
# issue 22 (per-class I(T;Y), the auto policy, the mixture estimator against KDE, the KSG
# backend rows) on CUDA, then Dask serial against 2 workers when dask is installed.  Run from
# the repository root; results go to $OUT (the device tool's output folder) or
# benchmarks/gpu-out, to be copied into benchmarks/GPU.md with the date.  The machine's own
# python3 holds torch; the package is used from the checkout through PYTHONPATH.
set -u
OUT=${OUT:-benchmarks/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
{ date -u '+run %Y-%m-%d %H:%M UTC'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/gpu.txt"
GPU_TESTS=$(grep -l "mark.gpu" tests/test_*.py)
timeout "${TEST_LIMIT:-60}" python3 -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS 2>&1 \
  | tail -n 25 | tee "$OUT/gpu_tests.txt"
timeout "${ROWS_LIMIT:-40}" python3 benchmarks/gpu_rows.py --device cuda 2>&1 | tee "$OUT/gpu_rows.md"
timeout "${NEURAL_LIMIT:-45}" python3 benchmarks/neural.py --device cuda --no-mist \
  --levels 2 6 --steps 2000 --methods mine smile 2>&1 | tee "$OUT/neural_gpu.md"
timeout "${NEW_LIMIT:-150}" python3 -m benchmarks.new_paths --device cuda --rounds 2 \
  --only per_class,auto,mixture 2>&1 | tee "$OUT/new_paths_gpu.md"
if python3 -c "import dask.distributed" 2>/dev/null; then
  timeout "${DASK_LIMIT:-90}" python3 -m benchmarks.new_paths --only dask 2>&1 \
    | tee "$OUT/dask.md"
else
  echo "dask not installed on this machine: Dask rows skipped" | tee "$OUT/dask.md"
fi
