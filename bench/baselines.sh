#!/usr/bin/env bash
# The baselines and initialisations of issue 35 side by side with LoRA, ResLoRA and RefLoRA on the demo's task (its
# trained base, 600 multiplication word problems / 100 held out, rank 8, alpha 16, all linear modules, 200 steps,
# batch 16, warm-up 20: the demo's settings), each at the shared default learning rate (3e-3) and at a tuned one
# (the value its authors recommend relative to LoRA's), several seeds. Reported per configuration: held-out loss and
# greedy exact-match accuracy (100 questions), mean ± spread over the seeds, and trainable parameters.
# Usage: bench/baselines.sh [--seeds "7 8"] [--only "NAME ..."] [--threads N] [--out DIR]
# Accuracy and loss do not depend on the machine's load; the seconds do (run it alone to compare time).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="7 8"; OUT=reslora-bench/baselines; THREADS="--threads 1"; ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --threads) THREADS="--threads $2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    *) echo "bench/baselines.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "${RESLORA_NO_BUILD:-}" ] || dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
mkdir -p "$OUT"
"$R" demo --task lm --methods lora --steps 1 --out "$OUT/demo" > "$OUT/demo.log" 2>&1
BASE=$(grep -o 'Cached at `[^`]*`' "$OUT/demo/report.md" | sed 's/Cached at `\(.*\)`/\1/')
[ -f "$BASE/config.json" ] || { echo "bench/baselines.sh: no demo base found (see $OUT/demo.log)" >&2; exit 1; }
TRAIN="$OUT/demo/data/train.jsonl"; EVAL="$OUT/demo/data/eval.jsonl"
ADAPTER="--alpha 16 --targets all-linear"
COMMON="--warmup-steps 20 --seq-len 128 --steps 200 --batch-size 16 --eval-generate 100 --max-new-tokens 4 --save-every 0"
# name|flags (the learning rate included)
CONFIGS=(
  "lora|--method lora --lr 3e-3"
  "lora@1e-3|--method lora --lr 1e-3"
  "pissa|--method lora --init pissa --lr 3e-3"
  "pissa@1e-3|--method lora --init pissa --lr 1e-3"
  "olora|--method lora --init olora --lr 3e-3"
  "olora@1e-3|--method lora --init olora --lr 1e-3"
  "lora+ 16|--method lora --loraplus-lr-ratio 16 --lr 3e-3"
  "lora+ 16@3e-4|--method lora --loraplus-lr-ratio 16 --lr 3e-4"
  "preclora|--method lora --precondition riemannian --lr 3e-3"
  "preclora@1e-3|--method lora --precondition riemannian --lr 1e-3"
  "reflora|--method reflora --lr 3e-3"
  "reslora-is|--method reslora --structure is --lr 3e-3"
  "vera r256|--method vera --rank 256 --lr 3e-3"
  "vera r256@3e-2|--method vera --rank 256 --lr 3e-2"
)
if "$R" train --help 2>/dev/null | grep -q -- "full a Hugging Face model folder"; then
  CONFIGS+=("full@1e-3|--method full --lr 1e-3" "full@3e-4|--method full --lr 3e-4" "full@1e-4|--method full --lr 1e-4" "full@3e-5|--method full --lr 3e-5")
fi
mkdir -p "$OUT/runs"; : > "$OUT/rows.jsonl"
for cfg in "${CONFIGS[@]}"; do
  name=${cfg%%|*}; flags=${cfg#*|}
  if [ -n "$ONLY" ] && ! printf '%s\n' $ONLY | grep -qx -- "${name%% *}"; then continue; fi
  for seed in $SEEDS; do
    dir="$OUT/runs/$(echo "$name" | tr ' @+' '_at')-$seed"
    rm -rf "$dir"
    # Adapter methods share alpha and targets, and rank 8 unless the configuration sets its own; full fine-tuning has none.
    a="$ADAPTER"; case "$flags" in *"--method full"*) a="" ;; *--rank*) ;; *) a="$a --rank 8" ;; esac
    if ! "$R" train --model "$BASE" --data "$TRAIN" --eval-data "$EVAL" --out "$dir" --seed "$seed" $THREADS $COMMON $a $flags > "$dir.log" 2>&1; then
      echo "bench/baselines.sh: $name seed $seed failed (see $dir.log)" >&2; tail -3 "$dir.log" >&2; continue
    fi
    python3 - "$name" "$seed" "$dir" >> "$OUT/rows.jsonl" <<'PY'
import json, sys
name, seed, d = sys.argv[1:]
s = json.load(open(d + "/train_summary.json"))
print(json.dumps({"name": name, "seed": int(seed), "eval_loss": s.get("final_eval_loss"), "accuracy": s.get("final_eval_accuracy"),
                  "trainable": s.get("trainable_parameters"), "seconds": s.get("wall_seconds")}))
PY
    echo "$name seed $seed done" >&2
  done
done
python3 - "$OUT/rows.jsonl" > "$OUT/table.md" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
names = list(dict.fromkeys(r["name"] for r in rows))
print("| configuration | trainable params | held-out loss | exact-match accuracy | seeds | train s |")
print("|---|---|---|---|---|---|")
def ms(xs, pct=False):
    xs = [x for x in xs if x is not None]
    if not xs: return "-"
    m = st.mean(xs); s = (max(xs) - min(xs)) / 2
    return f"{100*m:.1f} % ± {100*s:.1f}" if pct else f"{m:.3f} ± {s:.3f}"
for n in names:
    g = [r for r in rows if r["name"] == n]
    print(f"| {n} | {g[0]['trainable']:,} | {ms([r['eval_loss'] for r in g])} | {ms([r['accuracy'] for r in g], True)} | {len(g)} | {st.mean(r['seconds'] for r in g):.0f} |")
PY
cat "$OUT/table.md"
