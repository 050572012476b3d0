#!/usr/bin/env bash
# One run on a lent GPU machine (image: torch 2.11 + triton 3.6, pytest present; no liger / cut-cross-entropy):
#   1. install the wheels carried in benchmarks/gpu/wheels/ (if any) into /tmp/site, no index, no deps;
#   2. the GPU tests: the kernel tests with CUDA available (pytest -m "not slow");
#   3. the GPU benchmark set (benchmarks/gpu/bench_gpu.py), one Markdown table at the end.
#
# Usage (from the repository root, e.g. through the device tool, carrying benchmarks/gpu/wheels):
#   bash benchmarks/gpu/run_gpu.sh                 # quick set: H 4096, N 8k + 8k
#   SET=full bash benchmarks/gpu/run_gpu.sh        # H 2048/4096/5120 x N 4k/8k/16k
# Environment: SET (quick|full), TEST_TIMEOUT / BENCH_TIMEOUT in seconds (default 240 / 300),
#   TESTS (pytest paths; default: the kernel test files that exist), RESULTS (default $OUT or
#   benchmarks/results/gpu), BENCH_ARGS (extra arguments for bench_gpu.py).
# Wheels: on a machine with PyPI access, in the repository root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d benchmarks/gpu/wheels \
#       liger-kernel==0.8.5 cut-cross-entropy==25.1.1
# (both pure Python; keep that folder out of git and name it in the device tool's `carry`).
set -uo pipefail
cd "$(dirname "$0")/../.."

RESULTS=${RESULTS:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET

if compgen -G "benchmarks/gpu/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    benchmarks/gpu/wheels/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"

if [ -z "${TESTS:-}" ]; then
  TESTS=$(ls tests/test_triton_launchers.py tests/test_*kernel*.py tests/test_*logprob*.py 2>/dev/null | sort -u | tr '\n' ' ')
fi
echo "== GPU tests: $TESTS"
# -o addopts= drops the CPU defaults of pytest.ini (its --timeout needs pytest-timeout, present here anyway).
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -o addopts= -p no:cacheprovider -m "not slow" -q $TESTS \
  2>&1 | tee "$RESULTS/gpu_tests.log" | tail -25
test_rc=${PIPESTATUS[0]}
echo "== GPU tests exit code: $test_rc"

echo "== GPU benchmark (set ${SET:-quick})"
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
timeout "$BENCH_TIMEOUT" python3 benchmarks/gpu/bench_gpu.py --set "${SET:-quick}" --out "$RESULTS" \
  --budget-s $(( BENCH_TIMEOUT > 120 ? BENCH_TIMEOUT - 60 : BENCH_TIMEOUT / 2 )) ${BENCH_ARGS:-} 2>&1 | tee "$RESULTS/gpu_bench.log" | grep -v '^{'
bench_rc=${PIPESTATUS[0]}
python3 benchmarks/gpu/floors.py --out "$RESULTS/floors.md" >/dev/null
echo "== done: tests rc=$test_rc, bench rc=$bench_rc; results in $RESULTS"
exit $(( test_rc != 0 || bench_rc != 0 ))
