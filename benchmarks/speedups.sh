#!/usr/bin/env bash
# Every speed-up number of docs/performance.md in one command (hours on a 2-core CPU;
# each step writes its JSON under benchmarks/results/, compare_methods resumes).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
run() { echo "== $*"; uv run --frozen python "$@"; }

run benchmarks/train_throughput.py --device cpu --arch resnet20 --skip-jst --dense-epochs 1 \
    --steps 10 --versus-fp32 3 --out benchmarks/results/train_throughput_cpu_auto.json
run benchmarks/step_cost.py
run benchmarks/search_cost.py
run benchmarks/latency_model.py
run benchmarks/int8.py
run benchmarks/int8.py --round-to 16 --out benchmarks/results/int8_round16.json
run benchmarks/latency.py
run benchmarks/compare_methods.py --precision bf16 --budget-metric latency \
    --variants scratch jst --budgets 0.8 0.5
