#!/usr/bin/env bash
# Every GPU check in one run, since a lent GPU's time is short: tests/test_cuda.py, then bench/throughput.py's gpu
# section. Usage: bash bench/gpu_checks.sh OUTDIR (logs and throughput-gpu.json land there).
set -uo pipefail
out=${1:?usage: bash bench/gpu_checks.sh OUTDIR}
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
"$python" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)" | tee -a "$out/gpu.txt"
timeout "${TEST_SECONDS:-300}" "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
timeout "${BENCH_SECONDS:-480}" "$python" bench/throughput.py --only gpu --out "$out/throughput-gpu.json" 2>&1 |
    tee "$out/throughput-gpu.log" | tail -40
