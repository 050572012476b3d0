#!/usr/bin/env bash
# A short lease (about 5 minutes on an H200): two checks that run_gpu.sh does not make.
#   1. the forward-gradient prototype with a torch.compile'd row epilogue beside the eager one, ours (sk-triton)
#      and the materialised loss (and Liger's JSD when its wheel is carried), two shapes, one process;
#   2. `sdar train` on CUDA: the shop seed study's setting (experiments/shop_seeds.json, seed 0's warm start)
#      for STEPS steps of GRPO and of SDAR, HF engine (vLLM is not in the GPU image), Triton loss, bf16.
#
# Usage (repository root, through the device tool; carry benchmarks/gpu/wheels (bm25s and rapidfuzz for the shop,
# liger-kernel optional; none is in the GPU image) and the shop warm start
# experiments/results/shop/models/shop__s0/sft (gitignored; `sdar experiment experiments/shop_seeds.json` makes it)):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       -d benchmarks/gpu/wheels bm25s==0.3.16 rapidfuzz==3.14.6 liger-kernel==0.8.5
#   bash benchmarks/gpu/run_short.sh
# Environment: STEPS (6), BENCH_TIMEOUT (200), TRAIN_TIMEOUT (150 per run), SHAPES (4096x8192,5120x16384).
set -uo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${OUT:-benchmarks/results/gpu_short}
mkdir -p "$RESULTS"
source benchmarks/gpu/_env.sh

echo "== forward-gradient prototype, compiled epilogue"
PROVIDERS=materialised,sk-triton,proto-fwdgrad-4096,proto-fwdgrad-4096-compiled
python3 -c "import liger_kernel" 2>/dev/null && PROVIDERS=$PROVIDERS,liger-jsd
timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/gpu/bench_gpu.py --shapes "${SHAPES:-4096x8192,5120x16384}" \
  --providers "$PROVIDERS" --out "$RESULTS" --budget-s $(( ${BENCH_TIMEOUT:-200} - 40 )) 2>&1 \
  | tee "$RESULTS/bench.log" | grep -v '^{'
bench_rc=${PIPESTATUS[0]}

echo "== sdar train on CUDA (shop, ${STEPS:-6} steps)"
WARM=experiments/results/shop/models/shop__s0/sft
train_rc=0
for method in grpo sdar; do
  run_dir=/tmp/gpu_train/$method
  timeout "${TRAIN_TIMEOUT:-150}" python3 -m sdar train \
    --config "experiments/results/shop/runs/shop__${method}__s0/config.json" --model-dir "$WARM" --run-dir "$run_dir" \
    --no-resume --device cuda --engine hf --impl triton --threads 0 \
    --steps "${STEPS:-6}" --eval-every 0 --eval-seeds 200 --save-every 0 > "$RESULTS/train_$method.log" 2>&1
  rc=$?
  echo "$method: exit $rc"; tail -3 "$RESULTS/train_$method.log"
  cp "$run_dir/metrics.jsonl" "$RESULTS/train_${method}_metrics.jsonl" 2>/dev/null
  train_rc=$(( train_rc || rc ))
done
echo "== done: bench rc=$bench_rc, train rc=$train_rc"
exit $(( bench_rc != 0 || train_rc != 0 ))
