#!/usr/bin/env bash
# The learning run of the README (issue 4): one embedded model, one SFT warm-start, then GRPO and SDAR from the
# same checkpoint side by side (one process each, one thread each: the two cores of our CPU machines), with a
# held-out evaluation (household small, eval_seen, 200 tasks, T 0.4, no skills) every 25 steps; then the SFT
# checkpoint and both final models on the same 500 held-out tasks, compared pairwise.
#   bash scripts/learning.sh [OUT_DIR] [STEPS]        # default runs/learning, 100 steps (~75 min on 2 free cores)
# Curves: sdar plot OUT_DIR/grpo OUT_DIR/sdar --out curves.png
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
    --save-every 25 --threads 1 --no-progress > "$out/$method.log" 2>&1 &
done
wait
for name in sft grpo/final sdar/final; do
  python -m sdar eval --model-dir "$out/$name" --env household --seeds 500 --max-turns 15 --temperature 0.4 \
    --threads 1 --out "$out/eval500_${name%%/*}.json" > /dev/null
done
python - "$out" <<'PY'
import json, math, sys
out = sys.argv[1]
won = {m: json.load(open(f"{out}/eval500_{m}.json"))["won_by_seed"] for m in ("sft", "grpo", "sdar")}
for method in ("grpo", "sdar"):
    rows = [json.loads(line) for line in open(f"{out}/{method}/metrics.jsonl")]
    curve = [(r["step"], round(r["eval_success"], 3)) for r in rows if "eval_success" in r]
    print(f"{method}: in-training eval (200 tasks) by step {curve}")
for a, b in (("sft", "grpo"), ("sft", "sdar"), ("grpo", "sdar")):
    d = [y - x for x, y in zip(won[a], won[b])]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1) / len(d))
    print(f"{b} - {a}: {sum(won[b]) / len(d):.3f} - {sum(won[a]) / len(d):.3f} = {mean:+.3f} +- {se:.3f} "
          f"(paired over {len(d)} tasks, z {mean / se if se else float('nan'):.2f})")
PY
