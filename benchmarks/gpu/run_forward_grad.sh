#!/usr/bin/env bash
# impl="forward_grad" on a lent GPU (about 7 minutes on an H200): the torch.compile'd epilogues in use.
#   1. the forward-gradient tests with CUDA available (the bf16 compiled-epilogue test runs; the rest is CPU);
#   2. bench_gpu.py: sdar_loss and grpo_sdar_loss, impl "triton" vs "forward_grad" (2 GiB and 1 GiB chunks) vs
#      the materialised loss, at H x N = 4096 x 8k and 5120 x 16k (V 151,936, bf16);
#   3. `sdar train --impl forward_grad` on CUDA: the shop seed study's SDAR setting for STEPS steps (HF engine).
#
# Usage (repository root, through the device tool; carry benchmarks/gpu/wheels (bm25s, rapidfuzz; see
# run_short.sh for the download) and experiments/results/shop/models/shop__s0/sft):
#   bash benchmarks/gpu/run_forward_grad.sh
# Environment: STEPS (5), TEST_TIMEOUT (100), BENCH_TIMEOUT (220), TRAIN_TIMEOUT (110), SHAPES.
set -uo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${OUT:-benchmarks/results/gpu_forward_grad}
mkdir -p "$RESULTS"
source benchmarks/gpu/_env.sh

echo "== tests"
SDAR_TEST_DEVICE=cuda timeout "${TEST_TIMEOUT:-100}" python3 -m pytest -o addopts= -p no:cacheprovider -q -rfE \
  tests/test_kernels_forward_grad.py tests/test_kernels_grpo.py 2>&1 | tee "$RESULTS/tests.log" | tail -6
test_rc=${PIPESTATUS[0]}

echo "== bench"
PROVIDERS=materialised,sk-triton,sk-forward_grad,sk-forward_grad-1g,grpo-triton,grpo-forward_grad
timeout "${BENCH_TIMEOUT:-220}" python3 benchmarks/gpu/bench_gpu.py --shapes "${SHAPES:-4096x8192,5120x16384}" \
  --providers "$PROVIDERS" --out "$RESULTS" --budget-s $(( ${BENCH_TIMEOUT:-220} - 50 )) 2>&1 \
  | tee "$RESULTS/bench.log" | grep -v '^{'
bench_rc=${PIPESTATUS[0]}

echo "== sdar train --impl forward_grad (shop, ${STEPS:-5} steps)"
run_dir=/tmp/gpu_train/forward_grad
timeout "${TRAIN_TIMEOUT:-110}" python3 -m sdar train \
  --config experiments/results/shop/runs/shop__sdar__s0/config.json \
  --model-dir experiments/results/shop/models/shop__s0/sft --run-dir "$run_dir" --no-resume --device cuda \
  --engine hf --impl forward_grad --threads 0 --steps "${STEPS:-5}" --eval-every 0 --eval-seeds 50 --save-every 0 \
  > "$RESULTS/train.log" 2>&1
train_rc=$?
tail -3 "$RESULTS/train.log"
cp "$run_dir/metrics.jsonl" "$RESULTS/train_metrics.jsonl" 2>/dev/null
echo "== done: tests rc=$test_rc, bench rc=$bench_rc, train rc=$train_rc"
exit $(( test_rc != 0 || bench_rc != 0 || train_rc != 0 ))
