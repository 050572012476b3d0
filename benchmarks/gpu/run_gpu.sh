#!/usr/bin/env bash
# One run on a lent GPU machine (image: torch 2.11 + triton 3.6, pytest present; no liger / cut-cross-entropy):
#   1. install the wheels carried in benchmarks/gpu/wheels/ (if any) into /tmp/site, no index, no deps;
#   2. the GPU tests: the kernel tests with CUDA available (pytest -m "not slow");
#   3. the GPU benchmark set (benchmarks/gpu/bench_gpu.py), one Markdown table;
#   4. a launch-configuration sweep of the two launchers (tune_gpu.py);
#   5. a whole training step of Qwen3-architecture models, fused vs materialised loss (train_step_gpu.py).
#
# Usage (from the repository root, e.g. through the device tool, carrying benchmarks/gpu/wheels):
#   bash benchmarks/gpu/run_gpu.sh                 # full set (H 2048/4096/5120 x N 4k/8k/16k) within the budget
#   SET=quick bash benchmarks/gpu/run_gpu.sh       # H 4096, N 8k + 8k only
# Environment: SET (quick|full), TEST_TIMEOUT / BENCH_TIMEOUT / TRAIN_TIMEOUT in seconds / TUNE_TIMEOUT (150 / 200 / 120 / 60),
#   TRAIN_MODELS (default 1.7b,8b-lora), TEST_WORKERS (pytest-xdist workers, default 6),
#   TESTS (pytest paths; default: the kernel test files that exist), RESULTS (default $OUT or
#   benchmarks/results/gpu), BENCH_ARGS (extra arguments for bench_gpu.py).
# Wheels: on a machine with PyPI access, in the repository root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d benchmarks/gpu/wheels \
#       liger-kernel==0.8.5 cut-cross-entropy==25.1.1
# (both pure Python; keep that folder out of git and name it in the device tool's `carry`).
set -uo pipefail
cd "$(dirname "$0")/../.."

# Under the device tool ($OUT set) results go to a scratch folder and come back as one archive plus the tables
# (the tool returns at most 8 files).
RESULTS=${RESULTS:-${OUT:+/tmp/sdar_gpu_results}}
RESULTS=${RESULTS:-benchmarks/results/gpu}
mkdir -p "$RESULTS"
pack() {
  [ -n "${OUT:-}" ] || return 0
  tar czf "$OUT/gpu_results.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
  cp "$RESULTS"/*.md "$RESULTS/gpu_tests.log" "$OUT/" 2>/dev/null
}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}  # tests/conftest.py: a GPU run never falls back to the interpreter
source benchmarks/gpu/_env.sh

if [ -z "${TESTS:-}" ]; then
  TESTS="tests/test_triton_launchers.py tests/test_divergence.py $(ls tests/test_kernels_*.py | tr '\n' ' ')"
fi
echo "== GPU tests (SDAR_TEST_DEVICE=cuda: every Triton launch of the kernel suite runs on the GPU): $TESTS"
XDIST=""
python3 -c "import xdist" 2>/dev/null && XDIST="-n ${TEST_WORKERS:-6}"
# -o addopts= drops the CPU defaults of pytest.ini.
SDAR_TEST_DEVICE=cuda timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -o addopts= -p no:cacheprovider -m "not slow" \
  -q $XDIST --timeout 120 -rfE $TESTS 2>&1 | tee "$RESULTS/gpu_tests.log" | tail -25
test_rc=${PIPESTATUS[0]}
echo "== GPU tests exit code: $test_rc"

echo "== GPU benchmark (set ${SET:-full})"
BENCH_TIMEOUT=${BENCH_TIMEOUT:-200}
timeout "$BENCH_TIMEOUT" python3 benchmarks/gpu/bench_gpu.py --set "${SET:-full}" --out "$RESULTS" \
  --budget-s $(( BENCH_TIMEOUT > 120 ? BENCH_TIMEOUT - 50 : BENCH_TIMEOUT / 2 )) ${BENCH_ARGS:-} 2>&1 | tee "$RESULTS/gpu_bench.log" | grep -v '^{'
bench_rc=${PIPESTATUS[0]}

echo "== launch-configuration sweep (H 4096, N 8k)"
timeout "${TUNE_TIMEOUT:-60}" python3 benchmarks/gpu/tune_gpu.py --out "$RESULTS" --budget-s $(( ${TUNE_TIMEOUT:-60} - 15 )) \
  2>&1 | tee "$RESULTS/tune.log" | grep -v '^{'
tune_rc=${PIPESTATUS[0]}

echo "== training step (${TRAIN_MODELS:-1.7b,8b-lora})"
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-120}
timeout "$TRAIN_TIMEOUT" python3 benchmarks/gpu/train_step_gpu.py --models "${TRAIN_MODELS:-1.7b,8b-lora}" --out "$RESULTS" \
  --budget-s $(( TRAIN_TIMEOUT - 40 )) 2>&1 | tee "$RESULTS/train_step.log" | grep -v '^{'
train_rc=${PIPESTATUS[0]}
python3 benchmarks/gpu/floors.py --out "$RESULTS/floors.md" >/dev/null
echo "== done: tests rc=$test_rc, bench rc=$bench_rc, tune rc=$tune_rc, train rc=$train_rc; results in $RESULTS"
pack
exit $(( test_rc != 0 || bench_rc != 0 || tune_rc != 0 || train_rc != 0 ))
