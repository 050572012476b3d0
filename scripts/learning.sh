#!/usr/bin/env bash
# The learning run of the README (issue 4): one embedded model, one SFT warm-start, then GRPO and SDAR from the
# same checkpoint side by side (one process each, one thread each: the two cores of our CPU machines), with a
# held-out evaluation (household small, eval_seen, 200 tasks, T 0.4, no skills) every 25 steps.
#   bash scripts/learning.sh [OUT_DIR] [STEPS]        # default runs/learning, 100 steps (~1.5-2 h on 2 cores)
# Then: sdar plot OUT_DIR/grpo; sdar plot OUT_DIR/sdar; the eval curve is in each run's metrics.jsonl.
source "$(dirname "$0")/_venv.sh"
out=${1:-runs/learning}
steps=${2:-100}
mkdir -p "$out"
python -m sdar init-model --out-dir "$out/init" --episodes 150 --max-turns 10
python -m sdar sft --model-dir "$out/init" --out-dir "$out/sft" --episodes 600 --epochs 4 --max-turns 10 \
  --eval-max-turns 10 --eval-seeds 200
for method in grpo sdar; do
  python -m sdar train --model-dir "$out/sft" --run-dir "$out/$method" --env household --method "$method" \
    --steps "$steps" --batch-tasks 8 --group-size 8 --max-turns 15 --lr 3e-4 --eval-every 25 --eval-seeds 200 \
    --save-every 25 --threads 1 --no-progress --resume > "$out/$method.log" 2>&1 &
done
wait
python - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
for method in ("grpo", "sdar"):
    rows = [json.loads(line) for line in open(f"{out}/{method}/metrics.jsonl")]
    curve = [(r["step"], round(r["eval_success"], 3)) for r in rows if "eval_success" in r]
    print(f"{method}: eval success by step {curve}")
EOF
